"""Behaviour is unchanged: per-step losses of the golden runs (and of their
killed-and-resumed copies) equal the recorded ones bitwise.

The recorded values in losses.json were produced before the stage-runner
refactor (main at 63a7560); see conftest.py for how to regenerate them.
"""

import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "losses.json")
STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")


@pytest.fixture(scope="module")
def golden(golden_runs):
  if os.environ.get("LIFEJAX_REGEN_GOLDENS"):
    with open(GOLDEN, "w", encoding="utf-8") as f:
      json.dump(golden_runs, f, indent=1)
  with open(GOLDEN, encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.parametrize("stage", STAGES)
def test_per_step_losses_are_bitwise_unchanged(golden, golden_runs, stage):
  want, got = golden[stage]["losses"], golden_runs[stage]["losses"]
  assert len(got) == len(want), (len(got), len(want))
  assert all(np.isfinite(want))
  assert got == want  # exact float equality, step by step


@pytest.mark.parametrize("stage", STAGES)
def test_killed_and_resumed_run_continues_bitwise(golden, golden_runs, stage):
  g, r = golden[stage], golden_runs[stage]
  assert r["resumed_losses"] == g["resumed_losses"]
  # The resumed run redoes exactly the steps after its checkpoint, and they
  # equal the uninterrupted run's.
  tail = len(r["resumed_losses"])
  assert 0 < tail < len(r["losses"])
  assert r["resumed_losses"] == r["losses"][-tail:]


@pytest.mark.parametrize("stage", ("pretrain", "sft", "reward", "dpo"))
def test_eval_metrics_are_unchanged(golden, golden_runs, stage):
  want, got = golden[stage]["eval"], golden_runs[stage]["eval"]
  assert sorted(got) == sorted(want)
  for step, metrics in want.items():
    assert sorted(got[step]) == sorted(metrics), step
    for k, v in metrics.items():
      np.testing.assert_allclose(got[step][k], v, rtol=1e-6, atol=1e-7,
                                 err_msg=f"step {step} {k}")
