"""Reward/value heads on the decoder backbone."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2,
                        num_kv_heads=1, mlp_dim=32)


def _pure(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def _random(model_cls, cfg: TransformerConfig, seed: int
            ) -> tuple[nnx.GraphDef, dict]:
  """N(0, 0.1) params in the model's abstract shapes (no eager init)."""
  graphdef, abstract = _pure(heads.abstract(model_cls, cfg))
  rng = np.random.default_rng(seed)
  return graphdef, jax.tree.map(
      lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype),
      abstract)


def _apply(calls: list[tuple[nnx.GraphDef, dict, str]], inputs) -> list:
  """Runs each (graphdef, params, method) on `inputs`, in one compilation."""
  static = [(graphdef, method) for graphdef, _, method in calls]

  @jax.jit
  def run(all_params, inputs):
    return [getattr(nnx.merge(graphdef, params), method)(*inputs)
            for (graphdef, method), params in zip(static, all_params)]

  return run([params for _, params, _ in calls], inputs)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (3, 6)).astype(np.int32)
  positions = np.tile(np.arange(6, dtype=np.int32), (3, 1))
  segment_ids = np.array([[1] * 6, [1, 1, 1, 2, 2, 2], [1] * 4 + [0] * 2],
                         np.int32)
  return tokens, positions, segment_ids


@pytest.mark.parametrize("tie", [False, True])
def test_reward_model_is_lm_hidden_times_head(inputs, tie):
  """A RewardModel started from an LM computes exactly h_LM @ kernel + bias
  (h_LM from the LM's own forward), with the LM head dropped."""
  cfg = dataclasses.replace(CFG, tie_embeddings=tie)
  lm_graphdef, lm_params = _random(transformer.Transformer, cfg, seed=3)
  graphdef, params = _random(heads.RewardModel, cfg, seed=0)
  assert "lm_head" not in params["backbone"]
  assert ("lm_head" in lm_params) == (not tie)
  params = heads.scalar_params_from_lm(params, lm_params)
  assert params["backbone"]["embed"] is lm_params["embed"]

  got, h = _apply([(graphdef, params, "__call__"),
                   (lm_graphdef, lm_params, "hidden")], inputs)
  h = np.asarray(h, np.float64)
  want = (h @ np.asarray(params["head"]["kernel"], np.float64)[:, 0]
          + float(params["head"]["bias"][0]))
  assert got.shape == (3, 6) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_head_init_and_logical_axes():
  model = heads.abstract(heads.RewardModel, CFG)
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  assert tuple(specs["head"]["kernel"].get_value()) == ("embed", None)
  assert tuple(specs["head"]["bias"].get_value()) == (None,)
  assert tuple(specs["backbone"]["embed"].get_value()) == ("vocab", "embed")

  assert isinstance(model.head, heads.RewardHead)
  assert isinstance(heads.abstract(heads.ValueModel, CFG).head,
                    heads.ValueHead)

  d = 256  # enough samples for the std check
  with nnx.use_eager_sharding(False):
    reward = heads.RewardHead(d, nnx.Rngs(params=0))
    value = heads.ValueHead(d, nnx.Rngs(params=0))
  std = float(np.std(reward.kernel[...]))
  assert 0.8 / np.sqrt(d + 1) < std < 1.2 / np.sqrt(d + 1)
  assert not np.any(value.kernel[...])  # the critic starts at V = 0
  assert not np.any(value.bias[...])


def test_policy_value_model_matches_lm(inputs):
  lm_graphdef, lm_params = _random(transformer.Transformer, CFG, seed=3)
  graphdef, params = _random(heads.PolicyValueModel, CFG, seed=1)
  params = heads.policy_value_params_from_lm(params, lm_params)
  (logits, values), lm_logits, h = _apply(
      [(graphdef, params, "__call__"), (lm_graphdef, lm_params, "__call__"),
       (lm_graphdef, lm_params, "hidden")], inputs)
  np.testing.assert_allclose(logits, lm_logits, rtol=1e-5, atol=1e-6)
  h = np.asarray(h, np.float64)
  want = (h @ np.asarray(params["value_head"]["kernel"], np.float64)[:, 0]
          + float(params["value_head"]["bias"][0]))
  np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5)


def test_params_from_lm_shape_mismatch():
  _, params = _pure(heads.abstract(heads.ValueModel, CFG))
  wider = dataclasses.replace(CFG, d_model=32, mlp_dim=64)
  _, lm_params = _pure(transformer.abstract_model(wider))
  with pytest.raises(ValueError, match="embed"):
    heads.scalar_params_from_lm(params, lm_params)
  deeper = dataclasses.replace(CFG, num_layers=2)
  _, lm_params = _pure(transformer.abstract_model(deeper))
  with pytest.raises(ValueError, match="shape"):
    heads.scalar_params_from_lm(params, lm_params)
  _, pv_params = _pure(heads.abstract(heads.PolicyValueModel, CFG))
  _, lm_params = _pure(transformer.abstract_model(
      dataclasses.replace(CFG, tie_embeddings=True)))
  with pytest.raises(ValueError, match="tree does not match"):
    heads.policy_value_params_from_lm(pv_params, lm_params)


def test_last_token_values_bruteforce():
  rng = np.random.default_rng(2)
  values = rng.normal(size=(5, 7)).astype(np.float32)
  mask = np.zeros((5, 7), np.float32)
  mask[0, 2:5] = 1
  mask[1, :] = 1
  mask[2, 0] = 1
  mask[3, [1, 4]] = 1  # a gap: the last 1 counts
  # Row 4: empty (padding row) -> 0.
  want = []
  for i in range(5):
    on = [j for j in range(7) if mask[i, j] > 0]
    want.append(values[i, on[-1]] if on else 0.0)
  np.testing.assert_array_equal(heads.last_token_values(values, mask), want)
  np.testing.assert_array_equal(heads.last_token_index(mask)[:4],
                                [4, 6, 0, 4])
  jitted = jax.jit(heads.last_token_values)(values, mask)
  np.testing.assert_array_equal(jitted, want)
