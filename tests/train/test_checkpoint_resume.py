"""Checkpoint retention (keep-last, keep-best), restore into shardings, and a
killed-and-restarted run that reproduces an uninterrupted one."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl
from lifejax.run.layout import RunDir
from lifejax.train import integrity
from lifejax.train.checkpoint import Checkpointer, CheckpointConfig

REPO = pathlib.Path(__file__).resolve().parents[2]


def _state(step: int, mesh) -> dict:
  """A small train-state-like pytree whose values identify its step."""
  w = NamedSharding(mesh, P("fsdp", None))
  r = NamedSharding(mesh, P())
  return {"step": jax.device_put(jnp.int32(step), r),
          "params": {"w": jax.device_put(
              jnp.arange(8.0).reshape(4, 2) + 100 * step, w)}}


@pytest.fixture(scope="module")
def mesh(devices):
  return sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, model=1),
                            devices[:2])


def test_keep_last_keeps_only_newest(tmp_path, mesh):
  ck = Checkpointer(str(tmp_path), CheckpointConfig(keep_last=2,
                                                    async_save=False))
  for step in range(1, 6):
    ck.save(step, _state(step, mesh), data_state={"i": step},
            extra={"note": f"s{step}"})
  ck.wait()
  assert RunDir(tmp_path).checkpoint_steps() == [4, 5]
  assert ck.latest_step() == 5
  target = _state(0, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  abstract = jax.eval_shape(lambda s: s, target)
  state, data, extra = ck.restore(4, abstract, shardings)
  ck.close()
  assert data == {"i": 4} and extra == {"note": "s4"}
  assert int(state["step"]) == 4
  np.testing.assert_array_equal(state["params"]["w"],
                                np.arange(8.0).reshape(4, 2) + 400)
  assert state["params"]["w"].sharding == shardings["params"]["w"]


@pytest.mark.parametrize("mode, best", [("min", 2), ("max", 1)])
def test_keep_best_by_eval_metric(tmp_path, mesh, mode: str, best: int):
  ck = Checkpointer(str(tmp_path), CheckpointConfig(
      keep_best=1, best_mode=mode, async_save=False))
  for step, loss in zip((1, 2, 3), (3.0, 1.0, 2.0)):
    ck.save_best(step, _state(step, mesh), {"eval/loss": loss,
                                            "eval/accuracy": 0.5})
  ck.wait()
  assert ck.best_step() == best
  assert RunDir(tmp_path).checkpoint_steps(best=True) == [best]
  target = _state(0, mesh)
  state, _, _ = ck.restore(best, jax.eval_shape(lambda s: s, target),
                           jax.tree.map(lambda x: x.sharding, target),
                           best=True)
  assert int(state["step"]) == best
  with pytest.raises(KeyError, match="eval/loss"):
    ck.save_best(4, _state(4, mesh), {"eval/accuracy": 0.7})
  ck.close()


# -- kill and resume -----------------------------------------------------------

_SCRIPT = textwrap.dedent('''
    """Trains a tiny LM; exits hard (no cleanup) when a hook sees step KILL."""
    import json, os, signal, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from flax import nnx
    from lifejax import sharding
    from lifejax.losses.lm import make_lm_loss_fn
    from lifejax.model import transformer
    from lifejax.data.batching import example_lm_batch
    from lifejax.model.config import TransformerConfig
    from lifejax.train import loop, optim, trainer
    from lifejax.train.checkpoint import CheckpointConfig

    run_dir, num_steps, kill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # The three runs compile the same step: share it through a disk cache.
    jax.config.update("jax_compilation_cache_dir", sys.argv[4])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    B, T, V = 8, 16, 128

    class Batches:
      """Batch i depends only on i: a seekable, deterministic stream."""

      def __init__(self):
        self.i = 0

      def __iter__(self):
        return self

      def __next__(self):
        r = np.random.default_rng(1000 + self.i)
        self.i += 1
        toks = r.integers(0, V, (B, T + 1)).astype(np.int32)
        return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
                "loss_mask": (r.random((B, T)) < 0.9).astype(np.float32),
                "segment_ids": np.ones((B, T), np.int32),
                "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}

      def get_state(self):
        return {"i": self.i}

      def set_state(self, state):
        self.i = state["i"]

    cfg = TransformerConfig(vocab_size=V, d_model=32, num_layers=2,
                            num_heads=4, num_kv_heads=2, mlp_dim=64)

    # A host-side init closed over by `init_params`: compiling the model's
    # RNG init would cost more than the rest of this run, and init is not
    # what this test is about.
    _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
    rng = np.random.default_rng(0)
    host_params = jax.tree.map(
        lambda x: np.asarray(0.02 * rng.standard_normal(x.shape), x.dtype),
        nnx.to_pure_dict(abstract))

    t = trainer.build_trainer(
        run_dir=run_dir, model_cfg=cfg, make_loss=make_lm_loss_fn,
        optimizer_cfg=optim.OptimizerConfig(learning_rate=1e-2,
                                            warmup_steps=2, total_steps=8),
        mesh=sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, model=1)),
        rules=sharding.DEFAULT_RULES,
        example_batch=example_lm_batch(B, T),
        checkpoint_cfg=CheckpointConfig(every_steps=2, keep_last=2),
        init_params=lambda: host_params)
    it = Batches()
    if t.restored_data_state is not None:
      it.set_state(t.restored_data_state)
    print(json.dumps({"start": int(t.state["step"]),
                      "data": it.get_state()}), flush=True)

    def die(step, metrics):
      if step == kill:  # kill -9: no cleanup, no flush, no atexit
        os.kill(os.getpid(), signal.SIGKILL)

    loop.train_loop(
        run_dir=run_dir, state=t.state, train_step=t.train_step,
        train_iter=it, batch_shardings=t.batch_shardings,
        checkpointer=t.checkpointer,
        cfg=loop.LoopConfig(num_steps=num_steps, log_every=1, progress=False),
        hooks=(die,), restored_extra=t.restored_extra)
''')


def _losses(run_dir: pathlib.Path) -> dict[int, float]:
  """Train loss per step from metrics.jsonl; a re-run step keeps its last."""
  out = {}
  for row in read_jsonl(RunDir(run_dir).metrics):
    if "loss" in row:
      out[row["step"]] = row["loss"]
  return out


def _launch(script: pathlib.Path, run_dir: pathlib.Path, num_steps: int,
            kill: int) -> subprocess.Popen:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  cache = script.parent / "jax_cache"
  log = open(f"{run_dir}.{kill}.log", "a")  # files, not pipes: never block
  proc = subprocess.Popen(
      [sys.executable, str(script), str(run_dir), str(num_steps), str(kill),
       str(cache)],
      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log_path = log.name
  log.close()
  return proc


def _finish(proc: subprocess.Popen, want_rc: int) -> dict:
  try:
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  out = pathlib.Path(proc.log_path).read_text()
  assert proc.returncode == want_rc, f"rc={proc.returncode}\n{out[-3000:]}"
  # The first JSON line the script printed (stderr noise may surround it).
  return next(json.loads(x) for x in out.splitlines() if x.startswith("{"))


def test_run_killed_at_random_points_resumes_with_identical_losses(tmp_path):
  """kill -9 at 5 seeded random points, resuming after each: every step's
  loss equals the uninterrupted run's, bitwise. A kill at an odd step lands
  while the previous (even) step's asynchronous save is in flight; one at
  an even step lands just before that step's save."""
  n = 14
  script = tmp_path / "train.py"
  script.write_text(_SCRIPT)
  full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
  full = _launch(script, full_dir, n, kill=-1)
  rng = np.random.default_rng(0)
  start, kills = 0, []
  for _ in range(5):
    kill = start + int(rng.integers(1, 4))
    kills.append(kill)
    proc = _launch(script, killed_dir, n, kill=kill)
    got = _finish(proc, want_rc=-signal.SIGKILL)
    # Resumed from the newest complete (sealed) checkpoint, with the data
    # stream at the matching position.
    assert got == {"start": start, "data": {"i": start}}, (kills, got)
    run = RunDir(killed_dir)
    sealed = [s for s in run.checkpoint_steps()
              if integrity.is_sealed(os.path.join(run.checkpoints, str(s)))]
    start = max(sealed, default=0)
  assert any(k % 2 for k in kills), kills  # at least one kill mid-save
  last = _finish(_launch(script, killed_dir, n, kill=-1), want_rc=0)
  assert last["start"] == start
  _finish(full, want_rc=0)
  want, got = _losses(full_dir), _losses(killed_dir)
  assert sorted(want) == sorted(got) == list(range(1, n + 1))
  assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
  # Steps were really redone after kills (logged more than once).
  rows = read_jsonl(RunDir(killed_dir).metrics)
  assert len(rows) > n


def test_checkpoint_best_mode_must_be_min_or_max():
  """Any value but "min" used to count as "max"."""
  with pytest.raises(ValueError, match="CheckpointConfig.best_mode='mn'"):
    CheckpointConfig(best_mode="mn")
