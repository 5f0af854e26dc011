"""Orbax checkpoints: full train state + data-iterator state + lineage.

Two managers share a run directory:
  checkpoints/  the latest `keep_last` steps (what a restart resumes from);
  best/         the best step(s) by an eval metric (what a release picks).
Saving is asynchronous; `wait()` blocks until writes are durable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import orbax.checkpoint as ocp

from lifejax import checks
from lifejax.run.layout import RunDir
from lifejax.train.state import TrainState, abstract_with_shardings


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 100
  keep_last: int = 2
  keep_best: int = 1
  best_metric: str = "eval/loss"
  best_mode: str = "min"
  async_save: bool = True

  def __post_init__(self):
    checks.at_least("CheckpointConfig.every_steps", self.every_steps, 1)
    checks.at_least("CheckpointConfig.keep_last", self.keep_last, 1)
    checks.at_least("CheckpointConfig.keep_best", self.keep_best, 1)
    checks.choice("CheckpointConfig.best_mode", self.best_mode,
                  ("min", "max"))


def _items(state: TrainState, data_state: dict | None,
           extra: dict | None) -> ocp.args.Composite:
  items = {"state": ocp.args.StandardSave(state)}
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(data_state)
  if extra is not None:
    items["extra"] = ocp.args.JsonSave(extra)
  return ocp.args.Composite(**items)


class Checkpointer:
  """Keep-last-N resume checkpoints plus keep-best-by-metric checkpoints."""

  def __init__(self, run_dir: str, cfg: CheckpointConfig):
    self.cfg = cfg
    self.dir = RunDir(run_dir).checkpoint_dir(best=False)
    self.best_dir = RunDir(run_dir).checkpoint_dir(best=True)
    self._latest = ocp.CheckpointManager(
        self.dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_last,
            enable_async_checkpointing=cfg.async_save))
    sign = -1.0 if cfg.best_mode == "min" else 1.0
    self._best = ocp.CheckpointManager(
        self.best_dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_best,
            best_fn=lambda m: sign * float(m[cfg.best_metric]),
            best_mode="max",
            keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=cfg.async_save))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state: TrainState, data_state: dict | None = None,
           extra: dict | None = None, force: bool = False) -> None:
    self._latest.save(step, args=_items(state, data_state, extra), force=force)

  def save_best(self, step: int, state: TrainState, metrics: dict[str, float],
                data_state: dict | None = None,
                extra: dict | None = None) -> None:
    if self.cfg.best_metric not in metrics:
      raise KeyError(f"best_metric {self.cfg.best_metric!r} is not among the "
                     f"eval metrics {sorted(metrics)}")
    self._best.save(step, args=_items(state, data_state, extra),
                    metrics={k: float(v) for k, v in metrics.items()})

  def best_step(self) -> int | None:
    return self._best.best_step()

  def restore(self, step: int, abstract_state: TrainState,
              state_shardings: TrainState, best: bool = False
              ) -> tuple[TrainState, dict | None, dict | None]:
    """Restores (state placed in `state_shardings`, data_state, extra)."""
    mngr = self._best if best else self._latest
    target = abstract_with_shardings(state_shardings, abstract_state)
    present = set(mngr.item_metadata(step).keys()) if hasattr(
        mngr, "item_metadata") else {"state"}
    items = {"state": ocp.args.StandardRestore(target)}
    for name in ("data", "extra"):
      if name in present:
        items[name] = ocp.args.JsonRestore()
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return (out["state"], out.get("data") if "data" in present else None,
            out.get("extra") if "extra" in present else None)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def restore_params(run_dir: str, abstract_params: Any, param_shardings: Any,
                   step: int | None = None, best: bool = False) -> Any:
  """Loads only the params of a run (e.g. SFT starting from pretraining)."""
  path = RunDir(run_dir).checkpoint_dir(best)
  mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
      read_only=True))
  step = step if step is not None else (
      mngr.best_step() if best else mngr.latest_step())
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {path}")
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_params, param_shardings)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": target},
          restore_args=jax.tree.map(
              lambda s: ocp.ArrayRestoreArgs(sharding=s),
              {"params": param_shardings}),
          partial_restore=True)))
  return restored["state"]["params"]
