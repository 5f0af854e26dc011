"""kill -9 at seeded random points of real stage runs (pretrain, SFT, PPO),
each resumed: every step's loss equals an uninterrupted run's, bitwise.

Each launch is its own process (`kill_driver.py`) running the golden stage
configuration (PPO lengthened to 4 iterations). The test waits until the
launch has logged a random number (at least one) of new train rows, then
a random delay of up to about a step (an iteration for PPO), and sends
SIGKILL: the kill lands in a step, an eval, a rollout, a checkpoint save
or the final export. The next launch resumes from the newest sealed
checkpoint; saves are asynchronous, so a kill can land while one is in
flight. When a run finishes before its kill, the test goes on killing a
fresh run, until 5 kills have landed. Every loss any launch logged, and
the whole completed last run, equal the reference's: the golden run of the
stage (which tests/goldens holds to the recorded losses) or, for PPO, an
uninterrupted launch of the same.
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
KILLS = 5
# stage: (seed, longest delay after the trigger row in s, RL iterations)
SETUP = {"pretrain": (0, 0.3, None), "sft": (1, 0.3, None),
         "ppo": (2, 1.0, 4)}


def _train_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  return [r for r in read_jsonl(path) if "loss" in r]


class Launcher:

  def __init__(self, stage, root, tmp_path):
    self.stage, self.root = stage, root
    self.cache = str(tmp_path / "jax_cache")
    self.log_path = str(tmp_path / "log.txt")
    self.iterations = SETUP[stage][2]

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

  def finish(self, run_dir):
    rc = self.start(run_dir).wait(timeout=300)
    assert rc == 0, open(self.log_path, errors="replace").read()[-3000:]


def _kill_after(proc, metrics, rows_before, target, delay, timeout=300):
  """SIGKILLs `proc` `delay` s after it logged `target` new train rows;
  returns its exit code (it may have finished first)."""
  t0 = time.monotonic()
  while proc.poll() is None and time.monotonic() - t0 < timeout:
    if len(_train_rows(metrics)) - rows_before >= target:
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
  seed, max_delay, iterations = SETUP[stage]
  launcher = Launcher(stage, golden_root, tmp_path)
  ref_dir = os.path.join(golden_root, stage)
  if iterations:
    ref_dir = str(tmp_path / "reference")
    launcher.finish(ref_dir)
  want = _losses(ref_dir)
  n = max(want)
  rng = np.random.default_rng(seed)
  kills, run_dirs = [], [str(tmp_path / "run0")]
  while len(kills) < KILLS:
    run = RunDir(run_dirs[-1])
    start = _sealed_start(run)
    remaining = len([s for s in want if s > start])
    if remaining < 1:  # finished: go on killing a fresh run
      run_dirs.append(str(tmp_path / f"run{len(run_dirs)}"))
      continue
    # Killed before its last row (or, with one row left, while it ends).
    target = int(rng.integers(1, max(remaining - 1, 1) + 1))
    delay = float(rng.uniform(0.0, max_delay))
    rows_before = len(_train_rows(run.metrics))
    proc = launcher.start(run.root)
    rc = _kill_after(proc, run.metrics, rows_before, target, delay)
    if rc == -signal.SIGKILL:
      kills.append({"run": len(run_dirs) - 1, "resumed_from": start,
                    "rows": target, "delay_s": round(delay, 3)})
    else:
      assert rc == 0, open(launcher.log_path, errors="replace").read()[-3000:]
    assert len(run_dirs) < 6, kills
  print(f"\n{stage} kills: {kills}")
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
  # Some kills landed after a resume, so restarts were really exercised.
  assert any(k["resumed_from"] > 0 for k in kills), kills
