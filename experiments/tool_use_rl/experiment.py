"""Tool-use RL (issue 20, "Must show" part 3): does the company directory,
learned by SFT and sharpened by GRPO, raise fact-QA accuracy beyond what
the model memorised?

One arm (`tool`, cell.tool_use_cell) over 3 seeds; each cell trains the
memorisation control (`direct`: SFT answering the train questions
directly), the tool model (`tool`: SFT calling the directory on the same
questions, same budget) and `tool_grpo` (GRPO from `tool` with the
directory in the loop), and answers the dev and test questions with these
three and the demo's SFT model. Seeds vary the SFT data order and the
GRPO sampling; the question sets and the demo's SFT model are one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.tool_use_rl.cell, for gin
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.tool_use_rl import cell as cell_lib  # noqa: E402
from experiments.tool_use_rl import data as data_lib  # noqa: E402

SWEEP = sweep.Sweep(
    arms=[sweep.Arm("tool", labels={"setting": "direct / tool SFT, GRPO "
                                    "with the directory"})],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="tool_use_cell.root",
    seed_params=("tool_use_cell.seed",),
)
BASE_ROOT_PARAM = "tool_use_cell.base_root"

MODELS = [m for m, _, _ in cell_lib.MODELS]
ORACLE = [m for m, _ in cell_lib.ORACLE_CALL]
LABELS = {"sft": "demo SFT, closed book",
          "direct": "+ SFT on direct answers (memorisation)",
          "tool": "+ SFT with the directory",
          "tool_grpo": "+ tool SFT, then GRPO with the directory",
          "tool/oracle_call": "tool, answer turn after the correct call",
          "tool_grpo/oracle_call": "tool_grpo, answer turn after the "
                                   "correct call"}
# (model, baseline): the comparisons the claim rests on
PAIRS = (("tool_grpo", "direct"), ("tool_grpo", "tool"),
         ("tool", "direct"), ("direct", "sft"),
         ("tool/oracle_call", "direct"))
CURVES = (("reward = judge (final answer)", "reward"),
          ("tool-call rate", "tool_call_rate"),
          ("policy entropy (nats/token)", "policy_entropy"),
          ("KL to the tool SFT model", "kl"))


def _cell(cell: sweep.Cell) -> dict[str, Any]:
  its = sorted((r for r in cell.jsonl("tool_grpo", "metrics.jsonl")
                if "reward" in r and "iteration" in r),
               key=lambda r: r["iteration"])
  return {"seed": cell.seed, "res": cell.json(cell_lib.RESULT),
          "rows": cell.jsonl(cell_lib.ANSWERS), "its": its,
          "wall_s": cell.record.get("wall_s", float("nan"))}


def _scores(p: Mapping[str, Any], split: str, model: str,
            group: str | None = None) -> list[float]:
  return [r["correct"] for r in p["rows"]
          if r["split"] == split and r["model"] == model
          and (group is None or r["group"] == group)]


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  per = [_cell(c) for c in sorted(cells, key=lambda c: c.seed)]
  seeds = [p["seed"] for p in per]
  counts = per[0]["res"]["counts"]
  md = ["# Tool-use RL: the company directory vs memorisation"
        + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      f"Seeds {seeds}. Questions per split (both phrasings of each fact; "
      "stated = in the pretraining corpus, held out = stated nowhere): "
      + ", ".join(f"{s} {sum(counts[s].values())} ("
                  + ", ".join(f"{g} {counts[s].get(g, 0)}"
                              for g in data_lib.GROUPS) + ")"
                  for s in data_lib.SPLITS)
      + ". Accuracy = the judge's correctness is 1 (the gold value stated, "
      "no distractor); greedy answers, at most 2 turns with the directory. "
      "Mean ± sd over seeds (the demo's SFT model is one model: sd 0).")
  md.append("")
  for split in [s for s in cell_lib.EVAL_SPLITS
                if s in per[0]["res"]["eval"]]:
    md.append(f"## {split} split\n")
    rows = []
    for m in MODELS + ORACLE:
      es = [p["res"]["eval"][split][m] for p in per]
      tool = m in ("tool", "tool_grpo")
      rows.append({
          "model": m, "what": LABELS[m],
          "accuracy": sweep.fmt_mean_sd([e["accuracy"] for e in es]),
          "stated": sweep.fmt_mean_sd([e["accuracy/stated"] for e in es]),
          "held out": sweep.fmt_mean_sd([e["accuracy/held_out"]
                                         for e in es]),
          "tool-call rate": sweep.fmt_mean_sd([e["tool_call_rate"]
                                               for e in es]),
          "call names the subject": (sweep.fmt_mean_sd(
              [e["call_names_subject"] for e in es]) if tool else "–"),
          "observation holds the answer": (sweep.fmt_mean_sd(
              [e["observation_has_answer"] for e in es]) if tool else "–"),
          "judge": sweep.fmt_mean_sd([e["judge"] for e in es])})
    md.append(sweep.write_table(rows, list(rows[0])))
    md.append("A tool model answers right only if (1) its call names the "
              "question's subject (copied from the question), (2) the "
              "observation then holds the gold value (always, when (1) "
              "holds: the directory lists every fact of the subject), and "
              "(3) the answer turn copies the value out of the "
              "observation; the oracle-call rows measure (3) alone.\n")
    md.append(f"Paired per question ({split}; seeds × questions, the same "
              "question in both models; wins = the first model correct and "
              "the second not; mean diff = the accuracy difference, with a "
              "95% bootstrap CI over pairs; exact sign-test p); the last column is a paired t "
              "over seeds of the per-seed accuracy:\n")
    crow = []
    for x, y in PAIRS:
      for group in (None,) + data_lib.GROUPS:
        a = [v for p in per for v in _scores(p, split, x, group)]
        b = [v for p in per for v in _scores(p, split, y, group)]
        if not a:
          continue
        t = sweep.paired_t([float(np.mean(_scores(p, split, x, group)))
                            for p in per],
                           [float(np.mean(_scores(p, split, y, group)))
                            for p in per])
        crow.append({"comparison": f"{x} − {y}",
                     "questions": group or "all", **sweep.fmt_paired_stats(
                         paired_stats(a, b)),
                     "paired t over seeds": sweep.fmt_paired_t(t)})
    md.append(sweep.write_table(crow, list(crow[0])))
  its = [p["its"] for p in per if p["its"]]
  if its:
    md.append("## GRPO training (train questions, sampled at T = 1)\n")
    trows = []
    for label, key in CURVES:
      first = [i[0][key] for i in its if key in i[0]]
      last = [i[-1][key] for i in its if key in i[-1]]
      if first:
        trows.append({"metric": label,
                      "first iteration": sweep.fmt_mean_sd(first),
                      "last iteration": sweep.fmt_mean_sd(last)})
    md.append(sweep.write_table(trows, ["metric", "first iteration",
                                        "last iteration"]))
  walls = [p["wall_s"] for p in per]
  md.append(f"Cell wall time (two SFT runs, GRPO, 4 models × dev + test "
            f"answers; this machine): {sweep.fmt_mean_sd(walls, 0)} s over "
            f"{len(walls)} cells.\n")
  _plot(per, os.path.join(out_dir, "tool_use_rl.png"))
  md.append("![test accuracy per model and question group (mean ± sd over "
            "seeds); GRPO reward and tool-call rate per iteration]"
            "(tool_use_rl.png)\n")
  return "\n".join(md)


def _plot(per: Sequence[Mapping[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  width = 0.25
  for k, group in enumerate((None,) + data_lib.GROUPS):
    vals = np.array([[np.mean(_scores(p, "test", m, group)) for m in MODELS]
                     for p in per])
    x = np.arange(len(MODELS)) + (k - 1) * width
    axes[0].bar(x, vals.mean(axis=0), width, alpha=0.6,
                yerr=vals.std(axis=0, ddof=1) if len(per) > 1 else 0,
                capsize=3, label=group or "all")
  axes[0].set_xticks(np.arange(len(MODELS)), MODELS)
  axes[0].set(title="test accuracy (mean ± sd over seeds)",
              ylabel="share correct")
  axes[0].legend()
  for ax, (label, key) in zip(axes[1:], CURVES[:2]):
    for p in per:
      rs = [r for r in p["its"] if key in r]
      ax.plot([r["iteration"] for r in rs], [r[key] for r in rs],
              marker=".", label=f"seed {p['seed']}")
    ax.set(title=f"GRPO: {label}", xlabel="iteration")
    ax.legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
