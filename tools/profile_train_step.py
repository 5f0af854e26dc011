r"""Where a lifejax train step's time goes, by kind of op.

Builds the same compiled step as `tools/bench_train_step.py` (the real
`build_trainer` step on a 1-device mesh, donated state), traces a few blocked
steps with `jax.profiler`, and attributes every XLA op's time on the CPU
worker threads to one category, read off the optimized HLO:

  * optimizer: ops under the train step's "optimizer" named scope (global
    gradient norm, the optax update, applying it);
  * matmuls: dots, and fusions whose fused computation holds a dot;
  * data movement: copies, transposes, slices, concatenations, casts and
    fusions made only of such ops (memory traffic, no arithmetic);
  * reductions: other fusions that reduce (softmax, norms, the loss);
  * elementwise: the remaining fusions and ops;
  * loop control: the self time of while/conditional ops (their bodies'
    ops are counted in their own categories).

Times are thread seconds (self time, nested ops subtracted) of the op events
on XLA's worker threads, so the total can exceed the wall time when XLA runs
independent ops on both cores at once. "outside op events" is cores x wall
minus that busy time: the runtime, truly idle cores, and the work a helper
thread does inside another thread's op (a large dot split over both cores
is timed once, on the thread that started it), so the busy shares are
shares of attributed time, not of the wall. Usage:

  python tools/profile_train_step.py --model=cpu10m --precision=f32,bf16 \
      --malloc=tuned --out=experiments/bench_train_step/profile.md
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train_step as bench  # pylint: disable=g-import-not-at-top

CATEGORIES = ("matmuls", "elementwise", "reductions", "data movement",
              "optimizer", "loop control")
# Ops that move or re-type data without arithmetic.
_MOVEMENT = frozenset({
    "copy", "transpose", "concatenate", "dynamic-slice",
    "dynamic-update-slice", "slice", "pad", "broadcast", "reshape", "bitcast",
    "bitcast-convert", "convert", "gather", "scatter", "parameter",
    "constant", "iota", "tuple", "get-tuple-element", "copy-start",
    "copy-done", "reverse"})
_CONTROL = frozenset({"while", "conditional", "call"})
_MATMUL = frozenset({"dot", "convolution"})

_COMP_RE = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR_RE = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z\-]*)\(")
_CALLS_RE = re.compile(r"calls=%?([\w.\-]+)")
_OPNAME_RE = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  calls: str | None
  op_name: str


def parse_hlo(text: str) -> tuple[dict[str, Instr], dict[str, set[str]]]:
  """(instruction name -> Instr, computation name -> opcodes in it)."""
  instrs: dict[str, Instr] = {}
  comp_ops: dict[str, set[str]] = collections.defaultdict(set)
  comp = None
  for line in text.splitlines():
    if line.rstrip().endswith("{") and "=" not in line.split("{")[0]:
      m = _COMP_RE.match(line)
      comp = m.group(1) if m else None
      continue
    m = _INSTR_RE.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    calls = _CALLS_RE.search(line)
    op_name = _OPNAME_RE.search(line)
    instrs[name] = Instr(name, opcode, calls.group(1) if calls else None,
                         op_name.group(1) if op_name else "")
    if comp is not None:
      comp_ops[comp].add(opcode)
  return instrs, comp_ops


def _fused_ops(instr: Instr, comp_ops: dict[str, set[str]]) -> set[str]:
  """Opcodes inside a fusion's computation, following nested fusions."""
  seen, todo, out = set(), [instr.calls], set()
  while todo:
    c = todo.pop()
    if c is None or c in seen:
      continue
    seen.add(c)
    out |= comp_ops.get(c, set())
  return out


def categorize(instr: Instr | None, comp_ops: dict[str, set[str]]) -> str:
  """The category of one HLO instruction (module docstring)."""
  if instr is None:
    return "elementwise"
  if "optimizer/" in instr.op_name or instr.op_name.endswith("optimizer"):
    return "optimizer"
  op = instr.opcode
  if op in _MATMUL or op == "custom-call":
    return "matmuls"
  if op in _CONTROL:
    return "loop control"
  if op == "fusion":
    inside = _fused_ops(instr, comp_ops)
    if inside & _MATMUL:
      return "matmuls"
    if inside <= _MOVEMENT:
      return "data movement"
    if inside & {"reduce", "reduce-window"}:
      return "reductions"
    return "elementwise"
  if op in _MOVEMENT:
    return "data movement"
  if op in {"reduce", "reduce-window"}:
    return "reductions"
  return "elementwise"


def self_times(events: list[dict]) -> dict[str, float]:
  """hlo_op -> summed self time (us) over complete events, per thread."""
  by_thread: dict[int, list[dict]] = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
      by_thread[e["tid"]].append(e)
  out: dict[str, float] = collections.defaultdict(float)
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[list] = []  # [end, op, child time]
    def close(entry):
      out[entry[1]] += entry[3] - entry[2]
    for e in evs:
      while stack and stack[-1][0] <= e["ts"]:
        close(stack.pop())
      if stack:
        stack[-1][2] += e["dur"]
      stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], 0.0, e["dur"]])
    while stack:
      close(stack.pop())
  return out


@dataclasses.dataclass
class Profile:
  precision: str
  wall_ms: float
  busy_ms: dict[str, float]
  top: list[tuple[str, str, float]]
  threads: int


def profile_precision(args: argparse.Namespace, precision: str,
                      tmp: str) -> Profile:
  cfg, _ = bench.model_config(args.model, precision, args.remat,
                              bench._parse_overrides(args.set))
  runner = bench.lifejax_runner(cfg, precision, args.batch, args.seq,
                                args.warmup, os.path.join(tmp, precision),
                                keep_hlo=True)
  instrs, comp_ops = parse_hlo(runner.info["hlo_text"])
  trace_dir = os.path.join(tmp, f"trace_{precision}")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    runner.run(args.steps)
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                    recursive=True)
  if not files:
    raise SystemExit(f"no perfetto trace written under {trace_dir}")
  with gzip.open(files[0]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  per_op = self_times(events)
  busy: dict[str, float] = {c: 0.0 for c in CATEGORIES}
  cats = {}
  for op, us in per_op.items():
    cats[op] = categorize(instrs.get(op), comp_ops)
    busy[cats[op]] += us / 1e3 / args.steps
  top = sorted(((op, cats[op], us / 1e3 / args.steps)
                for op, us in per_op.items()), key=lambda t: -t[2])
  return Profile(precision, 1e3 * statistics.median(runner.times), busy,
                 top[:args.top], bench.num_threads())


def report(args: argparse.Namespace, profiles: list[Profile],
           command: str) -> str:
  lines = [f"Command: `{command}`", "",
           f"Model `{args.model}`, batch {args.batch} x seq {args.seq}, "
           f"{args.steps} traced steps after {args.warmup} warmup steps, "
           f"{profiles[0].threads} cores, jax {jax.__version__}. Thread ms "
           "per step (self time; ops may run on both cores at once); share "
           "of the busy time; outside op events = cores x wall - busy "
           "(runtime, idle, and helper-thread work inside another thread's "
           "op).", ""]
  lines.append("| category | " + " | ".join(
      f"{p.precision} ms | {p.precision} share" for p in profiles) + " |")
  lines.append("|---|" + "---|---|" * len(profiles))
  for c in CATEGORIES:
    row = []
    for p in profiles:
      total = sum(p.busy_ms.values())
      row += [f"{p.busy_ms[c]:.1f}", f"{100 * p.busy_ms[c] / total:.0f}%"]
    lines.append(f"| {c} | " + " | ".join(row) + " |")
  row = []
  for p in profiles:
    total = sum(p.busy_ms.values())
    row += [f"{total:.0f}", "100%"]
  lines.append("| **busy total** | " + " | ".join(row) + " |")
  row = []
  for p in profiles:
    idle = p.threads * p.wall_ms - sum(p.busy_ms.values())
    row += [f"{idle:.0f}", f"{100 * idle / (p.threads * p.wall_ms):.0f}% of "
            "cores x wall"]
  lines.append("| outside op events | " + " | ".join(row) + " |")
  lines.append("| wall ms / step (traced) | " + " | ".join(
      f"{p.wall_ms:.0f} | –" for p in profiles) + " |")
  for p in profiles:
    lines += ["", f"Largest ops, {p.precision} (thread ms per step):", "",
              "| op | category | ms |", "|---|---|---|"]
    lines += [f"| {op} | {c} | {ms:.1f} |" for op, c, ms in p.top]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", default="cpu10m")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--precision", default="f32,bf16")
  p.add_argument("--remat", default=None)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=12)
  p.add_argument("--malloc", choices=("default", "tuned"), default="default")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.malloc == "tuned":
    bench.rerun_with_tuned_malloc(__file__, argv)
  command = "python " + " ".join(
      ["tools/profile_train_step.py"] + (sys.argv[1:] if argv is None
                                         else argv))
  profiles = []
  with tempfile.TemporaryDirectory() as tmp:
    for prec in [s for s in args.precision.split(",") if s]:
      if prec not in bench.PRECISIONS:
        raise SystemExit(f"unknown precision {prec!r}; one of "
                         f"{sorted(bench.PRECISIONS)}")
      profiles.append(profile_precision(args, prec, tmp))
  bench.emit(report(args, profiles, command), args.out)


if __name__ == "__main__":
  main()
