"""tools/accel_check.py runs on CPU with a tiny model for 1 step.

Timings are never asserted (the cores are shared). What is checked: every
impl available on CPU builds, compiles and runs a train step, the table has
a row for each, and their first-step losses agree (same init, same batch,
same function), which they would not if an impl masked differently.
"""

import os
import re
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accel_check_runs_every_cpu_impl(tmp_path):
  out = tmp_path / "table.md"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, os.path.join(_ROOT, "tools", "accel_check.py"),
       "--model=test", "--batch=1", "--seq=128", "--steps=1", "--warmup=0",
       "--peak_n=128", "--peak_reps=1", "--set=num_layers=1", f"--out={out}"],
      env=env, cwd=_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = out.read_text()
  assert "attention_impl='auto' picks `blocked` here" in table, table
  assert "interpret mode" in table
  losses = {}
  for impl in ("einsum", "blocked", "xla_sdpa", "splash"):
    row = re.search(rf"^\| {impl} \| ([0-9.]+) \| ([0-9.]+) \|", table,
                    re.MULTILINE)
    assert row, table
    losses[impl] = float(row.group(1))
  assert max(losses.values()) - min(losses.values()) < 1e-5, losses
  assert proc.stdout.strip().endswith(table.strip().splitlines()[-1])
