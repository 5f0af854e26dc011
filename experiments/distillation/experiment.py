"""Distillation (issue 19, row 14; seeds 003 "Distillation: train a small
model to mimic a large one"): a student a quarter of the demo model's
width, distilled from the demo's pretrained model, against the same
student trained from scratch on the same tokens (README.md).

Arms (each cell: cell.distillation_cell, one distill-stage run):
  scratch  alpha = 1: next-token cross-entropy on the teacher's batches
           (the teacher is not run in the step)
  kd       alpha = 0: forward KL(teacher || student) at T = 1
Seeds vary the student's init and data order (shared by both arms of a
seed); the teacher is one (the demo's pretraining, world seed 0). Every
student is evaluated once, at its final step, on the teacher's held-out
split (the documents the teacher's pretraining held out: no arm trains on
them, nothing is selected on them).
"""

from __future__ import annotations

import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.distillation.cell, as gin imports it
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.run.layout import LifecycleRoot, RunDir  # noqa: E402
from lifejax.run.lineage import read_lineage  # noqa: E402

STUDENTS = ("scratch", "kd")

SWEEP = sweep.Sweep(
    arms=[sweep.Arm("scratch", gin_params=("distill.alpha=1.0",),
                    labels={"alpha": 1.0}),
          sweep.Arm("kd", gin_params=("distill.alpha=0.0",),
                    labels={"alpha": 0.0})],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="distillation_cell.root",
    seed_params=("distillation_cell.seed",))
# The binding of the pretrained base's lifecycle root: the test suite points
# every experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "distillation_cell.base_root"


def _student_eval(cell: sweep.Cell) -> dict[str, float]:
  summary = cell.json("student", "summary.json")
  if not summary or not summary.get("eval"):
    raise ValueError(f"{cell.run_dir}/student: no final evaluation in "
                     "summary.json (did the cell finish?)")
  return summary["eval"]


def _teacher(cell: sweep.Cell) -> dict:
  """The teacher run a student cell read: path, size, build time, probe."""
  lin = read_lineage(os.path.join(cell.run_dir, "student"))
  run = RunDir(lin.details["teacher"])
  base = LifecycleRoot(os.path.dirname(run.root))
  ev = cell.json(os.path.relpath(run.eval, cell.run_dir)) or {}
  ledger = cell.json(os.path.relpath(base.ledger, cell.run_dir)) or {}
  built = [s["seconds"] for s in ledger.get("stages", [])
           if s.get("name") == "pretrain" and s.get("status") != "skipped"]
  return {"run": os.path.relpath(run.root),
          "params": lin.details["teacher_num_params"],
          "student_params": lin.details["num_params"],
          "seconds": (f"{built[-1]:.0f} s for pretraining + its evaluation"
                      if built else "built before this sweep"),
          "fact_probe": ev.get("fact_probe_accuracy", math.nan)}


def _curve(cell: sweep.Cell) -> tuple[list[int], list[float]]:
  rows = [r for r in cell.jsonl("student", "metrics.jsonl")
          if "cross_entropy" in r and "step" in r]
  return [r["step"] for r in rows], [r["cross_entropy"] for r in rows]


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by_arm: dict[str, list[sweep.Cell]] = {}
  for c in cells:
    by_arm.setdefault(c.arm.name, []).append(c)
  evals = {a: {c.seed: _student_eval(c) for c in by_arm.get(a, [])}
           for a in STUDENTS}
  seeds = sorted(set.intersection(*(set(v) for v in evals.values()))
                 if all(evals.values()) else set())
  teacher = _teacher(cells[0]) if cells else {}

  rows = []
  for arm in STUDENTS:
    ev = [evals[arm][s] for s in seeds]
    walls = [c.record.get("wall_s") or math.nan for c in by_arm.get(arm, [])]
    rows.append({
        "arm": arm, "seeds": len(ev),
        "held-out ppl": sweep.fmt_mean_sd([e["eval/perplexity"] for e in ev],
                                          2),
        "held-out CE (nats)": sweep.fmt_mean_sd([e["eval/loss"] for e in ev]),
        "KL(teacher, student)": sweep.fmt_mean_sd([e["eval/kl"] for e in ev]),
        "top-1 agreement": sweep.fmt_mean_sd([e["eval/agreement"]
                                              for e in ev]),
        "next-token acc": sweep.fmt_mean_sd([e["eval/accuracy"]
                                             for e in ev]),
        "wall s / cell": sweep.fmt_mean_sd(walls, 0)})
  teacher_ce = [evals["kd"][s]["eval/teacher_cross_entropy"] for s in seeds]
  test = sweep.paired_t([evals["kd"][s]["eval/loss"] for s in seeds],
                        [evals["scratch"][s]["eval/loss"] for s in seeds])
  ppl_gain = [evals["scratch"][s]["eval/perplexity"]
              - evals["kd"][s]["eval/perplexity"] for s in seeds]

  md = ["# Distillation: results" + (" (tiny scale)" if tiny else ""), ""]
  if teacher_ce:
    md.append(
        f"Teacher: `{teacher['run']}` (the demo's pretraining, "
        f"{teacher['params'] / 1e6:.2f}M parameters, trained once: "
        f"{teacher['seconds']}), held-out perplexity "
        f"{math.exp(teacher_ce[0]):.3f} on the same eval batches (CE "
        f"{teacher_ce[0]:.4f} nats); its fact probe (lifecycle evaluation): "
        f"{teacher['fact_probe']:.1%}. Students: "
        f"{teacher['student_params'] / 1e6:.2f}M parameters.")
    md.append("")
  md.append(sweep.write_table(rows, [
      "arm", "seeds", "held-out ppl", "held-out CE (nats)",
      "KL(teacher, student)", "top-1 agreement", "next-token acc",
      "wall s / cell"]))
  md.append(
      f"Paired over seeds {seeds}: held-out CE kd - scratch = "
      f"{test['mean_diff']:+.4f} nats (95% CI {test['ci_lo']:+.4f} .. "
      f"{test['ci_hi']:+.4f}), paired t-test p = {test['p']:.2g}; "
      "perplexity scratch - kd per seed: "
      + ", ".join(f"{g:+.2f}" for g in ppl_gain) + ".")
  md.append("")
  md.append(sweep.write_table(
      [{"seed": s, **{f"{a} ppl": evals[a][s]["eval/perplexity"]
                      for a in STUDENTS},
        "scratch - kd": g} for s, g in zip(seeds, ppl_gain)],
      ["seed"] + [f"{a} ppl" for a in STUDENTS] + ["scratch - kd"]))
  md.append("Mean ± sample sd over seeds. Held-out = the documents the "
            "teacher's pretraining held out (its eval split), evaluated "
            "once at the final step; KL, agreement and the teacher's CE are "
            "on the same batches (KL = forward KL(teacher || student) per token at "
            "T = 1). A cell's wall time includes building the teacher when "
            "the sweep had to. Plot: `distillation.png`.")
  _plot(by_arm, evals, seeds, teacher_ce, os.path.join(out_dir,
                                                       "distillation.png"))
  return "\n".join(md) + "\n"


def _plot(by_arm, evals, seeds, teacher_ce, path):
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"scratch": "tab:gray", "kd": "tab:blue"}
  for arm in STUDENTS:
    for i, c in enumerate(by_arm.get(arm, [])):
      steps, ce = _curve(c)
      ax1.plot(steps, ce, color=colors[arm], alpha=0.7,
               label=arm if i == 0 else None)
  ax1.set_xlabel("step")
  ax1.set_ylabel("train next-token CE (nats)")
  ax1.set_title("student training curves (one line per seed)")
  ax1.legend()
  for j, arm in enumerate(STUDENTS):
    ys = [evals[arm][s]["eval/perplexity"] for s in seeds]
    ax2.scatter([j] * len(ys), ys, color=colors[arm], zorder=3)
    if ys:
      ax2.hlines(sum(ys) / len(ys), j - 0.2, j + 0.2, color=colors[arm])
  for s in seeds:
    ax2.plot([0, 1], [evals[a][s]["eval/perplexity"] for a in STUDENTS],
             color="lightgray", zorder=1)
  if teacher_ce:
    ax2.axhline(math.exp(teacher_ce[0]), color="tab:green", ls="--",
                label="teacher")
    ax2.legend()
  ax2.set_xticks(range(len(STUDENTS)), STUDENTS)
  ax2.set_xlim(-0.5, len(STUDENTS) - 0.5)
  ax2.set_ylabel("held-out perplexity")
  ax2.set_title("final students, paired by seed")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
