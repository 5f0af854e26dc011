"""Learning-rate schedules against their closed forms, the weight-decay mask
and gradient clipping."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.train import optim

PEAK, END_RATIO, WARM, TOTAL = 1e-3, 0.1, 10, 50
END = PEAK * END_RATIO
STEPS = [0, 1, 5, 9, 10, 11, 20, 30, 49, 50, 60]


def _warmup(s: int) -> float:
  return PEAK * s / WARM


def cosine(s: int) -> float:
  if s < WARM:
    return _warmup(s)
  frac = min(s - WARM, TOTAL - WARM) / (TOTAL - WARM)
  return END + (PEAK - END) * 0.5 * (1 + math.cos(math.pi * frac))


def linear(s: int) -> float:
  if s < WARM:
    return _warmup(s)
  frac = min(s - WARM, TOTAL - WARM) / (TOTAL - WARM)
  return PEAK + (END - PEAK) * frac


def constant(s: int) -> float:
  return _warmup(s) if s < WARM else PEAK


@pytest.mark.parametrize("name, closed_form", [
    ("cosine", cosine), ("linear", linear), ("constant", constant)])
def test_schedule_matches_closed_form(name, closed_form):
  sched = optim.make_schedule(optim.OptimizerConfig(
      learning_rate=PEAK, schedule=name, warmup_steps=WARM, total_steps=TOTAL,
      end_lr_ratio=END_RATIO))
  got = [float(sched(s)) for s in STEPS]
  want = [closed_form(s) for s in STEPS]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_schedules_without_warmup_start_at_peak():
  for name in ("cosine", "linear", "constant"):
    sched = optim.make_schedule(optim.OptimizerConfig(
        learning_rate=PEAK, schedule=name, warmup_steps=0, total_steps=TOTAL,
        end_lr_ratio=END_RATIO))
    np.testing.assert_allclose(float(sched(0)), PEAK, rtol=1e-6, err_msg=name)
    if name != "constant":
      np.testing.assert_allclose(float(sched(TOTAL)), END, rtol=1e-5,
                                 err_msg=name)
  half = optim.make_schedule(optim.OptimizerConfig(
      learning_rate=PEAK, schedule="cosine", warmup_steps=0, total_steps=TOTAL,
      end_lr_ratio=END_RATIO))(TOTAL // 2)
  np.testing.assert_allclose(float(half), (PEAK + END) / 2, rtol=1e-5)


def test_optimizer_config_rejects_unknown_schedule():
  with pytest.raises(ValueError, match="schedule='cosin'"):
    optim.OptimizerConfig(schedule="cosin")


def test_decay_mask_excludes_norm_scales(tiny_lm):
  mask = optim.decay_mask(tiny_lm.params)
  flat = {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(mask)[0]}
  excluded = sorted(k for k, v in flat.items() if not v)
  assert excluded == ["['final_norm']['scale']",
                      "['layers']['attn_norm']['scale']",
                      "['layers']['mlp_norm']['scale']"]
  for k in ("['embed']", "['lm_head']", "['layers']['attn']['wq']",
            "['layers']['attn']['wo']", "['layers']['mlp']['w_down']"):
    assert flat[k] is True, k


def test_decay_mask_excludes_the_smeared_keys_mix():
  cfg = TransformerConfig(vocab_size=32, d_model=16, num_layers=2,
                          num_heads=2, num_kv_heads=1, mlp_dim=32,
                          smear_keys=True)
  params = nnx.to_pure_dict(nnx.state(transformer.abstract_model(cfg),
                                      nnx.Param))
  mask = optim.decay_mask(params)
  assert mask["layers"]["attn"]["smear"] is False
  assert mask["layers"]["attn"]["wk"] is True


def test_zero_gradient_update_is_pure_weight_decay(tiny_lm):
  lr, wd = 0.5, 0.1
  opt = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=lr, schedule="constant", warmup_steps=0, weight_decay=wd))
  params = jax.tree.map(lambda p: p + 0.3, tiny_lm.params)  # gains != 1
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  mask = optim.decay_mask(params)

  def check(m, p, n):
    want = p * (1 - lr * wd) if m else p
    np.testing.assert_allclose(n, want, rtol=1e-6)
    assert m == (not np.allclose(n, p))
  jax.tree.map(check, mask, params, new)


@pytest.mark.parametrize("norm, clipped", [(10.0, True), (0.5, False)])
def test_gradients_clipped_to_global_norm(tiny_lm, norm: float,
                                          clipped: bool):
  cfg = optim.OptimizerConfig(learning_rate=1e-3, clip_norm=1.0)
  opt = optim.make_optimizer(cfg)
  leaves, treedef = jax.tree.flatten(tiny_lm.params)
  rng = np.random.default_rng(0)
  g = [rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
  total = math.sqrt(sum(float(np.sum(x * x)) for x in g))
  grads = jax.tree.unflatten(treedef, [x * (norm / total) for x in g])
  _, state = jax.jit(opt.update)(grads, opt.init(tiny_lm.params),
                                 tiny_lm.params)
  factor = 1.0 / norm if clipped else 1.0
  # Adam's first moment after one step is (1 - b1) * (clipped) gradient.
  jax.tree.map(lambda m, gr: np.testing.assert_allclose(
      m, (1 - cfg.b1) * factor * gr, rtol=1e-5, atol=1e-12),
               optax.tree_utils.tree_get(state, "mu"), grads)


@pytest.mark.parametrize("kwargs, field", [
    (dict(learning_rate=-1e-3), "OptimizerConfig.learning_rate"),
    (dict(end_lr_ratio=-0.1), "OptimizerConfig.end_lr_ratio"),
    (dict(b1=1.0), "OptimizerConfig.b1"),
    (dict(b2=-0.5), "OptimizerConfig.b2"),
    (dict(eps=0.0), "OptimizerConfig.eps"),
    (dict(weight_decay=-0.1), "OptimizerConfig.weight_decay"),
    # 0 used to switch clipping off silently; None is the way to.
    (dict(clip_norm=0.0), "OptimizerConfig.clip_norm"),
    (dict(clip_norm=-1.0), "OptimizerConfig.clip_norm"),
])
def test_optimizer_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    optim.OptimizerConfig(**kwargs)


def test_optimizer_config_clip_norm_none_turns_clipping_off():
  assert optim.OptimizerConfig(clip_norm=None).clip_norm is None
