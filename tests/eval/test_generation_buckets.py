"""Bucketed prompt widths in evaluation generation: the same answers as
padding every prompt to prompt_len, in the prompts' order."""

import numpy as np
import pytest

from lifejax.eval import generation
from lifejax.model import sampling


def test_bucketed_widths_give_the_same_answers_in_order(random_lm):
  graphdef, params = random_lm
  calls = []
  cfg = sampling.SamplingConfig(max_new_tokens=6, stop_ids=(47,), pad_id=0,
                                vocab_limit=48)
  gen = generation.make_generate(graphdef, params, cfg)

  def counted(ids, mask):
    calls.append(ids.shape)
    return gen(ids, mask)

  rng = np.random.default_rng(1)
  # Lengths from 3 to 150, one longer than prompt_len (keeps its tail).
  rows = [list(rng.integers(1, 47, size=k)) for k in
          (3, 150, 20, 70, 5, 64, 65, 128, 9, 200)]
  want = generation.generate_ids(counted, rows, 160, 4, 0, bucket=0)
  assert set(calls) == {(4, 160)}
  calls.clear()
  got = generation.generate_ids(counted, rows, 160, 4, 0)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  # Shortest first: (3, 5, 9, 20) -> 64, (64, 65, 70, 128) -> 128,
  # (150, 200 -> 160) -> 160.
  assert calls == [(4, 64), (4, 128), (4, 160)]
  with pytest.raises(ValueError, match="at least one prompt"):
    generation.generate_ids(counted, [], 160, 4, 0)
