"""The one training engine: plan -> init or restore -> data -> loop -> state.

Every stage trains through `fit`, RL included: a stage brings its params
(one model, or a tree such as an RL policy and critic), its loss, a data
source and its evals; `fit` plans shardings from abstract shapes, creates
or restores the sharded state, restores the source's position, runs the
loop (logging, evals, keep-best, early stopping, checkpoints) and hands
back the summary and the final state. So loss scaling, LoRA, gradient
accumulation, keep-best, early stopping and resume behave the same in
every stage.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from lifejax.run.layout import RunDir
from lifejax.train import loop as loop_lib, trainer as trainer_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.state import TrainState


@dataclasses.dataclass
class Evals:
  """What a stage evaluates at each eval step (see `loop.train_loop`):
  held-out loss sets, evaluators computed from the state, and hooks that
  see every eval metric of a step (e.g. the forgetting panel)."""

  sets: loop_lib.EvalSets | None = None
  evaluators: Sequence[loop_lib.Evaluator] = ()
  hooks: Sequence[Callable[[int, dict], dict]] = ()


@dataclasses.dataclass
class FitResult:
  summary: dict[str, Any]
  state: TrainState
  trainer: trainer_lib.Trainer


def finished_step(run_dir: str) -> int | None:
  """The step a run finished at: its summary.json's final_step when that is
  also its newest checkpoint (None: not finished, or never run)."""
  run = RunDir(run_dir)
  if not os.path.exists(run.summary):
    return None
  try:
    with open(run.summary, encoding="utf-8") as f:
      final = json.load(f).get("final_step")
  except (OSError, ValueError):
    return None
  steps = run.checkpoint_steps()
  return final if steps and isinstance(final, int) and final == steps[-1] \
      else None


def fit(
    *,
    run_dir: str,
    loop_cfg: loop_lib.LoopConfig,
    checkpoint_cfg: CheckpointConfig,
    make_data: Callable[[trainer_lib.Trainer], Any],
    make_evals: Callable[[trainer_lib.Trainer], Evals] | None = None,
    initial_params: Callable[[trainer_lib.Plan], Any] | None = None,
    tokens_per_step: int = 0,
    **plan_kwargs: Any,
) -> FitResult:
  """Trains into `run_dir`, resuming its latest checkpoint if there is one.

  plan_kwargs: see `trainer.plan_training` (model_cfg, make_loss,
  optimizer_cfg, mesh, rules, example_batch, seed, num_microbatches,
  loss_scale, lora_cfg, model_cls, params_tree, init_params,
  make_eval_loss). `initial_params(plan)` gives the starting params when
  there is nothing to resume (default: a fresh model). `make_data(trainer)`
  builds the data source (a `loop.DataIterator`); its saved position is
  restored here. `make_evals(trainer)` builds the evals.
  """
  trainer = trainer_lib.build_trainer(
      run_dir=run_dir, checkpoint_cfg=checkpoint_cfg,
      initial_params=initial_params, **plan_kwargs)
  data = make_data(trainer)
  if trainer.restored_data_state is not None:
    data.set_state(trainer.restored_data_state)
  evals = make_evals(trainer) if make_evals is not None else Evals()
  final: dict[str, TrainState] = {}
  summary = loop_lib.train_loop(
      run_dir=run_dir, state=trainer.state, train_step=trainer.train_step,
      train_iter=data, batch_shardings=trainer.batch_shardings,
      checkpointer=trainer.checkpointer, cfg=loop_cfg,
      eval_step=trainer.eval_step,
      eval_batches=evals.sets, evaluators=evals.evaluators,
      eval_hooks=evals.hooks, tokens_per_step=tokens_per_step,
      restored_extra=trainer.restored_extra,
      on_end=lambda state, _: final.update(state=state))
  trainer.checkpointer.close()
  return FitResult(summary=summary, state=final["state"], trainer=trainer)
