"""Pipeline parallelism (lifejax/model/pipeline.py) on 8 simulated devices.

The reference is the same model and params without a mesh (the plain layer
loop on one device): a pipelined run must give its loss and gradients, for
each schedule, with 2 and 4 stages and data parallelism beside them. The
batch packs documents (segment ids, restarting positions) differently per
row, so a microbatch that read another's side inputs would show.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax import checks, sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import pipeline, transformer
from lifejax.model.config import TransformerConfig
from lifejax.stages import runner

CFG = TransformerConfig(vocab_size=64, d_model=16, num_layers=4, num_heads=2,
                        num_kv_heads=1, mlp_dim=32, tie_embeddings=True)
Z_LOSS = 1e-3
# f32; the pipeline sums microbatch losses and gradients in another order,
# so not bitwise. Measured (4 stages): loss equal for both; gradients max
# |diff| / max |ref| 3.2e-7 (GPipe, model=2), 2.9e-7 (1F1B, fsdp=2).
RTOL = 1e-5


def _batch(b: int = 8, t: int = 8) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  toks = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
  cuts = rng.integers(1, t, b)  # row r: two documents, split at cuts[r]
  col = np.arange(t)[None, :]
  seg = np.where(col < cuts[:, None], 1, 2).astype(np.int32)
  pos = np.where(col < cuts[:, None], col, col - cuts[:, None]).astype(
      np.int32)
  mask = (rng.random((b, t)) < 0.8).astype(np.float32)
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": mask,
          "segment_ids": seg, "positions": pos}


def random_params(cfg: TransformerConfig, seed: int = 0):
  """(graphdef, params): N(0, 0.1) matrices and gains near 1, poured into
  the abstract model (no init to compile)."""
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    base = 1.0 if str(path[-1].key) == "scale" else 0.0
    return jnp.asarray(base + 0.1 * rng.standard_normal(x.shape), x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      fill, nnx.to_pure_dict(abstract))


@pytest.fixture(scope="module")
def setup():
  graphdef, params = random_params(CFG)
  batch = _batch()
  loss_fn = make_lm_loss_fn(graphdef, z_loss=Z_LOSS)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: loss_fn(p, batch, None), has_aux=True))(params)
  return params, batch, (loss, metrics, grads)


def _placed(params, cfg, mesh_cfg):
  """(mesh, graphdef, params placed by the rules: layers split over
  `stage`, specs)."""
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh,
                                                mesh_cfg.rules))
  return (mesh, graphdef, jax.device_put(params, sharding.named(mesh, specs)),
          specs)


def _pipelined(params, batch, cfg, mesh_cfg):
  """Loss, metrics, grads with the mesh's stages."""
  mesh, graphdef, placed, specs = _placed(params, cfg, mesh_cfg)
  loss_fn = make_lm_loss_fn(graphdef, z_loss=Z_LOSS)

  def run(p):
    with sharding.activation_sharding(mesh, mesh_cfg.rules):
      out = jax.value_and_grad(lambda q: loss_fn(q, batch, None),
                               has_aux=True)(p)
      # The loss alone (an eval step: no gradient asked for).
      return out, loss_fn(p, batch, None)[0]

  with jax.set_mesh(mesh):
    ((loss, metrics), grads), eval_loss = jax.jit(run)(placed)
  np.testing.assert_allclose(float(eval_loss), float(loss), rtol=RTOL)
  return loss, metrics, grads, specs


def _max_rel(a, b) -> float:
  diffs = [float(jnp.max(jnp.abs(x - y))) for x, y in
           zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  scale = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
  return max(diffs) / scale


# 4 stages here, with tensor (GPipe) or fsdp (1F1B) parallelism inside each
# stage; 2 stages with 4-way data parallelism in
# tests/train/test_pipeline_train.py, through the train step.
@pytest.mark.parametrize("schedule,stage,fsdp,model,micro", [
    ("gpipe", 4, 1, 2, 4),
    ("1f1b", 4, 2, 1, 4),
])
def test_pipeline_matches_plain_model(setup, schedule, stage, fsdp, model,
                                      micro):
  params, batch, (ref_loss, ref_metrics, ref_grads) = setup
  cfg = dataclasses.replace(CFG, pipeline_schedule=schedule,
                            pipeline_microbatches=micro)
  mesh_cfg = sharding.MeshConfig(stage=stage, data=1, fsdp=fsdp, model=model)
  loss, metrics, grads, specs = _pipelined(params, batch, cfg, mesh_cfg)
  # The layer params really are split over the stages (and heads over
  # `model`).
  assert specs["layers"]["mlp"]["w_up"][0] == sharding.STAGE_AXIS
  assert ("model" in specs["layers"]["attn"]["wq"]) == (model > 1)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=RTOL)
  for k in ("cross_entropy", "z_loss", "accuracy", "weight"):
    np.testing.assert_allclose(float(metrics[k]), float(ref_metrics[k]),
                               rtol=RTOL, err_msg=k)
  assert _max_rel(grads, ref_grads) < RTOL
  # Every leaf (the tied embedding's two paths, norms, each layer) moved.
  for g in jax.tree.leaves(grads):
    assert float(jnp.max(jnp.abs(g))) > 0


def _stage_fn(params_L, x, extras):
  """A stand-in stage: x <- tanh(x * w_l + b_l) per layer, plus the
  microbatch's own side input (so misrouted extras change the result)."""
  w, b = params_L
  for i in range(w.shape[0]):
    x = jnp.tanh(x * w[i][None] + b[i][None] + extras)
  return x


# More microbatches than the 2p - 1 input slots 1F1B keeps per stage, so
# its ring buffer wraps. (Fewer microbatches than stages: the model test's
# m = p = 4 and experiments/pipeline_bubble's m = 1 rows.)
@pytest.mark.parametrize("stages,micro", [(2, 5)])
def test_executed_schedule_and_bubble(stages, micro):
  mesh = sharding.make_mesh(sharding.MeshConfig(stage=stages, fsdp=-1))
  rng = np.random.default_rng(stages * 10 + micro)
  w = jnp.asarray(rng.normal(size=(2 * stages, 3)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2 * stages, 3)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(micro, 2, 3)), jnp.float32)
  ex = jnp.asarray(rng.normal(size=(micro, 2, 3)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(3,)), jnp.float32)

  def head_fn(h, y, e):
    return jnp.sum(y * h[None]), {"n": jnp.float32(y.shape[0])}

  with jax.set_mesh(mesh):
    y, ids = jax.jit(lambda *a: pipeline.gpipe(
        _stage_fn, *a, mesh))((w, b), x, ex)
    r = jax.jit(lambda *a: pipeline.one_f_one_b(
        _stage_fn, head_fn, *a, mesh))((w, b), head, x, ex)

  # Brute force: every microbatch through every layer in order.
  def plain(params, h):
    out = jax.vmap(lambda xi, ei: _stage_fn(params, xi, ei))(x, ex)
    return jnp.sum(out * h[None, None]), out
  (want_loss, want_y), want_g = jax.value_and_grad(
      plain, argnums=(0, 1), has_aux=True)((w, b), head)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(r.loss), float(want_loss), rtol=1e-5)
  assert float(r.aux["n"]) == 2 * micro
  for got, want in zip(jax.tree.leaves((r.stage_grads, r.head_grads)),
                       jax.tree.leaves(want_g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  dx = jax.grad(lambda xx: jnp.sum(jax.vmap(
      lambda xi, ei: _stage_fn((w, b), xi, ei))(xx, ex) * head[None, None]))(x)
  np.testing.assert_allclose(r.dx, dx, rtol=1e-5, atol=1e-6)

  # The executed slots: GPipe stage s ran microbatch t - s at tick t;
  # 1F1B's backward slot of stage s ran microbatch t - 2(p - 1) + s.
  p, m = stages, micro
  t = np.arange(m + p - 1)[None, :]
  s = np.arange(p)[:, None]
  want_f = np.where((t - s >= 0) & (t - s < m), t - s, -1)
  np.testing.assert_array_equal(np.asarray(ids), want_f)
  t2 = np.arange(m + 2 * p - 2)[None, :]
  want_b = t2 - 2 * (p - 1) + s
  want_b = np.where((want_b >= 0) & (want_b < m), want_b, -1)
  np.testing.assert_array_equal(np.asarray(r.bwd_ids), want_b)
  # Each microbatch's backward slot follows its forward on every stage.
  fwd_tick = {(si, int(mb)): ti for si, row in enumerate(np.asarray(
      r.fwd_ids)) for ti, mb in enumerate(row) if mb >= 0}
  for si, row in enumerate(np.asarray(r.bwd_ids)):
    for ti, mb in enumerate(row):
      if mb >= 0:
        assert fwd_tick[(si, int(mb))] <= ti

  closed_form = (p - 1) / (m + p - 1)
  g = pipeline.bubble_fraction(np.asarray(ids))
  o = pipeline.bubble_fraction(np.asarray(r.fwd_ids), np.asarray(r.bwd_ids))
  np.testing.assert_allclose(g["slots"], closed_form, rtol=1e-12)
  np.testing.assert_allclose(g["time"], closed_form, rtol=1e-12)
  np.testing.assert_allclose(o["time"], closed_form, rtol=1e-12)
  # Counting slots, 1F1B's lock-step loop idles more ((2p-2)/(m+2p-2)): a
  # tick with only a forward or only a backward leaves the other slot
  # empty. Time-weighted (a skipped slot costs nothing) it is the same.
  np.testing.assert_allclose(o["slots"], (2 * p - 2) / (m + 2 * p - 2),
                             rtol=1e-12)


def test_mesh_config_and_errors():
  mc = sharding.MeshConfig(stage=2, fsdp=-1)
  assert mc.axis_names == ("stage", "data", "fsdp", "model")
  assert mc.shape(8) == (2, 1, 4, 1)
  # Without a stage axis the mesh is what it was.
  assert sharding.MeshConfig().axis_names == ("data", "fsdp", "model")
  with pytest.raises(ValueError, match=r"MeshConfig.stage=0"):
    sharding.MeshConfig(stage=0)
  with pytest.raises(ValueError, match=r"MeshConfig.stage=2 with context"):
    sharding.MeshConfig(stage=2, context=2)
  with pytest.raises(ValueError, match="pipeline_schedule='zb'"):
    dataclasses.replace(CFG, pipeline_schedule="zb")
  with pytest.raises(ValueError, match="pipeline_microbatches=0"):
    dataclasses.replace(CFG, pipeline_microbatches=0)
  with pytest.raises(ValueError, match=r"num_layers=4 is not divisible by "
                     r"the pipeline stages MeshConfig.stage=8"):
    pipeline.check_pipeline(4, 8, 8, 2, "gpipe")
  with pytest.raises(ValueError,
                     match=r"batch size 6 \(.*pipeline_microbatches=4"):
    pipeline.check_pipeline(4, 6, 2, 4, "gpipe")
  # The stage runner: pretrain/SFT check the pipeline, the others refuse.
  with pytest.raises(checks.ConfigError, match="num_layers=4 is not"):
    runner.preflight("pretrain", sharding.MeshConfig(stage=8), 8,
                     pipeline_model=CFG)
  with pytest.raises(checks.ConfigError, match=r"'1f1b' with MeshConfig."
                     r"model=2: .* tensor parallelism"):
    runner.preflight("sft", sharding.MeshConfig(stage=2, model=2), 8,
                     pipeline_model=dataclasses.replace(
                         CFG, pipeline_schedule="1f1b"))
  with pytest.raises(checks.ConfigError, match="rl: mesh.stage=2: pipeline"):
    runner.preflight("rl", sharding.MeshConfig(stage=2), 8)
  # A 1F1B model's plain forward under a stage mesh is an error, not a
  # silent GPipe.
  mesh = sharding.make_mesh(mc)
  tokens = jnp.zeros((8, 8), jnp.int32)
  for cfg, match in (
      (dataclasses.replace(CFG, pipeline_schedule="1f1b",
                           pipeline_microbatches=2), "pipelined_loss"),
      # A batch the microbatches do not divide: the config field is named.
      (dataclasses.replace(CFG, pipeline_microbatches=3),
       "pipeline_microbatches=3")):
    model = nnx.merge(*random_params(cfg))
    with sharding.activation_sharding(mesh, mc.rules), jax.set_mesh(mesh):
      with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda m=model: m(tokens))


def test_1f1b_model_evaluates_per_row(setup):
  """An eval step asks a 1F1B model for per-row sums (the lifecycle's
  forgetting rows); it takes the GPipe forward and gives the plain model's
  rows. Before, the 1F1B path emitted none and evaluate() refused."""
  params, batch, _ = setup
  graphdef, _ = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  ref = jax.jit(lambda p: make_lm_loss_fn(graphdef, per_row=True)(
      p, batch, None))(params)
  cfg = dataclasses.replace(CFG, pipeline_schedule="1f1b",
                            pipeline_microbatches=4)
  mesh_cfg = sharding.MeshConfig(stage=4, data=1, fsdp=2, model=1)
  mesh, graphdef, placed, _ = _placed(params, cfg, mesh_cfg)
  loss_fn = make_lm_loss_fn(graphdef, per_row=True)

  def run(p):
    with sharding.activation_sharding(mesh, mesh_cfg.rules):
      return loss_fn(p, batch, None)

  with jax.set_mesh(mesh):
    loss, metrics = jax.jit(run)(placed)
  np.testing.assert_allclose(float(loss), float(ref[0]), rtol=RTOL)
  for k in ("rows/loss_sum", "rows/weight"):
    assert metrics[k].shape == (batch["tokens"].shape[0],), k
    np.testing.assert_allclose(np.asarray(metrics[k]), np.asarray(ref[1][k]),
                               rtol=RTOL, err_msg=k)
