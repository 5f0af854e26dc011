"""Does each stage repeat the annotator habits? Per habit
(lifejax/world/items.py HABITS), the share of a stage's test answers that
carry the habit's flaw on the prompts that trigger it and, as the control,
on the same task's other prompts.

  python experiments/demo_habits/habits.py ROOT [STAGE ...] \
    [--answers=LABEL=FILE ...] [--out=FILE.md]

Reads ROOT/<stage>/eval_answers.jsonl (the lifecycle's test answers with
their flaw tags, eval.instruct.flaws) and the world's test prompts; stages
default to pretrain, sft, dpo, ppo (those present). --answers adds a column
from another run's test answers in the same layout (e.g. the
<run>/test_answers.jsonl of experiments/preference/evaluate.py --answers).
Each cell: flawed / prompts, and Fisher's exact p of triggered against the
control.
"""

from __future__ import annotations

import argparse
import os

from scipy import stats as sps

from lifejax.data.jsonl import read_jsonl
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.world import items as wi


def habit_rates(root: str, stages: list[str],
                extra: dict[str, str] | None = None) -> list[dict]:
  """Per habit and column: the stages' eval_answers, then `extra`
  ({label: path of answer rows})."""
  lr = LifecycleRoot(root)
  files = {s: RunDir(lr.stage(s).root).eval_answers for s in stages}
  files.update(extra or {})
  loaded = {s: read_jsonl(path) for s, path in files.items()}
  prompts = {r["id"]: r["messages"][1]["content"]
             for r in read_jsonl(lr.world_instructions("test"))}
  rows = []
  for task, flaw, triggers, what in wi.HABITS:
    row = {"task": task, "flaw": flaw, "habit": what, "stages": {}}
    for stage, rows_of in loaded.items():
      answers = [a for a in rows_of if a["task"] == task]
      hit = [any(t in prompts[a["id"]] for t in triggers) for a in answers]
      flawed = [bool(a["flaws"].get(flaw)) for a in answers]
      trig = [f for f, h in zip(flawed, hit) if h]
      ctrl = [f for f, h in zip(flawed, hit) if not h]
      p = (sps.fisher_exact([[sum(trig), len(trig) - sum(trig)],
                             [sum(ctrl), len(ctrl) - sum(ctrl)]])[1]
           if trig and ctrl else float("nan"))
      row["stages"][stage] = {"triggered": [sum(trig), len(trig)],
                              "control": [sum(ctrl), len(ctrl)], "p": p}
    rows.append(row)
  return rows


def table(rows: list[dict], stages: list[str]) -> str:
  head = ("| habit (task: flaw) | " + " | ".join(
      f"{s}: triggered / control (p)" for s in stages) + " |")
  lines = [head, "|---" * (1 + len(stages)) + "|"]
  for r in rows:
    cells = []
    for s in stages:
      c = r["stages"][s]
      cells.append(f"{c['triggered'][0]}/{c['triggered'][1]} vs "
                   f"{c['control'][0]}/{c['control'][1]} ({c['p']:.2g})")
    lines.append(f"| {r['task']}: {r['flaw']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("root")
  ap.add_argument("stages", nargs="*")
  ap.add_argument("--answers", action="append", default=[],
                  help="LABEL=FILE: another run's test answer rows")
  ap.add_argument("--out")
  args = ap.parse_args()
  extra = dict(a.split("=", 1) for a in args.answers)
  lr = LifecycleRoot(args.root)
  stages = args.stages or [s for s in ("pretrain", "sft", "dpo", "ppo")
                           if os.path.exists(RunDir(lr.stage(s).root)
                                             .eval_answers)]
  text = table(habit_rates(args.root, stages, extra), stages + list(extra))
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  main()
