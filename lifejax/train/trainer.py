"""Wires a model, a loss and a mesh into a sharded, resumable training setup.

Every stage (pretraining, SFT, reward model, DPO, ...) builds its `Trainer`
here from a model config and a loss builder, then runs `train_loop`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lifejax import sharding
from lifejax.losses.lm import LossFn
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.train import optim, state as state_lib, step as step_lib
from lifejax.train.checkpoint import Checkpointer, CheckpointConfig


@dataclasses.dataclass
class Trainer:
  """Everything a loop needs; built once per run."""

  mesh: Mesh
  rules: sharding.Rules
  graphdef: nnx.GraphDef
  state: state_lib.TrainState
  state_shardings: state_lib.TrainState
  abstract_state: state_lib.TrainState
  train_step: Callable
  eval_step: Callable | None
  batch_shardings: Any
  checkpointer: Checkpointer
  schedule: optax.Schedule
  restored_extra: dict | None = None
  restored_data_state: dict | None = None


def example_lm_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """A zero batch with the LM batch layout (for shapes and shardings)."""
  z = np.zeros((batch_size, seq_len), np.int32)
  return {"tokens": z, "targets": z, "loss_mask": z.astype(np.float32),
          "segment_ids": z, "positions": z}


def build_trainer(
    *,
    run_dir: str,
    model_cfg: TransformerConfig,
    make_loss: Callable[[nnx.GraphDef], LossFn],
    optimizer_cfg: optim.OptimizerConfig,
    mesh: Mesh,
    rules: sharding.Rules,
    example_batch: dict[str, np.ndarray],
    checkpoint_cfg: CheckpointConfig,
    seed: int = 0,
    num_microbatches: int = 1,
    loss_scale: state_lib.LossScaleConfig | None = None,
    init_params: Callable[[], Any] | None = None,
    make_eval_loss: Callable[[nnx.GraphDef], LossFn] | None = None,
    resume: bool = True,
) -> Trainer:
  """Creates (or restores) the sharded state and the jitted step functions.

  init_params: optional traced initializer returning the params pytree (e.g.
  params loaded from an earlier stage); defaults to a fresh model from `seed`.
  """
  batch_size = next(iter(example_batch.values())).shape[0]
  sharding.check_batch_divisible(batch_size, mesh, rules)
  if batch_size % num_microbatches:
    raise ValueError(f"batch size {batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}")
  sharding.check_batch_divisible(batch_size // num_microbatches, mesh, rules,
                                 what="microbatch size")

  abstract_model = transformer.abstract_model(model_cfg)
  graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
  param_specs = sharding.param_specs(abstract_params, mesh, rules)
  param_specs = nnx.to_pure_dict(param_specs)

  if init_params is None:
    def init_params():
      with nnx.use_eager_sharding(False):
        model = transformer.Transformer(model_cfg, nnx.Rngs(params=seed))
      return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  optimizer = optim.make_optimizer(optimizer_cfg)
  schedule = optim.make_schedule(optimizer_cfg)
  state, state_shardings = state_lib.create_train_state(
      init_params, optimizer, param_specs, mesh, seed, loss_scale)
  abstract_state = jax.eval_shape(lambda s: s, state)

  checkpointer = Checkpointer(run_dir, checkpoint_cfg)
  restored_extra = restored_data = None
  latest = checkpointer.latest_step() if resume else None
  if latest is not None:
    logging.info("resuming from %s step %d", checkpointer.dir, latest)
    del state  # free the fresh state before loading the saved one
    state, restored_data, restored_extra = checkpointer.restore(
        latest, abstract_state, state_shardings)

  batch_sh = sharding.batch_shardings(example_batch, mesh, rules)
  step_fn = step_lib.build_train_step(
      make_loss(graphdef), optimizer, num_microbatches=num_microbatches,
      loss_scale=loss_scale, schedule=schedule)
  train_step = step_lib.jit_train_step(step_fn, state_shardings, batch_sh,
                                       mesh, rules)
  eval_loss = (make_eval_loss or make_loss)(graphdef)
  eval_step = step_lib.build_eval_step(eval_loss, state_shardings["params"],
                                       batch_sh, mesh, rules)
  return Trainer(mesh=mesh, rules=rules, graphdef=graphdef, state=state,
                 state_shardings=state_shardings,
                 abstract_state=abstract_state, train_step=train_step,
                 eval_step=eval_step, batch_shardings=batch_sh,
                 checkpointer=checkpointer, schedule=schedule,
                 restored_extra=restored_extra,
                 restored_data_state=restored_data)
