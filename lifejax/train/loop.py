"""The training loop: steps, async metrics, eval, early stopping, checkpoints.

The loop dispatches step N before it fetches step N-1's metrics, so the host
never waits on the device just to log. A restarted run resumes from the latest
checkpoint (train state and data-iterator state) and reproduces the per-step
losses of an uninterrupted run.

In a multi-process run every process runs this loop on the same global
batches (`sharding.put` places each process's rows) and makes the same
decisions from the same fetched metrics; only the main process writes
metrics.jsonl, TensorBoard events, the summary and the plots, and shows
the progress bar.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from lifejax import checks, sharding
from lifejax.run.layout import RunDir
from lifejax.train.checkpoint import Checkpointer
from lifejax.train.evaluate import EvalSets, Evaluator, run_evals
from lifejax.train.metrics import (
    MetricsWriter, plot_curves, progress_desc, write_summary)
from lifejax.train.state import TrainState


class DataIterator(Protocol):
  """A batch iterator whose position can be saved (grain's iterators are).

  A source whose batches depend on the model being trained (an RL stage's
  rollouts) defines `next_batch(state)` instead of `__next__`, and may define
  `pop_metrics()`: metrics about the batch it just made (e.g. the rollout's
  reward), logged in the row of the step that consumed it.
  """

  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


def next_batch(train_iter: Any, state: TrainState) -> dict[str, np.ndarray]:
  pull = getattr(train_iter, "next_batch", None)
  return pull(state) if pull is not None else next(train_iter)


def _merge(update: dict[str, float], source: dict[str, float]
           ) -> dict[str, float]:
  """Source metrics keep their names; a step metric whose name they
  already use gets an "update/" prefix."""
  out = dict(source)
  for k, v in update.items():
    out[f"update/{k}" if k in source else k] = v
  return out


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  num_steps: int = 1000
  log_every: int = 10
  eval_every: int = 0          # 0: only at the end
  eval_batches: int = 0        # 0: the whole eval set
  early_stop_patience: int = 0  # evals without improvement; 0 disables
  early_stop_metric: str = "eval/loss"
  early_stop_mode: str = "min"
  early_stop_min_delta: float = 0.0
  eval_at_start: bool = False  # a step-0 baseline (e.g. a forgetting panel)
  progress: bool = True
  tensorboard: bool = True
  # Consecutive skipped (non-finite) steps before the run halts; 0: never.
  max_nonfinite_steps: int = 10
  # Train a finished run on to num_steps (else a rerun only reports it).
  extend: bool = False

  def __post_init__(self):
    checks.at_least("LoopConfig.num_steps", self.num_steps, 0)
    checks.at_least("LoopConfig.log_every", self.log_every, 1)
    checks.at_least("LoopConfig.eval_every", self.eval_every, 0)
    checks.at_least("LoopConfig.eval_batches", self.eval_batches, 0)
    checks.at_least("LoopConfig.early_stop_patience",
                    self.early_stop_patience, 0)
    checks.choice("LoopConfig.early_stop_mode", self.early_stop_mode,
                  ("min", "max"))
    checks.at_least("LoopConfig.early_stop_min_delta",
                    self.early_stop_min_delta, 0.0)
    checks.at_least("LoopConfig.max_nonfinite_steps",
                    self.max_nonfinite_steps, 0)


_STARTED = {"steps": False}


def training_started() -> bool:
  """Whether a train loop of this process has dispatched a step (errors
  before that are the configuration's or the input's)."""
  return _STARTED["steps"]


class NonFiniteHalt(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


Hook = Callable[[int, dict[str, float]], None]


class _EarlyStopper:

  def __init__(self, cfg: LoopConfig):
    self.cfg = cfg
    self.best = math.inf if cfg.early_stop_mode == "min" else -math.inf
    self.bad = 0

  def update(self, value: float) -> bool:
    """Records an eval value; True when training should stop."""
    d = self.cfg.early_stop_min_delta
    better = (value < self.best - d if self.cfg.early_stop_mode == "min"
              else value > self.best + d)
    if better:
      self.best, self.bad = value, 0
    else:
      self.bad += 1
    return bool(self.cfg.early_stop_patience
                and self.bad >= self.cfg.early_stop_patience)

  def state(self) -> dict:
    return {"best": self.best, "bad": self.bad}

  def load(self, s: dict) -> None:
    self.best, self.bad = float(s["best"]), int(s["bad"])


class _NoMetrics:
  """The metrics writer of a process other than the main one."""

  def write(self, step: int, metrics: dict[str, float]) -> None:
    del step, metrics

  def close(self) -> None:
    pass


def _last_checkpoint(checkpointer: Checkpointer) -> str:
  step = checkpointer.latest_step()
  return ("none" if step is None
          else f"step {step} ({os.path.join(checkpointer.dir, str(step))})")


def train_loop(
    *,
    run_dir: str,
    state: TrainState,
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]],
    train_iter: DataIterator,
    batch_shardings: Any,
    checkpointer: Checkpointer,
    cfg: LoopConfig,
    eval_step: Callable[..., dict] | None = None,
    eval_batches: EvalSets | None = None,
    evaluators: Sequence[Evaluator] = (),
    eval_hooks: Sequence[Callable[[int, dict], dict]] = (),
    tokens_per_step: int = 0,
    hooks: tuple[Hook, ...] = (),
    restored_extra: dict | None = None,
    on_end: Callable[[TrainState, int], None] | None = None,
) -> dict[str, Any]:
  """Runs steps state["step"]..cfg.num_steps; returns a summary dict.

  A logged row holds the mean of each step metric over the steps since the
  previous row, beside the latest metrics the data source reported.
  `on_end(state, step)` sees the final state before the run closes (e.g. to
  export a policy).
  """
  has_evals = (eval_step is not None and eval_batches is not None) or bool(
      evaluators)
  if not has_evals:
    for name in ("eval_every", "eval_at_start", "early_stop_patience"):
      if getattr(cfg, name):
        raise checks.unused(f"LoopConfig.{name}",
                            "this run has no eval set and no evaluator")
  main = sharding.is_main_process()
  writer = (MetricsWriter(run_dir, tensorboard=cfg.tensorboard) if main
            else _NoMetrics())
  stopper = _EarlyStopper(cfg)
  if restored_extra and "early_stop" in restored_extra:
    stopper.load(restored_extra["early_stop"])
  start = int(sharding.fetch(state["step"]))
  bar = None
  if cfg.progress and main and start < cfg.num_steps:
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.num_steps, initial=start, desc=progress_desc("train"),
               dynamic_ncols=True, mininterval=1.0)

  pending: tuple[int, dict, dict] | None = None
  window: dict[str, float] = {}
  window_steps = 0
  source_metrics: dict[str, float] = {}
  pop_metrics = getattr(train_iter, "pop_metrics", dict)
  last_logged: dict[str, float] = {}
  t_last, tok_since = time.perf_counter(), 0
  stopped_early = False
  eval_metrics: dict[str, float] = {}
  skips = {"total": 0, "run": 0}

  def flush(pending_step: tuple[int, dict, dict]) -> None:
    nonlocal last_logged, t_last, tok_since, window, window_steps
    nonlocal source_metrics
    step, dev_metrics, from_source = pending_step
    host = {k: float(v) for k, v in sharding.fetch(dev_metrics).items()}
    if host.get("skipped"):
      skips["total"] += 1
      skips["run"] += 1
      logging.warning("step %d: non-finite loss %s or gradient; update "
                      "skipped (%d in a row)", step, host["loss"],
                      skips["run"])
    else:
      skips["run"] = 0
    halt = bool(cfg.max_nonfinite_steps
                and skips["run"] >= cfg.max_nonfinite_steps)
    for hook in hooks:
      hook(step, host)
    for k, v in host.items():
      window[k] = window.get(k, 0.0) + v
    window_steps += 1
    source_metrics.update(from_source)
    if step % cfg.log_every == 0 or step == cfg.num_steps or halt:
      row = _merge({k: v / window_steps for k, v in window.items()},
                   source_metrics)
      window, window_steps, source_metrics = {}, 0, {}
      now = time.perf_counter()
      row["tokens_per_sec"] = tok_since / max(now - t_last, 1e-9)
      t_last, tok_since = now, 0
      writer.write(step, row)
      last_logged = row
      if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.4f}",
                        tok_s=f"{row['tokens_per_sec']:.0f}")
    if halt:
      writer.close()
      checkpointer.wait()
      raise NonFiniteHalt(
          f"halted at step {step}: {skips['run']} consecutive steps with a "
          f"non-finite loss or gradient (LoopConfig.max_nonfinite_steps="
          f"{cfg.max_nonfinite_steps}); last good checkpoint: "
          f"{_last_checkpoint(checkpointer)}")

  def extra() -> dict:
    return {"early_stop": stopper.state()}

  if has_evals and cfg.eval_at_start and start == 0:
    eval_metrics = run_evals(eval_step, state, eval_batches, evaluators,
                             batch_shardings, cfg.eval_batches, 0)
    for h in eval_hooks:
      eval_metrics.update(h(0, eval_metrics))
    writer.write(0, eval_metrics)

  step = start
  while step < cfg.num_steps:
    batch = next_batch(train_iter, state)
    from_source = pop_metrics()
    _STARTED["steps"] = True
    state, metrics = train_step(state, sharding.put(batch, batch_shardings))
    step += 1
    tok_since += tokens_per_step
    if pending is not None:
      flush(pending)  # step N-1's metrics, fetched after step N is dispatched
    pending = (step, metrics, from_source)
    if bar is not None:
      bar.update(1)

    do_eval = has_evals and (
        (cfg.eval_every and step % cfg.eval_every == 0)
        or step == cfg.num_steps)
    if step % checkpointer.cfg.every_steps == 0 or do_eval:
      flush(pending)
      pending = None
    if do_eval:
      eval_metrics = run_evals(eval_step, state, eval_batches, evaluators,
                               batch_shardings, cfg.eval_batches, step)
      for h in eval_hooks:  # hooks see every eval metric of this step
        eval_metrics.update(h(step, eval_metrics))
      writer.write(step, eval_metrics)
      if bar is not None:
        bar.write(f"step {step}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in eval_metrics.items()))
      if cfg.early_stop_metric not in eval_metrics:
        raise KeyError(
            f"LoopConfig.early_stop_metric={cfg.early_stop_metric!r} is not "
            f"among this run's eval metrics {sorted(eval_metrics)}")
      stop = stopper.update(eval_metrics[cfg.early_stop_metric])
      checkpointer.save_best(step, state, eval_metrics,
                             data_state=train_iter.get_state(), extra=extra())
      if stop:
        stopped_early = True
        logging.info("early stop at step %d: %s did not improve for %d "
                     "evals", step, cfg.early_stop_metric, stopper.bad)
    if step % checkpointer.cfg.every_steps == 0 or stopped_early or (
        step == cfg.num_steps):
      checkpointer.save(step, state, data_state=train_iter.get_state(),
                        extra=extra(), force=True)
    if stopped_early:
      break

  if pending is not None:
    flush(pending)
  if on_end is not None:
    on_end(state, step)
  checkpointer.wait()
  if bar is not None:
    bar.close()
  writer.close()
  summary = {"final_step": step, "stopped_early": stopped_early,
             "last_train_metrics": last_logged, "eval": eval_metrics,
             "best_step": checkpointer.best_step(),
             "skipped_steps": skips["total"]}
  if main:
    write_summary(RunDir(run_dir).summary, summary)
    plot_curves(RunDir(run_dir).metrics, RunDir(run_dir).loss_curve)
  return summary
