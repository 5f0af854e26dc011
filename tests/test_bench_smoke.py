"""tools/bench_train_step.py runs end to end in a tiny configuration.

Only that it runs and reports is checked: timings are never asserted (the
cores are shared, and speed is what the benchmark itself reports).
"""

import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_train_step_runs_and_writes_table(tmp_path):
  out = tmp_path / "results.md"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, os.path.join(_ROOT, "tools", "bench_train_step.py"),
       "--model=test", "--batch=2", "--seq=16", "--precision=f32,bf16",
       "--steps=2", "--warmup=1", "--peak_n=128", "--peak_reps=2", "--peer",
       f"--out={out}"],
      env=env, cwd=_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = out.read_text()
  for runner in ("lifejax f32", "lifejax bf16", "HF torch f32",
                 "HF torch bf16"):
    assert f"| {runner} |" in table, table
  assert "Command: `python tools/bench_train_step.py --model=test" in table
  assert proc.stdout.strip().endswith(table.strip().splitlines()[-1])
