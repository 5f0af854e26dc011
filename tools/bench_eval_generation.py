"""The lifecycle's evaluation generation on one device against all local
devices (GenerationSpec.devices), on a trained lifecycle root.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
    python tools/bench_eval_generation.py --root=runs/fact_world --stage=sft

Generates the greedy answers to the root's test prompts (the lifecycle's
balanced subset, its GenerationSpec shapes) with the stage's model, both
ways in one process, alternating for `--rounds` rounds after one warm-up
call each (compilation), and prints a markdown table: seconds per pass
(median, range), answers per second, the ratio, and how many answers the
two placements share word for word (greedy rows are independent; a
difference is float rounding of another matrix-product shape flipping a
near-tie). Timings are wall clock, each pass blocked (the answers are
host strings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import jax  # noqa: E402

from lifejax import sharding  # noqa: E402
from lifejax.data.jsonl import read_jsonl  # noqa: E402
from lifejax.eval import generation, instruct, lifecycle_evals  # noqa: E402
from lifejax.run import artifacts  # noqa: E402
from lifejax.run.layout import LifecycleRoot  # noqa: E402
from lifejax.stages.lifecycle import balanced_subset  # noqa: E402


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--root", required=True, help="a lifecycle root")
  p.add_argument("--stage", default="sft")
  p.add_argument("--records", type=int, default=216,
                 help="test prompts (lifecycle.eval_records)")
  p.add_argument("--prompt_len", type=int, default=256)
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=24)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=None, help="write the table here too")
  args = p.parse_args(argv)
  n_dev = len(jax.local_devices())
  if n_dev < 2:
    raise SystemExit("one local device: set XLA_FLAGS="
                     "--xla_force_host_platform_device_count=N (N > 1)")
  lr = LifecycleRoot(args.root)
  run_dir, sft_run = lr.stage(args.stage).root, lr.stage("sft").root
  for path in (run_dir, sft_run):
    if not os.path.isdir(path):
      raise SystemExit(f"{path}: no such run in {args.root}")
  cfg = artifacts.load_model_config(run_dir)
  mesh_cfg = sharding.MeshConfig(data=1, fsdp=1, model=1)
  graphdef, params = lifecycle_evals.lm_params(
      run_dir, cfg, sharding.make_mesh(mesh_cfg), mesh_cfg.rules)
  host = sharding.fetch(params)
  tokenizer = artifacts.load_tokenizer(sft_run)
  template = artifacts.load_template(sft_run)
  records = balanced_subset(read_jsonl(lr.world_instructions("test")),
                            args.records)
  sampling_cfg = generation.chat_config(template, tokenizer,
                                        args.max_new_tokens)

  def pass_of(devices: int):
    spec = instruct.GenerationSpec(args.prompt_len, args.max_new_tokens,
                                   args.batch_size, devices)
    gen = generation.make_generate(graphdef, host, sampling_cfg,
                                   devices=devices)
    return lambda: generation.generate_responses(gen, tokenizer, template,
                                                 records, spec)

  sides = {1: pass_of(1), -1: pass_of(-1)}
  answers = {d: f() for d, f in sides.items()}  # warm-up: compiles
  times: dict[int, list[float]] = {d: [] for d in sides}
  for _ in range(args.rounds):
    for d, f in sides.items():
      t0 = time.perf_counter()
      answers[d] = f()
      times[d].append(time.perf_counter() - t0)
  same = sum(a == b for a, b in zip(answers[1], answers[-1]))
  med = {d: statistics.median(t) for d, t in times.items()}
  command = "python " + " ".join(
      ["tools/bench_eval_generation.py"]
      + (sys.argv[1:] if argv is None else list(argv)))
  lines = [
      f"Command: `{command}` ({n_dev} local devices, {os.cpu_count()} "
      f"cores; stage `{args.stage}`, {len(records)} test prompts, batch "
      f"{args.batch_size}, up to {args.max_new_tokens} new tokens, "
      f"{args.rounds} rounds)", "",
      "| placement | seconds per pass (median, range) | answers/s | "
      "÷ one device |", "|---|---|---|---|"]
  for d, label in ((1, "one device"), (-1, f"all {n_dev} devices")):
    t = times[d]
    lines.append(f"| {label} | {med[d]:.2f} ({min(t):.2f}-{max(t):.2f}) | "
                 f"{len(records) / med[d]:.1f} | "
                 f"{med[1] / med[d]:.2f}x |")
  lines += ["", f"Identical answers: {same} of {len(records)}."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  return text


if __name__ == "__main__":
  main()
