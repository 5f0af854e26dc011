"""Fault injection on the one engine: corrupt, truncated and incomplete
checkpoints fall back to the newest intact one; non-finite steps are
skipped, then halt the run; nothing non-finite is saved or reported; a
failed checkpoint write is a clear error that leaves earlier checkpoints
intact."""

from __future__ import annotations

import errno
import json
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lifejax import sharding
from lifejax.data.batching import example_lm_batch
from lifejax.data.jsonl import read_jsonl
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.run.layout import CHECKPOINT_MANIFEST, RunDir
from lifejax.train import integrity, loop, optim, trainer
from lifejax.train.checkpoint import (
    CheckpointConfig, Checkpointer, CheckpointWriteError)
from lifejax.train.metrics import write_summary

B, T, V = 4, 16, 64
NAN_FROM = 10**9  # batches from this index on have a NaN loss weight


class Batches:
  """Batch i depends only on i; from `nan_from` on, its loss mask is NaN."""

  def __init__(self, nan_from: int = NAN_FROM):
    self.i, self.nan_from = 0, nan_from

  def __iter__(self):
    return self

  def __next__(self):
    r = np.random.default_rng(1000 + self.i)
    toks = r.integers(0, V, (B, T + 1)).astype(np.int32)
    mask = np.ones((B, T), np.float32)
    if self.i >= self.nan_from:
      mask[0, 0] = np.nan
    self.i += 1
    return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
            "loss_mask": mask, "segment_ids": np.ones((B, T), np.int32),
            "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}

  def get_state(self):
    return {"i": self.i, "nan_from": self.nan_from}

  def set_state(self, state):
    self.i = state["i"]


@pytest.fixture(scope="module")
def lm():
  """A tiny LM config with N(0, 0.02) params (unit norm gains)."""
  import types
  from flax import nnx
  from lifejax.model import transformer
  from lifejax.model.config import TransformerConfig
  cfg = TransformerConfig(vocab_size=V, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)
  _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (np.ones(x.shape, x.dtype) if path[-1].key == "scale"
                       else (0.02 * rng.standard_normal(x.shape)).astype(
                           x.dtype)), nnx.to_pure_dict(abstract))
  return types.SimpleNamespace(cfg=cfg, params=params)


@pytest.fixture(scope="module")
def mesh(devices):
  return sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, model=1),
                            devices[:2])


def _train(run_dir, lm, mesh, num_steps, nan_from=NAN_FROM, lr=1e-2,
           **loop_kw):
  """Trains (or resumes) the tiny LM; returns (trainer, summary)."""
  t = trainer.build_trainer(
      run_dir=str(run_dir), model_cfg=lm.cfg, make_loss=make_lm_loss_fn,
      optimizer_cfg=optim.OptimizerConfig(learning_rate=lr, warmup_steps=0,
                                          schedule="constant"),
      mesh=mesh, rules=sharding.DEFAULT_RULES,
      example_batch=example_lm_batch(B, T),
      checkpoint_cfg=CheckpointConfig(every_steps=2, keep_last=3,
                                      async_save=False),
      init_params=lambda: lm.params)
  it = Batches(nan_from)
  if t.restored_data_state is not None:
    it.set_state(t.restored_data_state)
  summary = loop.train_loop(
      run_dir=str(run_dir), state=t.state, train_step=t.train_step,
      train_iter=it, batch_shardings=t.batch_shardings,
      checkpointer=t.checkpointer,
      cfg=loop.LoopConfig(num_steps=num_steps, log_every=1, progress=False,
                          tensorboard=False, **loop_kw),
      restored_extra=t.restored_extra)
  t.checkpointer.close()
  return t, summary


def _losses(run_dir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_jsonl(RunDir(str(run_dir)).metrics)
          if "loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, lm, mesh):
  """An uninterrupted 6-step run: its losses and its run directory."""
  run_dir = tmp_path_factory.mktemp("faults") / "full"
  _train(run_dir, lm, mesh, 6)
  return run_dir, _losses(run_dir)


def _largest_file(step_dir: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if f != CHECKPOINT_MANIFEST]
  return max(files, key=os.path.getsize)


def _overwrite(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 3)
    f.write(os.urandom(64))


def _truncate(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _garble_metadata(step_dir):
  with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
    f.write("{not json")


def _empty_checkpoint_metadata(step_dir):
  open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "w").close()


def _unsealed(step_dir):  # a kill between orbax's finalize and the seal
  os.remove(os.path.join(step_dir, CHECKPOINT_MANIFEST))


@pytest.mark.parametrize("damage, reason", [
    (_overwrite, "checksum mismatch"), (_truncate, "bytes"),
    (_garble_metadata, "state/_METADATA"),
    (_empty_checkpoint_metadata, "_CHECKPOINT_METADATA"),
    (_unsealed, "incomplete")])
def test_bad_latest_checkpoint_falls_back_to_newest_intact(
    tmp_path, lm, mesh, reference, damage, reason, capfd):
  import shutil
  full_dir, want = reference
  run_dir = tmp_path / "run"
  shutil.copytree(full_dir, run_dir)
  run = RunDir(str(run_dir))
  assert run.checkpoint_steps() == [2, 4, 6]
  damage(os.path.join(run.checkpoints, "6"))
  os.remove(run.summary)  # as if killed after the last save

  _train(run_dir, lm, mesh, 6)
  err = capfd.readouterr().err
  # One line: which checkpoint was used, and why the newer one was not.
  line = next(x for x in err.splitlines() if x.startswith("resuming"))
  assert f"from step 4 (checkpoint {run.checkpoints}/4)" in line
  assert "step 6 skipped" in line and reason in line
  assert "could not be restored" not in err  # no orbax noise
  # Moved aside with its reason, never deleted.
  moved = os.path.join(run.quarantine_dir(), "6")
  assert os.path.isdir(moved) and reason in open(
      os.path.join(moved, "REASON")).read()
  # The redone steps equal the uninterrupted run's, bitwise.
  got = _losses(run_dir)
  assert [got[s] for s in (5, 6)] == [want[s] for s in (5, 6)]
  assert run.checkpoint_steps() == [2, 4, 6]
  assert integrity.problem(os.path.join(run.checkpoints, "6")) is None


def test_keep_best_drops_a_corrupt_best_step(tmp_path, mesh):
  ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  state = {"step": np.int32(1), "params": {"w": np.ones((4, 2), np.float32)}}
  ck.save_best(1, state, {"eval/loss": 1.0})
  ck.close()
  best_step = os.path.join(RunDir(str(tmp_path)).best, "1")
  _overwrite(best_step)
  ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  assert ck.best_step() is None
  assert [q.step for q in ck.quarantined] == [1]
  ck.close()


def test_non_finite_eval_never_becomes_best(tmp_path):
  ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  state = {"step": np.int32(1), "params": {"w": np.ones((4, 2), np.float32)}}
  ck.save_best(1, state, {"eval/loss": 2.0})
  ck.save_best(2, state, {"eval/loss": float("nan")})
  assert ck.best_step() == 1
  assert RunDir(str(tmp_path)).checkpoint_steps(best=True) == [1]
  ck.close()


def test_non_finite_state_is_never_saved(tmp_path):
  from lifejax.train.checkpoint import NonFiniteStateError
  ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  bad = {"step": np.int32(3),
         "params": {"w": np.array([1.0, np.inf], np.float32)}}
  with pytest.raises(NonFiniteStateError, match="step 3"):
    ck.save(3, bad, force=True)
  assert RunDir(str(tmp_path)).checkpoint_steps() == []
  ck.close()


def test_non_finite_steps_are_skipped_then_the_run_halts(tmp_path, lm, mesh,
                                                         reference):
  full_dir, want = reference
  # Batches 2.. (steps 3..) have a NaN loss: 3 skips in a row halt the run.
  with pytest.raises(loop.NonFiniteHalt) as err:
    _train(tmp_path, lm, mesh, 20, nan_from=2, max_nonfinite_steps=3)
  msg = str(err.value)
  assert "halted at step 5" in msg and "last good checkpoint: step 4" in msg
  rows = {r["step"]: r for r in read_jsonl(RunDir(str(tmp_path)).metrics)
          if "loss" in r}
  assert [rows[s]["skipped"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
  assert [rows[s]["loss"] for s in (1, 2)] == [want[s] for s in (1, 2)]
  assert not os.path.exists(RunDir(str(tmp_path)).summary)
  assert RunDir(str(tmp_path)).checkpoint_steps() == [2, 4]
  # The skips kept the params: checkpoint 4 holds exactly the params after
  # step 2 (the uninterrupted run's checkpoint 2), all finite.

  def params(run_dir, step):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(os.path.join(
        RunDir(str(run_dir)).checkpoints, str(step), "state"))["params"])

  halted, ref = params(tmp_path, 4), params(full_dir, 2)
  assert all(np.isfinite(x).all() for x in halted)
  for a, b in zip(halted, ref):
    np.testing.assert_array_equal(a, b)


def test_isolated_non_finite_step_is_skipped_and_counted(tmp_path, lm, mesh):
  """One NaN batch: skipped, counted in the summary, training goes on."""

  class OneBad(Batches):
    def __next__(self):
      self.nan_from = 2 if self.i == 2 else NAN_FROM
      return super().__next__()

  t = trainer.build_trainer(
      run_dir=str(tmp_path), model_cfg=lm.cfg, make_loss=make_lm_loss_fn,
      optimizer_cfg=optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0,
                                          schedule="constant"),
      mesh=mesh, rules=sharding.DEFAULT_RULES,
      example_batch=example_lm_batch(B, T),
      checkpoint_cfg=CheckpointConfig(every_steps=2, async_save=False),
      init_params=lambda: lm.params)
  summary = loop.train_loop(
      run_dir=str(tmp_path), state=t.state, train_step=t.train_step,
      train_iter=OneBad(), batch_shardings=t.batch_shardings,
      checkpointer=t.checkpointer,
      cfg=loop.LoopConfig(num_steps=5, log_every=1, progress=False,
                          tensorboard=False))
  t.checkpointer.close()
  assert summary["skipped_steps"] == 1 and summary["final_step"] == 5
  on_disk = json.load(open(RunDir(str(tmp_path)).summary))
  assert on_disk["skipped_steps"] == 1
  assert math.isfinite(on_disk["last_train_metrics"]["loss"])


def test_summary_never_holds_nan(tmp_path):
  path = str(tmp_path / "summary.json")
  write_summary(path, {"final_step": 3, "last_train_metrics": {
      "loss": float("nan"), "grad_norm": 1.5}, "eval": {"x": [float("inf")]}})
  text = open(path).read()
  assert "NaN" not in text and "Infinity" not in text
  s = json.loads(text)
  assert s["last_train_metrics"] == {"loss": None, "grad_norm": 1.5}
  assert s["non_finite"] == {"last_train_metrics.loss": "nan",
                             "eval.x[0]": "inf"}


def test_full_disk_on_save_is_a_clear_error_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch):
  """A writer that fails with ENOSPC halfway through a save."""
  ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  state = {"step": np.int32(1), "params": {"w": np.ones((4, 2), np.float32)}}
  ck.save(2, state, force=True)
  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    os.makedirs(os.path.join(str(self.directory),
                             f"{step}.orbax-checkpoint-tmp-1"), exist_ok=True)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(CheckpointWriteError) as err:
    ck.save(4, state, force=True)
  msg = str(err.value)
  assert "checkpoint step 4" in msg and "No space left on device" in msg
  assert "intact checkpoints are steps [2]" in msg
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  ck.close()
  assert integrity.problem(os.path.join(str(tmp_path), "checkpoints",
                                        "2")) is None
  ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  assert ck.latest_step() == 2
  ck.close()
