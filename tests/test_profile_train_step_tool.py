"""tools/profile_train_step.py: the HLO categories and the self-time
accounting on hand-made inputs, and one real traced step of a tiny model.

Timings are never asserted; only that the profile attributes time to the
categories the way the tool says (the optimizer's named scope is found, the
matmuls are found, nested ops are not counted twice).
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "profile_train_step", os.path.join(_ROOT, "tools",
                                       "profile_train_step.py"))
prof = importlib.util.module_from_spec(_spec)
sys.modules["profile_train_step"] = prof  # its dataclasses look it up
_spec.loader.exec_module(prof)

HLO = """HloModule jit_traced

%fused_dot (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_move (p0: f32[4,4]) -> bf16[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %t = f32[4,4]{0,1} transpose(%p0), dimensions={1,0}
  ROOT %c = bf16[4,4]{1,0} convert(%t)
}

%fused_red (p0: f32[4,4]) -> f32[4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %e = f32[4,4]{1,0} exponential(%p0)
  %z = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%e, %z), dimensions={1}, to_apply=%add
}

%fused_ew (p0: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  ROOT %m = f32[4,4]{1,0} multiply(%p0, %p0)
}

ENTRY %main (a: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %ynn_fusion.3 = f32[4,4]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(traced)/jvp()/dot_general"}
  %copy_fusion = bf16[4,4]{1,0} fusion(%a), kind=kLoop, calls=%fused_move
  %reduce_fusion = f32[4]{0} fusion(%a), kind=kInput, calls=%fused_red
  %multiply_fusion = f32[4,4]{1,0} fusion(%a), kind=kLoop, calls=%fused_ew, metadata={op_name="jit(traced)/optimizer/mul"}
  %loop_fusion = f32[4,4]{1,0} fusion(%a), kind=kLoop, calls=%fused_ew
  ROOT %while.2 = f32[4,4]{1,0} while(%a), condition=%c, body=%b
}
"""


def test_categories_from_hlo():
  instrs, comp_ops = prof.parse_hlo(HLO)
  got = {n: prof.categorize(instrs[n], comp_ops)
         for n in ("ynn_fusion.3", "copy_fusion", "reduce_fusion",
                   "multiply_fusion", "loop_fusion", "while.2")}
  assert got == {"ynn_fusion.3": "matmuls", "copy_fusion": "data movement",
                 "reduce_fusion": "reductions",
                 "multiply_fusion": "optimizer",
                 "loop_fusion": "elementwise", "while.2": "loop control"}
  assert prof.categorize(None, comp_ops) == "elementwise"


def test_self_times_subtract_nested_ops_per_thread():
  def ev(tid, ts, dur, op):
    return {"ph": "X", "tid": tid, "ts": ts, "dur": dur,
            "args": {"hlo_op": op}}
  events = [ev(1, 0, 100, "while.2"), ev(1, 10, 30, "dot.1"),
            ev(1, 50, 20, "loop_fusion"), ev(1, 55, 5, "inner"),
            ev(2, 20, 40, "dot.1"),  # the other core, overlapping in time
            {"ph": "X", "tid": 1, "ts": 0, "dur": 500, "name": "runtime"}]
  got = prof.self_times(events)
  assert got == {"while.2": 50, "dot.1": 70, "loop_fusion": 15, "inner": 5}


def test_real_step_profile_finds_matmuls_and_the_optimizer(tmp_path):
  out = tmp_path / "profile.md"
  prof.main(["--model=test", "--batch=2", "--seq=16", "--precision=f32",
             "--steps=1", "--warmup=1", f"--out={out}"])
  table = out.read_text()
  rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
          for line in table.splitlines() if line.startswith("| ")}
  for c in ("matmuls", "optimizer", "elementwise"):
    assert float(rows[c]) > 0, (c, table)
  assert "Command: `python tools/profile_train_step.py --model=test" in table
