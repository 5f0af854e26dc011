"""Generation data parallel over local devices (GenerationSpec.devices,
RolloutConfig.sampling_devices): the same tokens as one device, computed
on every device (the tests see 8 simulated CPU devices)."""

import jax
import numpy as np
import pytest

from lifejax.eval import generation, instruct
from lifejax.model import sampling
from lifejax.rl import rollout as rollout_lib


def _prompts(n: int, width: int = 12, seed: int = 1):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 47, size=(n, width)).astype(np.int32)
  mask = np.ones_like(ids)
  for r in range(n):  # left padding of varied length
    k = int(rng.integers(0, width - 3))
    ids[r, :k], mask[r, :k] = 0, 0
  return ids, mask


@pytest.mark.parametrize("rows", [8, 5])  # 5: padded to 8 rows, cut back
def test_greedy_tokens_equal_one_device_and_run_on_all(random_lm, rows):
  assert len(jax.local_devices()) == 8
  graphdef, params = random_lm
  cfg = sampling.SamplingConfig(max_new_tokens=6, stop_ids=(47,), pad_id=0,
                                vocab_limit=48)
  ids, mask = _prompts(rows)
  want_t, want_n = generation.make_generate(graphdef, params, cfg)(ids, mask)
  assert len(want_t.sharding.device_set) == 1
  gen = generation.make_generate(graphdef, params, cfg, devices=-1)
  got_t, got_n = gen(ids, mask)
  assert got_t.shape == want_t.shape == (rows, 6)
  np.testing.assert_array_equal(np.asarray(got_t), np.asarray(want_t))
  np.testing.assert_array_equal(np.asarray(got_n), np.asarray(want_n))
  if rows == 8:  # unpadded: the outputs stay where they were computed
    assert len(got_t.sharding.device_set) == 8
  # A subset of the devices (3: 5 rows padded to 6).
  got3 = generation.make_generate(graphdef, params, cfg, devices=3)(ids,
                                                                    mask)
  np.testing.assert_array_equal(np.asarray(got3[0]), np.asarray(want_t))


def test_sampled_tokens_and_logprobs_equal_one_device(random_lm):
  """Temperature-1 draws with the sampler's log-probs (what an RL rollout
  records): the rows' draws do not depend on how the batch is split (the
  key draws the whole batch's noise)."""
  graphdef, params = random_lm
  cfg = sampling.SamplingConfig(max_new_tokens=5, temperature=1.0,
                                stop_ids=(47,), pad_id=0, vocab_limit=48)
  ids, mask = _prompts(16, seed=2)
  fn = generation.default_sample_fn(with_logprobs=True)
  key = jax.random.PRNGKey(3)
  want = generation.make_sampler(fn, graphdef, params, cfg, 8)(ids, mask,
                                                               key)
  got = generation.make_sampler(fn, graphdef, params, cfg, 8,
                                devices=-1)(ids, mask, key)
  np.testing.assert_array_equal(got[0], want[0])  # tokens
  np.testing.assert_array_equal(got[1], want[1])  # lengths
  # Log-probs to float rounding (fewer rows per matrix product).
  np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-5)
  # The draws are random, not all alike (the check above could not pass
  # with a sampler that ignored the key).
  other = generation.make_sampler(fn, graphdef, params, cfg, 8, devices=-1)(
      ids, mask, jax.random.PRNGKey(4))
  assert not np.array_equal(other[0], want[0])


def test_placement_counts_memory_and_bad_counts(random_lm, monkeypatch):
  _, params = random_lm
  assert generation.Placement.for_params(params, 1) is None
  place = generation.Placement.for_params(params, -1)
  assert len(place.devices) == 8
  replicated = place.params(params)
  leaf = jax.tree.leaves(replicated)[0]
  assert leaf.sharding.is_fully_replicated
  assert len(leaf.sharding.device_set) == 8
  with pytest.raises(ValueError, match="sampling_devices=9: this process "
                     "has 8 local device"):
    generation.Placement.for_params(params, 9, "sampling_devices")
  # 8 replicas that would take more than half the (shared) memory: one
  # device, with a warning.
  size = sum(x.nbytes for x in jax.tree.leaves(params))
  monkeypatch.setattr(generation, "_memory_bytes",
                      lambda devices: (8 * size, True))
  warned = []
  monkeypatch.setattr(generation.logging, "warning",
                      lambda msg, *a: warned.append(msg % a))
  assert generation.Placement.for_params(params, -1) is None
  assert len(warned) == 1 and "would not fit" in warned[0], warned
  # Own memory per device (an accelerator): one replica each fits.
  monkeypatch.setattr(generation, "_memory_bytes",
                      lambda devices: (4 * size, False))
  assert len(generation.Placement.for_params(params, -1).devices) == 8


def test_configs_reject_a_zero_device_count():
  with pytest.raises(ValueError, match="GenerationSpec.devices=0"):
    instruct.GenerationSpec(devices=0)
  with pytest.raises(ValueError, match="RolloutConfig.sampling_devices=-2"):
    rollout_lib.RolloutConfig(sampling_devices=-2)
