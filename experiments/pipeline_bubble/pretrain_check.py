"""The pretrain stage with pipeline stages vs the golden run.

Runs the golden tiny pretrain (tests/goldens: 2 layers, batch 4, 6 steps, on
one device without a pipeline) again with mesh stage=2 x data=4 (8
simulated CPU devices), pipeline_microbatches=2, once per schedule, and
prints each step's loss and the eval rows next to the golden values.

  JAX_PLATFORMS=cpu python experiments/pipeline_bubble/pretrain_check.py \
      [--out=experiments/pipeline_bubble/pretrain_check.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

import jax  # noqa: E402

# The golden runs' numerics (tests/conftest.py).
jax.config.update("jax_default_matmul_precision", "highest")

from lifejax import sharding  # noqa: E402
from tests.goldens import conftest as golden  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  with open(golden.GOLDEN, encoding="utf-8") as f:
    want = json.load(f)["pretrain"]
  lines = ["| schedule | step losses (stage=2 x data=4) | max rel diff vs "
           "golden (1 device) | eval loss max rel diff |", "|---|---|---|---|"]
  with tempfile.TemporaryDirectory() as tmp:
    name, fn, kw = golden._stage_calls(tmp)[0]
    assert name == "pretrain"
    for schedule in ("gpipe", "1f1b"):
      run_dir = os.path.join(tmp, schedule)
      kw2 = dict(kw, model=dataclasses.replace(
          golden.MODEL, pipeline_schedule=schedule, pipeline_microbatches=2),
                 mesh=sharding.MeshConfig(stage=2, data=4, fsdp=1, model=1))
      with golden.StepRecorder() as rec:
        fn(run_dir=run_dir, **kw2)
      got = rec.values()
      rel = max(abs(a / b - 1) for a, b in zip(got, want["losses"]))
      ev = golden.eval_rows(run_dir)
      ev_rel = max(abs(ev[s]["eval/loss"] / want["eval"][s]["eval/loss"] - 1)
                   for s in want["eval"])
      lines.append(f"| {schedule} | {', '.join(f'{x:.6f}' for x in got)} | "
                   f"{rel:.1e} | {ev_rel:.1e} |")
      print(lines[-1], flush=True)
  lines.append(f"| golden | {', '.join(f'{x:.6f}' for x in want['losses'])}"
               " | | |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  main()
