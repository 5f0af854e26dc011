"""The generic train step with pipeline stages (MeshConfig.stage = 2, with
4-way data parallelism): a few AdamW steps from the same params give the
losses, gradient norms and params of the run without a pipeline, for both
schedules (GPipe with 2 pipeline microbatches; 1F1B through
`Transformer.pipelined_loss`, with 2 accumulation microbatches around 2
pipeline microbatches)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from lifejax import sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training

from .conftest import CFG

STEPS = 3
# f32, 3 AdamW steps at lr 1e-2. Measured: losses within 1.2e-7 relative
# (1F1B: equal), grad norms 1.2e-7 relative, params within 6.5e-7 absolute
# of the plain run. Not bitwise: microbatch sums (and, for 1F1B, the
# per-microbatch backward) reorder the f32 additions.
RTOL_LOSS = 1e-5
ATOL_PARAMS = 1e-5


def _run(lm_batch, tiny_lm, mesh_cfg, cfg, num_microbatches=1):
  mesh = sharding.make_mesh(mesh_cfg)
  plan = plan_training(
      model_cfg=cfg, make_loss=lambda g: make_lm_loss_fn(g, z_loss=1e-3),
      optimizer_cfg=OptimizerConfig(learning_rate=1e-2, warmup_steps=0,
                                    total_steps=10, weight_decay=0.0),
      mesh=mesh, rules=mesh_cfg.rules, example_batch=lm_batch,
      num_microbatches=num_microbatches)
  with jax.set_mesh(mesh):
    state = plan.init_state(jax.device_put(
        jax.tree.map(np.copy, tiny_lm.params), plan.state_shardings["params"]))
    batch = jax.device_put(lm_batch, plan.batch_shardings)
  losses, norms = [], []
  for _ in range(STEPS):
    state, metrics = plan.train_step(state, batch)
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  return np.array(losses), np.array(norms), jax.device_get(state["params"])


@pytest.fixture(scope="module")
def plain(lm_batch, tiny_lm):
  return _run(lm_batch, tiny_lm, sharding.MeshConfig(data=8, fsdp=1), CFG)


@pytest.mark.parametrize("schedule,micro,accum", [
    ("gpipe", 2, 1), ("1f1b", 2, 2)])
def test_stage2_trains_like_plain(lm_batch, tiny_lm, plain, schedule, micro,
                                  accum):
  cfg = dataclasses.replace(CFG, pipeline_schedule=schedule,
                            pipeline_microbatches=micro)
  losses, norms, params = _run(
      lm_batch, tiny_lm, sharding.MeshConfig(stage=2, data=4, fsdp=1), cfg,
      num_microbatches=accum)
  want_losses, want_norms, want_params = plain
  # The steps really trained (the loss moved), and moved alike.
  assert want_losses[-1] < want_losses[0] - 1e-3
  np.testing.assert_allclose(losses, want_losses, rtol=RTOL_LOSS)
  np.testing.assert_allclose(norms, want_norms, rtol=RTOL_LOSS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=0, atol=ATOL_PARAMS), params, want_params)
