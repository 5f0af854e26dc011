"""Wires a model, a loss and a mesh into a sharded, resumable training setup.

Every stage (pretraining, SFT, reward model, DPO, ...) builds its `Trainer`
here from a model config and a loss builder, then runs `train_loop`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from lifejax import sharding
from lifejax.losses.lm import LossFn
from lifejax.model import lora, transformer
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


@dataclasses.dataclass
class Plan:
  """Abstract shapes, shardings and jitted steps; no array is allocated."""

  mesh: Mesh
  rules: sharding.Rules
  graphdef: nnx.GraphDef
  init_state: Callable[[], state_lib.TrainState]
  abstract_state: state_lib.TrainState
  state_shardings: state_lib.TrainState
  batch_shardings: Any
  train_step: Callable
  eval_step: Callable
  schedule: optax.Schedule


def plan_training(
    *,
    model_cfg: TransformerConfig,
    make_loss: Callable[[nnx.GraphDef], LossFn],
    optimizer_cfg: optim.OptimizerConfig,
    mesh: Mesh,
    rules: sharding.Rules,
    example_batch: dict[str, Any],
    seed: int = 0,
    num_microbatches: int = 1,
    loss_scale: state_lib.LossScaleConfig | None = None,
    init_params: Callable[[], Any] | None = None,
    make_eval_loss: Callable[[nnx.GraphDef], LossFn] | None = None,
    lora_cfg: lora.LoraConfig | None = None,
    model_cls: type[nnx.Module] = transformer.Transformer,
    params_tree: tuple[Any, Any] | None = None,
) -> Plan:
  """Derives shardings from abstract shapes and builds the jitted steps.

  `example_batch` may hold numpy arrays or ShapeDtypeStructs (only shapes are
  read). Nothing is materialized: use it to plan memory or AOT-compile
  published shapes on any mesh. With `lora_cfg`, the params go to
  state["frozen"] and state["params"] holds `lora.init_lora`'s trainable
  tree (adapters on every LM trunk, heads outside the trunks in full), the
  only part with optimizer state; losses are wrapped to see the merged
  weights and `initial_params` places into state_shardings["frozen"].
  `model_cls(cfg, rngs)` builds the
  model (the decoder LM by default; a reward model). `params_tree` =
  (abstract params, PartitionSpecs) instead trains a tree that is not one
  model (an RL stage's policy and critic); `make_loss` then gets graphdef
  None and `init_params` defaults to zeros (the stage passes the real
  starting params to `init_state`).
  """
  batch_size = jax.tree.leaves(example_batch)[0].shape[0]
  sharding.check_batch_divisible(batch_size, mesh, rules)
  if batch_size % num_microbatches:
    raise ValueError(f"batch size {batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}")
  sharding.check_batch_divisible(batch_size // num_microbatches, mesh, rules,
                                 what="microbatch size")

  if params_tree is not None:
    graphdef, (abstract_tree, param_specs) = None, params_tree
    if init_params is None:
      def init_params():
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                            abstract_tree)
  else:
    with nnx.use_eager_sharding(False):
      abstract_model = nnx.eval_shape(
          lambda: model_cls(model_cfg, nnx.Rngs(params=0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_specs = nnx.to_pure_dict(
        sharding.param_specs(abstract_params, mesh, rules))

  if init_params is None:
    def init_params():
      with nnx.use_eager_sharding(False):
        model = model_cls(model_cfg, nnx.Rngs(params=seed))
      return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  optimizer = optim.make_optimizer(optimizer_cfg)
  schedule = optim.make_schedule(optimizer_cfg)
  make_trainable = None
  if lora_cfg is not None:
    make_trainable = lambda p: lora.init_lora(  # noqa: E731
        p, lora_cfg, jax.random.PRNGKey(seed + 1))
    base_make_loss = make_loss
    make_loss = lambda g: lora.lora_loss_fn(  # noqa: E731
        base_make_loss(g), lora_cfg)
    if make_eval_loss is not None:
      base_eval = make_eval_loss
      make_eval_loss = lambda g: lora.lora_loss_fn(base_eval(g), lora_cfg)  # noqa: E731
  init_state, abstract_state, state_shardings = state_lib.plan_train_state(
      init_params, optimizer, param_specs, mesh, seed, loss_scale,
      make_trainable)

  batch_sh = sharding.batch_shardings(example_batch, mesh, rules)
  step_fn = step_lib.build_train_step(
      make_loss(graphdef), optimizer, num_microbatches=num_microbatches,
      loss_scale=loss_scale, schedule=schedule)
  train_step = step_lib.jit_train_step(step_fn, state_shardings, batch_sh,
                                       mesh, rules)
  eval_loss = (make_eval_loss or make_loss)(graphdef)
  eval_param_sh = (step_lib.loss_params(state_shardings)
                   if lora_cfg is not None else state_shardings["params"])
  eval_step = step_lib.build_eval_step(eval_loss, eval_param_sh, batch_sh,
                                       mesh, rules)
  return Plan(mesh=mesh, rules=rules, graphdef=graphdef, init_state=init_state,
              abstract_state=abstract_state, state_shardings=state_shardings,
              batch_shardings=batch_sh, train_step=train_step,
              eval_step=eval_step, schedule=schedule)


def _announce_resume(run_dir: str, checkpointer: Checkpointer,
                     step: int) -> None:
  """One line at default verbosity: where the run resumes and, if newer
  steps were bad, why they were not used."""
  why = "".join(f"; step {q.step} skipped: {q.reason} (moved to "
                f"{q.moved_to})" for q in checkpointer.quarantined_latest)
  print(f"resuming {run_dir} from step {step} (checkpoint "
        f"{os.path.join(checkpointer.dir, str(step))}){why}", file=sys.stderr,
        flush=True)


def build_trainer(
    *,
    run_dir: str,
    checkpoint_cfg: CheckpointConfig,
    resume: bool = True,
    initial_params: Callable[[Plan], Any] | None = None,
    **plan_kwargs: Any,
) -> Trainer:
  """Plans, then creates (or restores) the sharded state.

  plan_kwargs: see `plan_training` (model_cfg, make_loss, optimizer_cfg, mesh,
  rules, example_batch, seed, num_microbatches, loss_scale, init_params,
  make_eval_loss). `init_params` is a traced initializer returning the params
  pytree; default: a fresh model. `initial_params(plan)` instead returns
  concrete params placed in `plan.state_shardings["params"]` (e.g. an earlier
  stage's checkpoint); it is only called when there is nothing to resume.
  """
  plan = plan_training(**plan_kwargs)
  checkpointer = Checkpointer(run_dir, checkpoint_cfg)
  restored_extra = restored_data = None
  latest = checkpointer.latest_step() if resume else None
  if latest is not None:
    _announce_resume(run_dir, checkpointer, latest)
    state, restored_data, restored_extra = checkpointer.restore(
        latest, plan.abstract_state, plan.state_shardings)
  else:
    params = initial_params(plan) if initial_params is not None else None
    with jax.set_mesh(plan.mesh):
      state = plan.init_state(params)
  return Trainer(mesh=plan.mesh, rules=plan.rules, graphdef=plan.graphdef,
                 state=state, state_shardings=plan.state_shardings,
                 abstract_state=plan.abstract_state,
                 train_step=plan.train_step, eval_step=plan.eval_step,
                 batch_shardings=plan.batch_shardings,
                 checkpointer=checkpointer, schedule=plan.schedule,
                 restored_extra=restored_extra,
                 restored_data_state=restored_data)
