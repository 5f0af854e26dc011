"""kill -9 at seeded random points of real stage runs (pretrain, SFT, PPO),
each resumed: every step's loss equals an uninterrupted run's, bitwise.

Each launch is its own process (`kill_driver.py`) running the golden stage
configuration (PPO lengthened to 4 iterations). An uninterrupted launch
comes first: it fills the shared compile cache, it must equal the golden
run (for PPO it is the reference), and it gives the time scale: its
seconds per train row, from its first row to its exit, so saves, evals and
the final export count. Each later launch is killed (SIGKILL) a random
delay of up to 2 such rows after it logged a random number (at least one)
of new train rows: the kill lands in a step, an eval, a rollout, a
checkpoint save or the final export, on a fast machine as on a slow one.
The next launch resumes from the newest sealed checkpoint; saves are
asynchronous, so a kill can land while one is in flight. When a run
finishes before its kill, the test goes on killing a fresh run, until 3
kills have landed; then, until a kill has landed in a launch that had
resumed, it kills launches as soon as they seal a checkpoint. Every loss
any launch logged, and the whole completed last run, equal the
reference's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lifejax.data.jsonl import read_jsonl
from lifejax.run.layout import RunDir
from lifejax.train import integrity

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KILLS = 3
# stage: (seed, RL iterations)
SETUP = {"pretrain": (0, None), "sft": (1, None), "ppo": (2, 4)}


def _train_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  return [r for r in read_jsonl(path) if "loss" in r]


class Launcher:

  def __init__(self, stage, root, tmp_path):
    self.stage, self.root = stage, root
    # The session's compile cache (tests/conftest.py), which already holds
    # the golden runs' programs.
    self.cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        tmp_path / "jax_cache")
    self.log_path = str(tmp_path / "log.txt")
    self.iterations = SETUP[stage][1]

  def start(self, run_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    args = [sys.executable, os.path.join(HERE, "kill_driver.py"), self.stage,
            self.root, run_dir, self.cache]
    if self.iterations:
      args.append(str(self.iterations))
    with open(self.log_path, "ab") as log:
      return subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)

  def finish(self, run_dir) -> float:
    """Runs to the end; returns the seconds per train row from its first
    row to its exit (steps, evals, saves and the final export spread over
    the rows): the time scale of the kills."""
    proc = self.start(run_dir)
    metrics, first = RunDir(run_dir).metrics, None
    while proc.poll() is None:
      if first is None and len(_train_rows(metrics)) > 0:
        first = time.monotonic()
      time.sleep(0.01)
    end = time.monotonic()
    rc = proc.wait(timeout=300)
    assert rc == 0, open(self.log_path, errors="replace").read()[-3000:]
    return (end - (first or end)) / max(len(_train_rows(metrics)), 1)


def _kill_when(proc, trigger, delay, timeout=300):
  """SIGKILLs `proc` `delay` s after `trigger()` first holds; returns its
  exit code (it may have finished first)."""
  t0 = time.monotonic()
  while proc.poll() is None and time.monotonic() - t0 < timeout:
    if trigger():
      time.sleep(delay)
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  return proc.wait(timeout=timeout)


def _sealed_start(run: RunDir) -> int:
  return max((s for s in run.checkpoint_steps()
              if integrity.is_sealed(os.path.join(run.checkpoints, str(s)))),
             default=0)


def _losses(run_dir: str) -> dict[int, float]:
  """The last logged train loss of every step."""
  return {r["step"]: r["loss"] for r in _train_rows(RunDir(run_dir).metrics)}


@pytest.mark.parametrize("stage", sorted(SETUP))
def test_stage_killed_at_random_points_resumes_bitwise(
    golden_runs, golden_root, tmp_path, stage):
  del golden_runs  # ensures the golden runs (inputs, reference) exist
  seed, iterations = SETUP[stage]
  launcher = Launcher(stage, golden_root, tmp_path)
  # An uninterrupted launch first: it fills the compile cache and gives the
  # time scale; for PPO (lengthened) it is the reference, otherwise it must
  # equal the golden run.
  ref_dir = str(tmp_path / "uninterrupted")
  pace = launcher.finish(ref_dir)
  want = _losses(ref_dir if iterations else os.path.join(golden_root, stage))
  assert _losses(ref_dir) == want
  n = max(want)
  rng = np.random.default_rng(seed)
  kills, run_dirs = [], [str(tmp_path / "run0")]
  # 3 kills at random points, and on until one lands in a launch that had
  # resumed from a checkpoint: where steps are fast next to saving and the
  # final export, random kills mostly land after the last checkpoint, so
  # those later kills come as soon as a launch has sealed a checkpoint.
  while len(kills) < KILLS or not any(k["resumed_from"] for k in kills):
    run = RunDir(run_dirs[-1])
    start = _sealed_start(run)
    remaining = len([s for s in want if s > start])
    if remaining < 1:  # finished: go on killing a fresh run
      run_dirs.append(str(tmp_path / f"run{len(run_dirs)}"))
      continue
    rows_before = len(_train_rows(run.metrics))
    if len(kills) < KILLS:
      # Killed before its last row (or, with one row left, while it ends),
      # up to 2 rows' time after the trigger row.
      target = int(rng.integers(1, max(remaining - 1, 1) + 1))
      delay = float(rng.uniform(0.0, 2.0)) * pace
      trigger = lambda: (len(_train_rows(run.metrics))  # noqa: E731
                         - rows_before >= target)  # pylint: disable=cell-var-from-loop
    else:
      target, delay = "sealed", 0.0
      trigger = lambda: _sealed_start(run) > start  # noqa: E731  # pylint: disable=cell-var-from-loop
    proc = launcher.start(run.root)
    rc = _kill_when(proc, trigger, delay)
    if rc == -signal.SIGKILL:
      kills.append({"run": len(run_dirs) - 1, "resumed_from": start,
                    "rows": target, "delay_s": round(delay, 3)})
    else:
      assert rc == 0, open(launcher.log_path, errors="replace").read()[-3000:]
    assert len(run_dirs) < 10 and len(kills) < 3 * KILLS, kills
  print(f"\n{stage} kills: {kills}; {pace:.3f} s per row")
  # Every row any launch logged equals the reference's (a redone step
  # logs again); the last run is completed and compared whole.
  for d in run_dirs:
    rows = [(r["step"], r["loss"]) for r in _train_rows(RunDir(d).metrics)]
    for step, loss in rows:
      assert loss == want[step], (d, step, loss, want[step], rows, kills)
  last = RunDir(run_dirs[-1])
  if not os.path.exists(last.summary):
    launcher.finish(last.root)
  got = _losses(last.root)
  assert sorted(got) == sorted(want), (sorted(got), sorted(want))
  assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
  with open(last.summary) as f:
    assert json.load(f)["final_step"] == n
  for s in last.checkpoint_steps():
    assert integrity.problem(os.path.join(last.checkpoints, str(s))) is None
