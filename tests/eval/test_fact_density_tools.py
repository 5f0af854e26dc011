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
