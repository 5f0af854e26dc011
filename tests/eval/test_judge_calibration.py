"""The calibrated judge: per task, the base model's dev mean maps to 0 and
a perfect answer to 1 (instruct.calibrate), checked against the formula by
hand and on the world's own responses."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from lifejax.eval import instruct
from lifejax.world import generator
from lifejax.world import judge as judge_lib


@pytest.fixture(scope="module")
def pairs():
  world = generator.build_world(seed=2, scale=0.3)
  return [r for split in world.preferences.values() for r in split]


def test_calibrate_is_the_affine_map_fixing_base_and_perfect():
  assert instruct.calibrate(0.35, 0.35) == 0.0
  assert instruct.calibrate(1.0, 0.35) == pytest.approx(1.0)
  assert instruct.calibrate(0.0, 0.35) == pytest.approx(-0.35 / 0.65)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    instruct.calibrate(0.5, 1.0)


def test_judge_responses_calibrates_each_task_against_its_baseline(pairs):
  records = pairs[:60]
  answers = [r["rejected"] if i % 2 else r["chosen"]
             for i, r in enumerate(records)]
  raw = [judge_lib.score(r, a).total for r, a in zip(records, answers)]
  by_task = collections.defaultdict(list)
  for r, s in zip(records, raw):
    by_task[r["task"]].append(s)
  # A baseline per task: the mean raw total of empty answers (what a model
  # that says nothing useful earns), one task left without a baseline.
  tasks = sorted(by_task)
  base = {t: float(np.mean([judge_lib.score(r, "").total for r in records
                            if r["task"] == t])) for t in tasks[1:]}
  out = instruct.judge_responses(records, answers, baseline=base)
  want_all = []
  for t in tasks[1:]:
    want = [(s - base[t]) / (1 - base[t]) for s in by_task[t]]
    assert out[f"judge_calibrated/{t}"] == pytest.approx(np.mean(want))
    want_all += want
  assert f"judge_calibrated/{tasks[0]}" not in out
  assert out["judge_calibrated"] == pytest.approx(np.mean(want_all))
  # Empty answers score exactly their baseline: calibrated 0 per task.
  empty = instruct.judge_responses(records, [""] * len(records),
                                   baseline=base)
  for t in tasks[1:]:
    assert empty[f"judge_calibrated/{t}"] == pytest.approx(0.0, abs=1e-12)
  assert "judge_calibrated" not in instruct.judge_responses(records, answers)


def test_baseline_of_reads_a_stage_eval():
  ev = {"judge_baseline/fact_qa": 0.3, "instruct/judge": 0.5,
        "judge_baseline/reply": 0.4}
  assert instruct.baseline_of(ev) == {"fact_qa": 0.3, "reply": 0.4}
  assert instruct.baseline_of({}) == {}
