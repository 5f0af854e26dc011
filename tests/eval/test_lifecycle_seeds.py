"""experiments/lifecycle_seeds/summarize.py on real tiny lifecycle roots:
per-seed values read from each stage's eval.json, mean ± sd over seeds, and
a target counted as met only when every seed meets it."""

import json
import os
import shutil

import numpy as np
import pytest

from experiments.lifecycle_seeds import summarize as ls
from lifejax.eval import chain, runs
from lifejax.run.layout import LifecycleRoot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _seeded_copy(src: str, dst: str, seed: int, dpo_updates=None,
                 **sft_updates: float) -> str:
  """A copy of a lifecycle root's ledger, world manifest and stage evals
  (what the summary reads), with the world seed and some SFT (and DPO)
  metrics changed."""
  lr, out = LifecycleRoot(src), LifecycleRoot(dst)
  os.makedirs(os.path.dirname(out.world_manifest), exist_ok=True)
  shutil.copy(lr.ledger, out.ledger)
  with open(lr.world_manifest) as f:
    manifest = json.load(f)
  manifest["seed"] = seed
  with open(out.world_manifest, "w") as f:
    json.dump(manifest, f)
  for stage in ls.STAGES:
    if os.path.exists(lr.stage(stage).eval):
      os.makedirs(out.stage(stage), exist_ok=True)
      with open(lr.stage(stage).eval) as f:
        ev = json.load(f)
      if stage == "sft":
        ev.update(sft_updates)
      if stage == "dpo":
        ev.update(dpo_updates or {})
      with open(out.stage(stage).eval, "w") as f:
        json.dump(ev, f)
      for name in ("eval_answers.jsonl", "eval_rows.json"):
        if os.path.exists(os.path.join(lr.stage(stage).root, name)):
          shutil.copy(os.path.join(lr.stage(stage).root, name),
                      os.path.join(out.stage(stage).root, name))
  return dst


def _row(md: str, measure: str) -> list[str]:
  for line in md.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) > 2 and cells[1] == measure:
      return cells
  raise AssertionError(f"no row {measure!r} in\n{md}")


def test_the_chain_table_over_seeds(tiny_lifecycle, tmp_path):
  # DPO significant in both seeds, but ahead of SFT in one only.
  a = _seeded_copy(tiny_lifecycle, str(tmp_path / "s1"), 1,
                   {"sign_test_p": 0.001, "win_rate_vs_ref": 0.7},
                   **{"instruct/format": 0.95,
                      "instruct/accuracy_learnable": 0.70})
  b = _seeded_copy(tiny_lifecycle, str(tmp_path / "s2"), 2,
                   {"sign_test_p": 0.001, "win_rate_vs_ref": 0.3},
                   **{"instruct/format": 0.85,
                      "instruct/accuracy_learnable": 0.62})
  md = ls.summarize([a, b], str(tmp_path / "out"), command="cmd")
  assert (tmp_path / "out" / ls.RESULTS).read_text() == md
  assert (tmp_path / "out" / ls.PLOT).read_bytes()[:8] == PNG_MAGIC
  assert "| seed 1 | seed 2 |" in md and "Command: `cmd`" in md
  assert "Every root ran the same code" in md

  fmt = _row(md, "format (SFT)")
  mean, sd = np.mean([0.95, 0.85]), np.std([0.95, 0.85], ddof=1)
  assert fmt[2:4] == ["95.0%", "85.0%"]
  assert fmt[4] == f"{100 * mean:.3g}% ± {100 * sd:.2g}%"
  assert fmt[5:] == ["≥ 90%", "1 of 2 seeds"]  # one seed misses 90%
  assert _row(md, "strict accuracy, learnable group (SFT)")[6] == \
      "every seed"
  # A significant loss to SFT does not meet "beats SFT" (DPO's row first).
  sign = _row(md, "sign-test p vs SFT")
  assert sign[0] == "DPO removes what SFT got wrong", sign
  assert sign[5:] == ["< 0.01, ahead of SFT", "1 of 2 seeds"], sign

  # Values the summary did not change come from the roots' own evals.
  with open(LifecycleRoot(tiny_lifecycle).stage("reward").eval) as f:
    pair = json.load(f)["pair_accuracy"]
  assert _row(md, "held-out pair accuracy")[2] == f"{100 * pair:.1f}%"
  # The tiny lifecycle runs no PPO: its links are not measured, not zero.
  assert _row(md, "win rate vs SFT")[2] != "—"  # DPO ran
  ppo_rows = [ln for ln in md.splitlines() if ln.startswith("| PPO")]
  assert ppo_rows and all("| — | — | — |" in ln for ln in ppo_rows)

  # Each link tested per seed: the roots' own chain (report.md's), with
  # the number of seeds it holds in.
  section = md.split("## Each link tested per seed", 1)[1]
  want = {k.measure: k for k in chain.chain_links(
      runs.read_stages(a), {s.name: runs.stage_metrics(s.run_dir)
                            for s in runs.read_stages(a)})}
  assert "format: SFT − base" in want and "flaws per answer: dpo / SFT" in want
  for measure, k in want.items():
    row = _row(section, measure)
    if measure == "judge win rate vs SFT (dpo)":
      # The copies' DPO win rates differ (70% and 30%, both p 0.001):
      # the link holds only where DPO is ahead.
      assert row[2].endswith(" ✓") and row[3].endswith(" ✗"), row
      assert row[-1] == "1 of 2", row
      continue
    if k.holds is None:
      assert row[-1] == "—", row
    else:
      # Both copies share every per-prompt file: the same verdict twice.
      assert row[-1] == f"{2 * int(k.holds)} of 2", row
      assert row[2].endswith(" ✓" if k.holds else " ✗"), row
  assert "Links that hold in every seed:" in section


def test_a_root_that_is_not_a_lifecycle_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a lifecycle root"):
    ls.read_root(str(tmp_path / "nothing"))


def test_roots_from_different_code_are_flagged(tiny_lifecycle, tmp_path):
  a = _seeded_copy(tiny_lifecycle, str(tmp_path / "s1"), 1)
  b = _seeded_copy(tiny_lifecycle, str(tmp_path / "s2"), 2)
  ledger = LifecycleRoot(b).ledger
  with open(ledger) as f:
    data = json.load(f)
  data["code"] = dict(data.get("code") or {}, sha256="0000000000000000")
  with open(ledger, "w") as f:
    json.dump(data, f)
  md = ls.summarize([a, b], str(tmp_path / "out"))
  assert "**The roots ran different code**" in md
  assert "0000000000000000" in md
