"""tools/plan_memory.py: the CLI prints the planner's numbers, and the
committed published-shapes table is what the planner gives today.

The planner itself is checked against XLA in tests/train/test_memory_plan.py.
"""

import importlib.util
import os
import re

from lifejax.train import memory_plan

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "plan_memory", os.path.join(_ROOT, "tools", "plan_memory.py"))
plan_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_memory)
PUBLISHED = os.path.join(_ROOT, "experiments", "memory_planner",
                         "published.md")


def test_cli_prints_the_plan(capsys):
  plan_memory.main(["--model=llama2_7b", "--mesh=1,8,1", "--batch=16",
                    "--seq=4096", "--remat=full", "--backend=gpu"])
  out = capsys.readouterr().out
  cfg = plan_memory.model_config("llama2_7b", remat_policy="full")
  plan = memory_plan.plan(cfg, (1, 8, 1), 16, 4096, backend="gpu")
  shown = float(re.search(r"peak\s+([\d.]+) GiB", out).group(1))
  assert shown == round(plan.peak / plan_memory.GIB, 3)
  assert "(1, 8, 1)" in out and "TFLOP per step" in out


def _rows(text):
  return [line for line in text.splitlines() if line.startswith("| llama")]


def test_committed_published_table_is_current():
  with open(PUBLISHED) as f:
    committed = f.read()
  seq = int(re.search(r"--seq=(\d+)", committed).group(1))
  fresh = plan_memory.published_table("", seq)
  assert _rows(fresh) == _rows(committed), (
      "experiments/memory_planner/published.md is stale: rerun "
      "experiments/memory_planner/run.sh")
