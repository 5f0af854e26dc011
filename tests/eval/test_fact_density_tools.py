"""experiments/fact_density's probe and table on the tiny lifecycle: the
probe re-scores a root's models and writes the same per-fact ranking the
lifecycle's own evaluation wrote; the table reads it back."""

import json
import os
import subprocess
import sys

import numpy as np

from lifejax.run.layout import LifecycleRoot, RunDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
TOOLS = os.path.join(REPO, "experiments", "fact_density")


def test_probe_rewrites_the_lifecycles_own_ranking(lifecycle_copy, tmp_path):
  root = lifecycle_copy()
  lr = LifecycleRoot(root)
  runs = [lr.stage(s).root for s in ("pretrain", "sft")]
  recorded = []
  for run in runs:
    with open(RunDir(run).fact_rank) as f:
      recorded.append(json.load(f))
    os.remove(RunDir(run).fact_rank)
  subprocess.run([sys.executable, os.path.join(TOOLS, "probe.py"), root],
                 check=True, cwd=REPO, env={**os.environ,
                                            "JAX_PLATFORMS": "cpu"})
  for run, want in zip(runs, recorded):
    with open(RunDir(run).fact_rank) as f:
      assert json.load(f) == want, run
  # The table: one row per es* root, the ranking's accuracy in it.
  table_root = tmp_path / "table"
  table_root.mkdir()
  os.symlink(root, table_root / "es1.0_r0_s2_seed0")
  out = subprocess.run([sys.executable, os.path.join(TOOLS, "summarize.py"),
                        str(table_root)], check=True, capture_output=True,
                       text=True, cwd=REPO).stdout
  row = [ln for ln in out.splitlines() if ln.startswith("| 1.0 |")]
  assert len(row) == 1, out
  hits = [h for r in recorded[0]["facts"].values() for h in r["hits"]]
  assert f"{100 * np.mean(hits):.1f}% (chance" in row[0]


def test_qa_probe_counts_every_fact_qa_prompt_once(tiny_lifecycle, tmp_path):
  """qa_probe.py ranks each fact_qa prompt of the split once per stage, and
  its closed/open-book rows partition the prompts."""
  from lifejax.data.jsonl import read_jsonl  # pylint: disable=g-import-not-at-top
  from lifejax.eval import stats  # pylint: disable=g-import-not-at-top
  out = tmp_path / "qa.json"
  subprocess.run([sys.executable, os.path.join(TOOLS, "qa_probe.py"),
                  tiny_lifecycle, "sft", "--split=validation",
                  f"--out={out}"], check=True, cwd=REPO,
                 env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
                 capture_output=True)
  res = json.loads(out.read_text())
  recs = [r for r in read_jsonl(LifecycleRoot(tiny_lifecycle)
                                .world_instructions("validation"))
          if r["task"] == "fact_qa"]
  assert res["items"] == [r["id"] for r in recs]
  assert res["open_book"] == [r["reference"]["open_book"] for r in recs]
  row = res["stages"]["sft"]
  assert len(row["hits"]) == len(recs)
  parts = [row[k] for k in ("closed", "open") if k in row]
  assert sum(p["n"] for p in parts) == row["all"]["n"] == len(recs)
  assert sum(p["hits"] for p in parts) == row["all"]["hits"] == sum(
      row["hits"])
  for p in parts + [row["all"]]:
    assert p["accuracy"] == p["hits"] / p["n"]
    assert p["p"] == stats.binom_test_p(p["hits"], p["n"], p["chance"])
