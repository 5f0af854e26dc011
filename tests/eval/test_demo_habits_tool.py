"""experiments/demo_habits/habits.py on the tiny lifecycle: per habit, its
triggered and control counts partition the task's test answers and equal a
by-hand count of the recorded flaw tags."""

import importlib.util
import os

from lifejax.data.jsonl import read_jsonl
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.world import items as wi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def test_habit_rates_count_the_recorded_flaw_tags(tiny_lifecycle):
  spec = importlib.util.spec_from_file_location(
      "demo_habits", os.path.join(REPO, "experiments", "demo_habits",
                                  "habits.py"))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  rows = tool.habit_rates(tiny_lifecycle, ["sft"])
  assert [(r["task"], r["flaw"]) for r in rows] == [h[:2] for h in wi.HABITS]
  lr = LifecycleRoot(tiny_lifecycle)
  users = {r["id"]: r["messages"][1]["content"]
           for r in read_jsonl(lr.world_instructions("test"))}
  answers = read_jsonl(RunDir(lr.stage("sft").root).eval_answers)
  for row, (task, flaw, triggers, _) in zip(rows, wi.HABITS):
    mine = [a for a in answers if a["task"] == task]
    hit = [a for a in mine if any(t in users[a["id"]] for t in triggers)]
    cell = row["stages"]["sft"]
    assert cell["triggered"][1] == len(hit)
    assert cell["triggered"][1] + cell["control"][1] == len(mine)
    assert cell["triggered"][0] == sum(bool(a["flaws"].get(flaw))
                                       for a in hit)
    assert cell["control"][0] == sum(bool(a["flaws"].get(flaw))
                                     for a in mine) - cell["triggered"][0]
  assert tool.table(rows, ["sft"]).count("\n| ") == len(wi.HABITS)
  # Another run's answer rows (same layout) as an extra column: the same
  # file under a label counts the same.
  extra = tool.habit_rates(tiny_lifecycle, [], {
      "copy": RunDir(lr.stage("sft").root).eval_answers})
  counts = lambda c: (c["triggered"], c["control"])  # noqa: E731 (p may be nan)
  assert [counts(r["stages"]["copy"]) for r in extra] == [
      counts(r["stages"]["sft"]) for r in rows]
