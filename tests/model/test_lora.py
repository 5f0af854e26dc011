"""LoRA: exact merge/unmerge, the adapter delta against a hand computation,
gradients only on adapters, and the optimizer-memory fraction."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import lora, transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)
LCFG = lora.LoraConfig(rank=4, alpha=8.0,
                       targets=("wq", "wv", "wo", "w_up", "w_down"))


@pytest.fixture(scope="module")
def model():
  m = transformer.create_model(CFG)
  graphdef, params = nnx.split(m, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _nonzero_lora(params):
  ad = lora.init_lora(params, LCFG, jax.random.PRNGKey(1))
  return jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
      ad)


def test_zero_init_is_the_base_model(model):
  _, params = model
  ad = lora.init_lora(params, LCFG, jax.random.PRNGKey(1))
  merged = lora.merge(params, ad, LCFG)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(a, b)


def test_merge_then_unmerge_restores_weights(model):
  _, params = model
  ad = _nonzero_lora(params)
  merged = lora.merge(params, ad, LCFG)
  assert not np.allclose(merged["layers"]["attn"]["wq"],
                         params["layers"]["attn"]["wq"])
  back = lora.unmerge(merged, ad, LCFG)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_adapted_projection_matches_x_w_plus_x_a_b(model):
  """The merged wo equals W + s * A @ B in its (H*E, D) matrix view."""
  _, params = model
  ad = _nonzero_lora(params)
  merged = lora.merge(params, ad, LCFG)
  w = np.asarray(params["layers"]["attn"]["wo"])  # (Y, H, E, D)
  y, h, e, d = w.shape
  x = np.random.default_rng(0).normal(size=(5, h * e))
  a = np.asarray(ad["layers"]["attn"]["wo"]["a"])  # (Y, H*E, r)
  b = np.asarray(ad["layers"]["attn"]["wo"]["b"])  # (Y, r, D)
  for layer in range(y):
    ref = x @ w[layer].reshape(h * e, d) + LCFG.scale * (x @ a[layer]) @ b[
        layer]
    got = x @ np.asarray(merged["layers"]["attn"]["wo"][layer]).reshape(
        h * e, d)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_adapters_and_optimizer_is_small(model):
  graphdef, params = model
  ad = _nonzero_lora(params)
  loss_fn = lora.lora_loss_fn(make_lm_loss_fn(graphdef), LCFG)
  rng = np.random.default_rng(0)
  toks = rng.integers(1, 64, (2, 9)).astype(np.int32)
  batch = {"tokens": toks[:, :-1], "targets": toks[:, 1:],
           "loss_mask": np.ones((2, 8), np.float32)}
  grads = jax.grad(lambda p: loss_fn(p, batch, None)[0])(
      {"trainable": ad, "frozen": params})
  assert all(float(jnp.abs(g).sum()) == 0.0
             for g in jax.tree.leaves(grads["frozen"]))
  assert float(jnp.abs(grads["trainable"]["layers"]["attn"]["wq"]["a"]).sum()
               ) > 0
  opt = optax.adamw(1e-3)
  full = lora.optimizer_state_bytes(opt.init(params))
  small = lora.optimizer_state_bytes(opt.init(ad))
  assert small / full < 0.25, (small, full)


def test_unknown_target_is_rejected():
  with pytest.raises(ValueError, match="not projections"):
    lora.LoraConfig(targets=("wq", "q_proj"))


def test_lora_training_through_the_trainer(tmp_path):
  """Only adapters train; the frozen base is bitwise unchanged; the adapter
  optimizer state is a small fraction of full fine-tuning's."""
  from lifejax import sharding
  from lifejax.train.checkpoint import CheckpointConfig
  from lifejax.train.optim import OptimizerConfig
  from lifejax.data.batching import example_lm_batch
  from lifejax.train.trainer import build_trainer

  mesh_cfg = sharding.MeshConfig(data=1, fsdp=-1, model=1)
  mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:2])
  common = dict(model_cfg=CFG, make_loss=make_lm_loss_fn,
                optimizer_cfg=OptimizerConfig(learning_rate=5e-2,
                                              warmup_steps=0, total_steps=10,
                                              weight_decay=0.0),
                mesh=mesh, rules=mesh_cfg.rules,
                example_batch=example_lm_batch(4, 8),
                checkpoint_cfg=CheckpointConfig(every_steps=100))
  t = build_trainer(run_dir=str(tmp_path / "lora"), lora_cfg=LCFG, **common)
  full = build_trainer(run_dir=str(tmp_path / "full"), **common)
  frozen0 = jax.device_get(t.state["frozen"])
  rng = np.random.default_rng(0)
  toks = rng.integers(1, 64, (4, 9)).astype(np.int32)
  batch = {"tokens": toks[:, :-1], "targets": toks[:, 1:],
           "loss_mask": np.ones((4, 8), np.float32),
           "segment_ids": np.ones((4, 8), np.int32),
           "positions": np.tile(np.arange(8, dtype=np.int32), (4, 1))}
  state, losses = t.state, []
  for _ in range(5):
    state, m = t.train_step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] - 0.1, losses
  for a, b in zip(jax.tree.leaves(frozen0),
                  jax.tree.leaves(jax.device_get(state["frozen"]))):
    np.testing.assert_array_equal(a, b)
  assert set(state["params"]["layers"]) == {"attn", "mlp"}
  frac = (lora.optimizer_state_bytes(state["opt_state"]) /
          lora.optimizer_state_bytes(full.state["opt_state"]))
  assert frac < 0.25, frac
  # The eval step sees the merged weights: its loss equals the train loss
  # recomputed on merged params with the plain LM loss.
  merged = lora.merge(jax.device_get(state["frozen"]),
                      jax.device_get(state["params"]), LCFG)
  plain = make_lm_loss_fn(t.graphdef)(merged, batch, None)[0]
  from lifejax.train.step import loss_params
  ev = t.eval_step(loss_params(state), batch)
  np.testing.assert_allclose(float(ev["loss"] / ev["weight"]), float(plain),
                             rtol=1e-5)
