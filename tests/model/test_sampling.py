"""Sampling: KV-cache decoding equals full recomputation; padding, stops,
top-k / top-p filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.model import sampling, transformer
from lifejax.model.config import TransformerConfig


def _model(seed=0, **kw):
  cfg = TransformerConfig(vocab_size=64, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=kw.pop("kv", 2),
                          mlp_dim=64, init_std=0.3, **kw)
  m = transformer.create_model(cfg, seed)
  graphdef, params = nnx.split(m, nnx.Param)
  return m, graphdef, nnx.to_pure_dict(params)


def _prompts(seed, lengths, width):
  rng = np.random.default_rng(seed)
  ids = rng.integers(4, 64, (len(lengths), width)).astype(np.int32)
  mask = (np.arange(width)[None] >= (width - np.asarray(lengths))[:, None])
  return ids * mask, mask.astype(np.int32)


@pytest.mark.parametrize("kw", [{}, {"kv": 1, "tie_embeddings": True},
                                {"kv": 4, "rope_theta": 500.0},
                                {"smear_keys": True}])
def test_kv_cache_greedy_equals_no_cache(kw):
  _, graphdef, params = _model(**kw)
  ids, mask = _prompts(1, [9, 2, 5, 7], 9)
  cfg = sampling.SamplingConfig(max_new_tokens=12)
  a, la = sampling.generate_no_cache(graphdef, params, ids, mask, cfg)
  b, lb = sampling.generate(graphdef, params, ids, mask, cfg)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


@pytest.mark.parametrize("smear_keys", [False, True])
def test_left_padding_does_not_change_the_continuation(smear_keys):
  model, graphdef, params = _model(seed=3, smear_keys=smear_keys)
  ids, mask = _prompts(2, [3, 8], 8)
  cfg = sampling.SamplingConfig(max_new_tokens=6)
  toks, _ = sampling.generate(graphdef, params, ids, mask, cfg)
  # Reference: row 0's prompt alone, greedy by full forward passes.
  seq = list(ids[0, -3:])
  for _ in range(6):
    logits = model(jnp.asarray([seq], jnp.int32))
    seq.append(int(jnp.argmax(logits[0, -1])))
  assert list(np.asarray(toks)[0]) == seq[3:]


def test_stop_token_ends_a_row_and_pads_after_it():
  _, graphdef, params = _model(seed=4)
  ids, mask = _prompts(5, [4, 4], 4)
  free, _ = sampling.generate(graphdef, params, ids, mask,
                              sampling.SamplingConfig(max_new_tokens=8))
  stop = int(np.asarray(free)[0, 2])
  toks, lengths = sampling.generate(
      graphdef, params, ids, mask,
      sampling.SamplingConfig(max_new_tokens=8, stop_ids=(stop,), pad_id=0))
  toks, lengths = np.asarray(toks), np.asarray(lengths)
  first = list(np.asarray(free)[0]).index(stop)
  assert lengths[0] == first + 1
  assert toks[0, first] == stop and np.all(toks[0, first + 1:] == 0)


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  neg = jnp.finfo(jnp.float32).min
  k2 = sampling.filter_logits(logits, sampling.SamplingConfig(
      temperature=1.0, top_k=2))
  assert list(np.asarray(k2[0] > neg)) == [True, True, False, False, False]
  # Smallest prefix with mass >= 0.8: 0.5 + 0.2 + 0.15 = 0.85.
  p8 = sampling.filter_logits(logits, sampling.SamplingConfig(
      temperature=1.0, top_p=0.8))
  assert list(np.asarray(p8[0] > neg)) == [True, True, True, False, False]
  # Order-independence: the filter follows the values, not positions.
  perm = jnp.asarray([3, 0, 4, 2, 1])
  p8p = sampling.filter_logits(logits[:, perm], sampling.SamplingConfig(
      temperature=1.0, top_p=0.8))
  np.testing.assert_array_equal(np.asarray(p8p), np.asarray(p8[:, perm]))


def test_temperature_sampling_matches_the_distribution():
  probs = np.asarray([0.6, 0.3, 0.1])
  logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1))))
  draws = sampling.choose(logits, jax.random.PRNGKey(0),
                          sampling.SamplingConfig(temperature=1.0))
  freq = np.bincount(np.asarray(draws), minlength=3) / 4000
  np.testing.assert_allclose(freq, probs, atol=0.03)


def test_vocab_limit_is_never_sampled():
  logits = jnp.zeros((500, 8)).at[:, 6].set(5.0)  # id 6 is the favourite
  cfg = sampling.SamplingConfig(temperature=1.0, vocab_limit=5)
  draws = np.asarray(sampling.choose(logits, jax.random.PRNGKey(1), cfg))
  assert draws.max() < 5
  greedy = sampling.choose(logits, jax.random.PRNGKey(1),
                           sampling.SamplingConfig(vocab_limit=5))
  assert int(np.asarray(greedy).max()) < 5
