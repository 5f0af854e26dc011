"""The training loop: steps, async metrics, eval, early stopping, checkpoints.

The loop dispatches step N before it fetches step N-1's metrics, so the host
never waits on the device just to log. A restarted run resumes from the latest
checkpoint (train state and data-iterator state) and reproduces the per-step
losses of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from lifejax import sharding
from lifejax.train.checkpoint import Checkpointer
from lifejax.train.metrics import MetricsWriter, plot_curves, progress_desc
from lifejax.train.state import TrainState
from lifejax.train.step import loss_params


class DataIterator(Protocol):
  """A batch iterator whose position can be saved (grain's iterators are)."""

  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


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


Hook = Callable[[int, dict[str, float]], None]
# An evaluator computes extra eval metrics from the state (e.g. generation
# accuracy judged by a program); it returns {"eval/<name>": value, ...}.
Evaluator = Callable[[TrainState, int], dict[str, float]]
EvalSets = Callable[[], Iterator[dict]] | Mapping[str, Callable[[], Iterator[dict]]]


def evaluate(eval_step: Callable[..., dict], params: Any,
             eval_batches: Iterator[dict], batch_shardings: Any,
             max_batches: int = 0) -> dict[str, float]:
  """Token-weighted held-out loss and perplexity over the eval batches."""
  totals: dict[str, float] = {}
  n = 0
  for batch in eval_batches:
    out = eval_step(params, sharding.put(batch, batch_shardings))
    for k, v in jax.device_get(out).items():
      totals[k] = totals.get(k, 0.0) + float(v)
    n += 1
    if max_batches and n >= max_batches:
      break
  if not n:
    raise ValueError("the eval set produced no batches")
  w = max(totals.pop("weight"), 1e-8)
  res = {f"eval/{k}": v / w for k, v in totals.items()}
  res["eval/perplexity"] = math.exp(min(res["eval/loss"], 50.0))
  res["eval/tokens"] = w
  return res


def run_evals(eval_step: Callable[..., dict] | None, state: TrainState,
              eval_sets: EvalSets | None, evaluators: Sequence[Evaluator],
              batch_shardings: Any, max_batches: int, step: int
              ) -> dict[str, float]:
  """All eval metrics at `step`: loss/perplexity per eval set + evaluators.

  A single eval set reports `eval/loss`, ...; named sets report
  `eval/<name>/loss`, ...
  """
  out: dict[str, float] = {}
  if eval_step is not None and eval_sets is not None:
    named = (eval_sets if isinstance(eval_sets, Mapping)
             else {"": eval_sets})
    for name, batches in named.items():
      m = evaluate(eval_step, loss_params(state), batches(), batch_shardings,
                   max_batches)
      if name:
        m = {f"eval/{name}/{k[len('eval/'):]}": v for k, v in m.items()}
      out.update(m)
  for ev in evaluators:
    out.update(ev(state, step))
  return out


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
) -> dict[str, Any]:
  """Runs steps state["step"]..cfg.num_steps; returns a summary dict."""
  writer = MetricsWriter(run_dir)
  stopper = _EarlyStopper(cfg)
  if restored_extra and "early_stop" in restored_extra:
    stopper.load(restored_extra["early_stop"])
  start = int(jax.device_get(state["step"]))
  bar = None
  if cfg.progress and start < cfg.num_steps:
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.num_steps, initial=start, desc=progress_desc("train"),
               dynamic_ncols=True, mininterval=1.0)

  pending: tuple[int, dict] | None = None
  last_logged: dict[str, float] = {}
  t_last, tok_since = time.perf_counter(), 0
  stopped_early = False
  eval_metrics: dict[str, float] = {}

  def flush(step_and_metrics: tuple[int, dict]) -> None:
    nonlocal last_logged, t_last, tok_since
    step, dev_metrics = step_and_metrics
    host = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    if not math.isfinite(host["loss"]):
      logging.warning("step %d: non-finite loss %s", step, host["loss"])
    for hook in hooks:
      hook(step, host)
    if step % cfg.log_every == 0 or step == cfg.num_steps:
      now = time.perf_counter()
      host["tokens_per_sec"] = tok_since / max(now - t_last, 1e-9)
      t_last, tok_since = now, 0
      writer.write(step, host)
      last_logged = host
      if bar is not None:
        bar.set_postfix(loss=f"{host['loss']:.4f}",
                        tok_s=f"{host['tokens_per_sec']:.0f}")

  def extra() -> dict:
    return {"early_stop": stopper.state()}

  has_evals = (eval_step is not None and eval_batches is not None) or bool(
      evaluators)
  if has_evals and cfg.eval_at_start and start == 0:
    eval_metrics = run_evals(eval_step, state, eval_batches, evaluators,
                             batch_shardings, cfg.eval_batches, 0)
    for h in eval_hooks:
      eval_metrics.update(h(0, eval_metrics))
    writer.write(0, eval_metrics)

  step = start
  while step < cfg.num_steps:
    batch = next(train_iter)
    state, metrics = train_step(state, sharding.put(batch, batch_shardings))
    step += 1
    tok_since += tokens_per_step
    if pending is not None:
      flush(pending)  # step N-1's metrics, fetched after step N is dispatched
    pending = (step, metrics)
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
  checkpointer.wait()
  if bar is not None:
    bar.close()
  writer.close()
  summary = {"final_step": step, "stopped_early": stopped_early,
             "last_train_metrics": last_logged, "eval": eval_metrics,
             "best_step": checkpointer.best_step()}
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plot_curves(os.path.join(run_dir, "metrics.jsonl"),
              os.path.join(run_dir, "loss_curve.png"))
  return summary
