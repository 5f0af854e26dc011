"""experiments/remat: the tiny measurement end to end (compile, planner,
round-robin timing, a memory worker per configuration, the summary), and
the order check the claim is read with."""

import importlib.util
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "remat_experiment", os.path.join(_ROOT, "experiments", "remat",
                                     "remat.py"))
remat = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = remat  # its dataclass looks its module up
_spec.loader.exec_module(remat)


def test_tiny_run_measures_every_configuration(tmp_path):
  md = remat.main(["--tiny", f"--out={tmp_path}"])
  data = json.loads((tmp_path / "results.json").read_text())
  rows = data["rows"]
  assert set(rows) == {c.name for c in remat.configs(tiny=True)}
  for r in rows.values():
    assert 0.8 < r["planner"] / r["xla"]["total"] < 1.25
    rss = r["rss"]
    assert rss["idle"] < rss["ready"] <= rss["peak"]
    assert len(r["step_s"]) == len(r["step_cpu_s"]) == data["shape"]["rounds"]
  # Full remat reruns the forward; the saved policy does not.
  assert rows["xla_full"]["matmul_flops"] > rows["xla_none"]["matmul_flops"]
  assert rows["xla_full"]["xla"]["temp_size_in_bytes"] < (
      rows["xla_none"]["xla"]["temp_size_in_bytes"])
  assert (tmp_path / remat.PLOT).exists()
  assert (tmp_path / "results.md").read_text() == md
  assert "| xla | full |" in md and "| xla | none |" in md


def _rows(mem_time):
  return {f"xla_{p}": {"formulation": "xla", "policy": p,
                       "rss": {"idle": 0.0, "peak": m}, "step_s": [t],
                       "step_cpu_s": [2 * t]}
          for p, (m, t) in mem_time.items()}


def test_order_check_counts_pairs_where_less_memory_is_not_slower():
  ok = remat.order_check(_rows({"full": (1, 3.0), "dots": (2, 2.0),
                                "none": (3, 1.0)}))
  assert ok["by_memory"] == ["xla_full", "xla_dots", "xla_none"]
  assert ok["violations"] == [] and ok["pairs"] == 3
  bad = remat.order_check(_rows({"full": (1, 3.0), "dots": (2, 0.5),
                                 "none": (3, 1.0)}))
  assert bad["violations"] == [("xla_dots", "xla_none")]
  assert remat.order_check(_rows({"full": (1, 3.0), "none": (3, 1.0)}),
                           key="step_cpu_s")["violations"] == []
