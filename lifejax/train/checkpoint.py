"""Orbax checkpoints: full train state + data-iterator state + lineage.

Two managers share a run directory:
  checkpoints/  the latest `keep_last` steps (what a restart resumes from);
  best/         the best step(s) by an eval metric (what a release picks).
Saving is asynchronous; `wait()` blocks until writes are durable. Every
finished step is sealed with content checksums (`train.integrity`); a new
Checkpointer verifies the newest step(s) first and moves a corrupt,
truncated or incomplete one aside (`quarantined`), so a restart resumes
from the newest intact step. A state with non-finite params is never
saved, and a non-finite eval metric never makes a step best.

In a multi-process run every process saves (orbax writes each process's
shards; process 0 writes the metadata and finalizes the step) and restores
its own shards. Verifying, quarantining and sealing are the main process's:
a step is sealed only after every process has finished its part of it
(orbax's wait, then a barrier over all processes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lifejax import checks, sharding
from lifejax.run.layout import RunDir
from lifejax.train import integrity
from lifejax.train.state import TrainState, abstract_with_shardings


class NonFiniteStateError(RuntimeError):
  """Raised instead of saving a state whose params are not all finite."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (e.g. the disk is full)."""


@jax.jit
def _params_finite(params: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


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


def _handlers() -> dict[str, Any]:
  """The items of a checkpoint, named up front (orbax then restores them
  without warning that it found items it had no handler for)."""
  return {"state": ocp.StandardCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler(),
          "extra": ocp.JsonCheckpointHandler()}


class Checkpointer:
  """Keep-last-N resume checkpoints plus keep-best-by-metric checkpoints."""

  def __init__(self, run_dir: str, cfg: CheckpointConfig):
    self.cfg = cfg
    run = RunDir(run_dir)
    self.root = run.root
    self.dir = run.checkpoint_dir(best=False)
    self.best_dir = run.checkpoint_dir(best=True)
    # Verified before orbax lists the steps: bad ones are moved aside (by
    # the main process; the others list the steps once it has).
    self.quarantined_latest: list[integrity.Quarantined] = []
    self.quarantined: list[integrity.Quarantined] = []
    if sharding.is_main_process():
      _, self.quarantined_latest = integrity.newest_intact(
          self.dir, run.quarantine_dir(False))
      self.quarantined = (self.quarantined_latest
                          + integrity.quarantine_all_bad(
                              self.best_dir, run.quarantine_dir(True)))
    sharding.sync(f"lifejax checkpoints verified: {self.root}")
    for q in self.quarantined:
      logging.warning("checkpoint step %d is bad (%s); moved aside to %s",
                      q.step, q.reason, q.moved_to)
    self._unsealed: list[str] = []
    self._latest = ocp.CheckpointManager(
        self.dir, item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_last,
            enable_async_checkpointing=cfg.async_save))
    sign = -1.0 if cfg.best_mode == "min" else 1.0
    self._best = ocp.CheckpointManager(
        self.best_dir, item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_best,
            best_fn=lambda m: sign * float(m[cfg.best_metric]),
            best_mode="max",
            keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=cfg.async_save))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def _check_finite(self, step: int, state: TrainState) -> None:
    if not bool(_params_finite(state["params"])):
      raise NonFiniteStateError(
          f"step {step}: the params are not all finite; refusing to save "
          f"them (the newest saved step is {self.latest_step()})")

  def _write_error(self, what: str, e: OSError) -> CheckpointWriteError:
    intact = [s for s in RunDir(self.root).checkpoint_steps()
              if integrity.problem(os.path.join(self.dir, str(s))) is None]
    return CheckpointWriteError(
        f"{what} could not be written under {self.root}: "
        f"{e.strerror or e} (errno {e.errno}); the intact checkpoints are "
        f"steps {intact}, and a restart resumes from the newest of them")

  def _seal(self) -> None:
    """Seals every step this Checkpointer saved that has finished (every
    process's part of it)."""
    try:
      self._latest.wait_until_finished()
      self._best.wait_until_finished()
      if not self._unsealed:
        return
      sharding.sync(f"lifejax checkpoints written: {self._unsealed}")
      for step_dir in self._unsealed if sharding.is_main_process() else ():
        if os.path.isdir(step_dir) and not integrity.is_sealed(step_dir):
          integrity.seal(step_dir)
    except OSError as e:
      raise self._write_error(f"checkpoint(s) {self._unsealed}", e) from e
    self._unsealed = []

  def save(self, step: int, state: TrainState, data_state: dict | None = None,
           extra: dict | None = None, force: bool = False) -> None:
    self._check_finite(step, state)
    self._seal()
    try:
      saved = self._latest.save(step, args=_items(state, data_state, extra),
                                force=force)
    except OSError as e:
      raise self._write_error(f"checkpoint step {step}", e) from e
    if saved:
      self._unsealed.append(os.path.join(self.dir, str(step)))
    if not self.cfg.async_save:
      self._seal()

  def save_best(self, step: int, state: TrainState, metrics: dict[str, float],
                data_state: dict | None = None,
                extra: dict | None = None) -> None:
    if self.cfg.best_metric not in metrics:
      raise KeyError(f"best_metric {self.cfg.best_metric!r} is not among the "
                     f"eval metrics {sorted(metrics)}")
    value = float(metrics[self.cfg.best_metric])
    if not math.isfinite(value):
      logging.warning("step %d: %s is %s; not a candidate for best/", step,
                      self.cfg.best_metric, value)
      return
    self._check_finite(step, state)
    self._seal()
    if self._best.save(step, args=_items(state, data_state, extra),
                       metrics={k: float(v) for k, v in metrics.items()}):
      self._unsealed.append(os.path.join(self.best_dir, str(step)))
    if not self.cfg.async_save:
      self._seal()

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
    """Blocks until every save is durable and sealed."""
    self._seal()

  def close(self) -> None:
    self._seal()
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
  why = integrity.problem(os.path.join(path, str(step)))
  if why is not None:
    raise ValueError(f"checkpoint {os.path.join(path, str(step))} cannot be "
                     f"loaded: {why}")
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
