"""experiments/dpo_select's selection on the dev prompts: evaluate.py
judges runs against SFT on the split it is given (rows as JSON next to the
table), and pick.py picks the best dev win rate, refusing rows from test."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lifejax.data.jsonl import read_jsonl
from lifejax.run.layout import LifecycleRoot
from lifejax.stages.lifecycle import balanced_subset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.join(REPO, "experiments", "dpo_select"))
import pick  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_dev_evaluation_and_pick(tiny_lifecycle, tmp_path):
  root = tiny_lifecycle
  lr = LifecycleRoot(root)
  out = tmp_path / "dev.md"
  # --answers writes into each run: copies keep the shared root unchanged.
  runs = {}
  for stage in ("sft", "dpo"):
    runs[stage] = str(tmp_path / stage)
    shutil.copytree(lr.stage(stage).root, runs[stage])
  subprocess.run(
      [sys.executable, "experiments/preference/evaluate.py", f"--root={root}",
       "--split=validation", "--records=10", f"--out={out}", "--answers",
       f"--run=SFT itself={runs['sft']}", f"--run=DPO={runs['dpo']}"],
      check=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                 "XLA_FLAGS": ""}, capture_output=True)
  with open(tmp_path / "dev.json") as f:
    rows = json.load(f)
  dev = balanced_subset(read_jsonl(lr.world_instructions("validation")), 10)
  assert [r["split"] for r in rows] == ["validation"] * 2
  for r in rows:
    m = r["metrics"]
    assert m["wins"] + m["ties"] + m["losses"] == len(dev)
  # SFT against itself: the same greedy answers, every prompt a tie.
  sft = rows[0]["metrics"]
  assert (sft["ties"], sft["win_rate_vs_ref"]) == (len(dev), 0.5)
  assert sft["kl_to_ref"] == pytest.approx(0.0, abs=1e-6)
  assert "(`evaluate.py --split=validation`)" in out.read_text()
  # --answers: one judged row per dev prompt, in order, whose judge totals
  # average to the table's judge score.
  for r in rows:
    answers = read_jsonl(os.path.join(r["run"], "validation_answers.jsonl"))
    assert [a["id"] for a in answers] == [d["id"] for d in dev]
    assert sum(a["judge"] for a in answers) / len(answers) == pytest.approx(
        r["metrics"]["judge_score"])
    assert all(isinstance(a["flaws"], dict) for a in answers)
  want = max(rows, key=lambda r: (r["metrics"]["win_rate_vs_ref"],
                                  -rows.index(r)))
  assert pick.pick(rows) is want
  got = subprocess.run([sys.executable, "experiments/dpo_select/pick.py",
                        str(out)], check=True, cwd=REPO, capture_output=True,
                       text=True).stdout.strip()
  assert got == f"{want['label']}={want['run']}"


def test_pick_prefers_the_first_of_equal_arms_and_refuses_test_rows():
  row = lambda label, win, split="validation": {  # noqa: E731
      "label": label, "run": label, "split": split,
      "metrics": {"win_rate_vs_ref": win}}
  rows = [row("a", 0.52), row("b", 0.61), row("c", 0.61)]
  assert pick.pick(rows)["label"] == "b"
  with pytest.raises(ValueError, match=r"\['t'\].*dev prompts only"):
    pick.pick(rows + [row("t", 0.9, "test")])
  with pytest.raises(ValueError, match="no arms"):
    pick.pick([])
