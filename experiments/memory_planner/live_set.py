"""What XLA holds at the peak of the compiled train step, buffer by buffer.

  python experiments/memory_planner/live_set.py 0      # VALIDATION row 0
  python experiments/memory_planner/live_set.py 9 --top=60

Compiles one row of `tools/plan_memory.py`'s VALIDATION set on 8 simulated
CPU devices with the HLO dumped as a proto, replays the heap simulator's
trace of the temp allocation (ALLOC / FREE / SHARE_WITH events; a shared
buffer is freed with the last of its sharers), and prints the buffers live
at the peak: size, defining instruction, shape, computation (`main` = the
step, a while body = a layer or microbatch loop). This is how the planner's
live-set counts (`lifejax/train/memory_plan.py`) were read.
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import os
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def live_at_peak(proto_path: str) -> tuple[int, list[tuple[int, str, str,
                                                             str]]]:
  """(peak bytes, [(bytes, instruction, shape, computation)]) of the
  heap-simulated temp allocation."""
  from tensorflow.compiler.xla import xla_data_pb2
  from tensorflow.compiler.xla.service import hlo_pb2

  proto = hlo_pb2.HloProto()
  with open(proto_path, "rb") as f:
    proto.ParseFromString(f.read())
  assignment = proto.buffer_assignment
  buffers = {b.id: b for b in assignment.logical_buffers}
  insts = {i.id: (c.name, i.name, i.shape)
           for c in proto.hlo_module.computations for i in c.instructions}

  def describe(buffer_id):
    b = buffers[buffer_id]
    comp, name, shape = insts[b.defined_at.instruction_id]
    for i in b.defined_at.shape_index:
      shape = shape.tuple_shapes[i]
    dtype = xla_data_pb2.PrimitiveType.Name(shape.element_type).lower()
    return name, f"{dtype}{list(shape.dimensions)}", comp

  group, members, size = {}, collections.defaultdict(set), {}
  cur = peak = 0
  at_peak: dict[int, int] = {}
  trace = assignment.heap_simulator_traces[0]
  for ev in trace.events:
    bid = ev.buffer_id
    if ev.kind == ev.ALLOC:
      group[bid] = bid
      members[bid].add(bid)
      size[bid] = buffers[bid].size
      cur += buffers[bid].size
    elif ev.kind == ev.SHARE_WITH:
      g = group[ev.share_with_canonical_id]
      group[bid] = g
      members[g].add(bid)
    elif ev.kind == ev.FREE and bid in group:
      g = group[bid]
      members[g].discard(bid)
      if not members[g]:
        cur -= size.pop(g, 0)
    if cur > peak:
      peak, at_peak = cur, dict(size)
  rows = sorted(((s, *describe(g)) for g, s in at_peak.items()),
                reverse=True)
  return peak, rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("row", type=int, help="index into VALIDATION")
  p.add_argument("--top", type=int, default=40)
  args = p.parse_args()
  dump = tempfile.mkdtemp(prefix="lifejax_xla_dump_")
  os.environ["XLA_FLAGS"] = (
      "--xla_force_host_platform_device_count=8 --xla_dump_hlo_as_proto "
      f"--xla_dump_to={dump} --xla_dump_hlo_module_re=jit_traced")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  spec = importlib.util.spec_from_file_location(
      "plan_memory", os.path.join(_ROOT, "tools", "plan_memory.py"))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  from lifejax.model.config import TransformerConfig
  from lifejax.train import memory_plan

  over, mesh, batch, seq, micro = tool.VALIDATION[args.row]
  cfg = TransformerConfig(**{**tool._SHAPE, **tool.XLA_PATH, **over})
  xla = tool.xla_memory(cfg, mesh, batch, seq, micro)
  plan = memory_plan.plan(cfg, mesh, batch, seq, microbatches=micro,
                          backend="cpu")
  proto = sorted(glob.glob(f"{dump}/*after_optimizations.hlo.pb"))[-1]
  peak, rows = live_at_peak(proto)
  mib = 1 << 20
  print(f"row {args.row}: {tool._describe(over)} {cfg.remat_policy} mesh "
        f"{mesh} batch {batch} x {seq} / {micro}")
  print(f"XLA temp {xla['temp_size_in_bytes'] / mib:.2f} MiB, live at the "
        f"heap-simulated peak {peak / mib:.2f} MiB; planner phases (MiB): "
        + ", ".join(f"{k} {v / mib:.2f}" for k, v in plan.phases.items()))
  for size, name, shape, comp in rows[:args.top]:
    print(f"  {size:>11,} {shape:<28} {name[:36]:<36} {comp[:36]}")
  rest = rows[args.top:]
  print(f"  {sum(r[0] for r in rest):>11,} in {len(rest)} smaller buffers")


if __name__ == "__main__":
  sys.exit(main())
