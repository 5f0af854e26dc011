"""Bucketed prompt widths in evaluation generation: the same answers as
padding every prompt to prompt_len, in the prompts' order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.eval import generation
from lifejax.model import sampling, transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=48, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)


def _model():
  graphdef, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  rng = np.random.default_rng(0)

  def fill(path, x):
    if str(path[-1].key) == "scale":
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      fill, nnx.to_pure_dict(abstract))


def test_bucketed_widths_give_the_same_answers_in_order():
  graphdef, params = _model()
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
