"""Several JAX processes on this machine (`lifejax.launch`) train what one
process on the same 8-device mesh trains.

A `lifejax.launch` job of N processes x 8/N CPU devices runs the tiny
stages of `jobs.py` (driver.py, one copy per process); the reference is the
same stages run here, in one process with 8 devices.

Tolerance: the per-step losses agree to rtol 1e-5 (plus atol 1e-6 for
losses near 0, such as GRPO's: its advantages sum to 0), not bitwise. Every
process computes exactly the reference's per-device programs (same mesh,
same shardings, same global batches); what differs is the order in which
a cross-process collective sums the devices' parts. XLA's in-process CPU
all-reduce adds devices 0..7 in order, gloo's ring all-reduce adds each
chunk of the buffer starting from a different rank. f32 addition is not
associative, so a reduced value can differ in its last bit or two, and a
few optimizer steps carry that on (the largest difference seen is a few
ulp of the loss: 1e-7 relative). Eval metrics get the same tolerance,
except a reward model's mean chosen / rejected reward (see OFFSET). Within
one job every process holds the same values bitwise (a replicated result
is the same bytes everywhere), and two runs of the same job are bitwise
equal, which the kill test relies on.

Pretraining in 2 processes and the kill test run by default (about a
minute on 2 cores, most of it compiling); pretraining in 4 processes and
every stage (SFT, reward, DPO, PPO, GRPO) in 2 processes take minutes more:
they run with LIFEJAX_TEST_MULTIPROCESS_FULL=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.train import integrity
from lifejax.train.metrics import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jobs  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
# A reward model's loss sees only reward margins: the gradient of the
# rewards' common offset is rounding noise, which Adam scales to full-size
# steps, so the offset (not the margins) moves with the reduction order.
OFFSET = {"reward": ("eval/chosen_reward", "eval/rejected_reward")}
KILL_AT = 5  # process 1 kills itself at its 5th pretrain step


class Job:
  """A `lifejax.launch` job running driver.py in the background."""

  def __init__(self, processes: int, root: str, cache: str, stages: str,
               env: dict[str, str] | None = None):
    self.root = root
    os.makedirs(root, exist_ok=True)
    self.log = os.path.join(root, "launch.log")
    self._out = open(self.log, "wb")  # pylint: disable=consider-using-with
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "lifejax.launch", "--processes",
         str(processes), "--script", os.path.join(HERE, "driver.py"), "--",
         root, cache, stages], cwd=REPO, stdout=self._out,
        stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))

  def wait(self, timeout: float = 540) -> tuple[int, str]:
    try:
      code = self.proc.wait(timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
      self._out.close()
    with open(self.log, encoding="utf-8", errors="replace") as f:
      return code, f.read()

  def losses(self, process: int) -> dict[str, list[float]]:
    with open(jobs.losses_file(self.root, process), encoding="utf-8") as f:
      return json.load(f)


def _finished(job: Job, processes: int) -> dict[str, list[float]]:
  code, log = job.wait()
  assert code == 0, log[-4000:]
  losses = [job.losses(i) for i in range(processes)]
  for i in range(1, processes):  # one SPMD program: the same bytes
    assert losses[i] == losses[0], (i, losses[i], losses[0])
  return losses[0]


FULL = pytest.mark.skipif(
    not os.environ.get("LIFEJAX_TEST_MULTIPROCESS_FULL"),
    reason="minutes on 2 cores; set LIFEJAX_TEST_MULTIPROCESS_FULL=1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The single-process reference, the 2-process pretrain job and the
  same job with process 1 killed (SIGKILL) at its 5th step.

  The jobs start first and run while this process computes the reference
  (the cores are shared: a compile is single-threaded)."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  cache = str(tmp / "jax_cache")
  two = Job(2, str(tmp / "two"), cache, "pretrain")
  killed = Job(2, str(tmp / "killed"), cache, "pretrain",
               env={"LIFEJAX_TEST_KILL_AT": f"1:{KILL_AT}"})
  ref_root = str(tmp / "ref")
  ref = jobs.run_chain(ref_root, ["pretrain"])
  return {"ref": ref, "ref_root": ref_root, "cache": cache, "tmp": tmp,
          "two": _finished(two, 2), "two_root": two.root,
          "killed": killed.wait(), "killed_root": killed.root}


def _run(root: str, stage: str = "pretrain") -> RunDir:
  return LifecycleRoot(root).stage(stage)


def _assert_close(got: list[float], want: list[float], what: str) -> None:
  assert len(got) == len(want) > 0, (what, got, want)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def _assert_same_run_files(root: str, ref_root: str, stage: str) -> None:
  """The main process wrote each file once; every step sealed."""
  run, ref = _run(root, stage), _run(ref_root, stage)
  # A restarted run repeats rows of the steps it redid: the last count.
  rows, ref_rows = read_metrics(run.metrics), read_metrics(ref.metrics)
  assert [sorted(r) for r in rows] == [sorted(r) for r in ref_rows]
  assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
  for r, w in zip(rows, ref_rows):
    for k in r:
      if (k.startswith("eval/") and k != "eval/tokens"
          and k not in OFFSET.get(stage, ())):
        np.testing.assert_allclose(r[k], w[k], rtol=RTOL, err_msg=k)
  with open(run.summary, encoding="utf-8") as f:
    summary = json.load(f)
  with open(ref.summary, encoding="utf-8") as f:
    assert summary["final_step"] == json.load(f)["final_step"]
  assert run.checkpoint_steps() == ref.checkpoint_steps()
  for best in (False, True):
    for s in run.checkpoint_steps(best):
      step_dir = os.path.join(run.checkpoint_dir(best), str(s))
      assert integrity.problem(step_dir) is None, step_dir


def test_pretrain_in_two_processes_matches_single_process(runs):
  _assert_close(runs["two"]["pretrain"], runs["ref"]["pretrain"],
                "2 processes")
  _assert_same_run_files(runs["two_root"], runs["ref_root"], "pretrain")


@FULL
def test_pretrain_in_four_processes_matches_single_process(runs):
  job = Job(4, str(runs["tmp"] / "four"), runs["cache"], "pretrain")
  _assert_close(_finished(job, 4)["pretrain"], runs["ref"]["pretrain"],
                "4 processes")
  _assert_same_run_files(job.root, runs["ref_root"], "pretrain")


def test_killed_process_stops_the_job_and_a_restart_resumes(runs):
  root = runs["killed_root"]
  code, log = runs["killed"]
  assert code == 128 + 9, log[-4000:]
  assert "lifejax.launch: process 1 (pid " in log, log[-4000:]
  assert "was killed by SIGKILL; stopped the other processes [0]" in log
  run = _run(root)
  assert not os.path.exists(run.summary)
  assert not os.path.exists(jobs.losses_file(root, 0))

  restart = Job(2, root, runs["cache"], "pretrain")
  resumed = _finished(restart, 2)["pretrain"]
  want = runs["two"]["pretrain"]
  # Checkpoints every 2 steps: step 4 was saved (asynchronously) but is
  # sealed only at the next save, which the kill at step 5 prevented, so
  # the restart resumes from step 2 and redoes steps 3..6 exactly as the
  # uninterrupted job did them.
  assert resumed == want[2:], (resumed, want)
  with open(restart.log, encoding="utf-8") as f:
    assert "from step 2 " in f.read()
  _assert_same_run_files(root, runs["ref_root"], "pretrain")


@FULL
def test_every_stage_matches_single_process(tmp_path):
  job = Job(2, str(tmp_path / "two"), str(tmp_path / "jax_cache"),
            ",".join(jobs.STAGES))
  ref_root = str(tmp_path / "ref")
  ref = jobs.run_chain(ref_root, jobs.STAGES)
  got = _finished(job, 2)
  for stage in jobs.STAGES:
    diff = np.max(np.abs(np.subtract(got[stage], ref[stage])))
    print(f"{stage}: max |loss - reference| = {diff:.3g}")
    _assert_close(got[stage], ref[stage], stage)
  for stage in ("pretrain", "sft", "reward", "dpo"):
    _assert_same_run_files(job.root, ref_root, stage)
