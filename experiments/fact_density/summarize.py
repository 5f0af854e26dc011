"""Table (stdout) and plot of the fact-density runs:
python summarize.py runs/fact_density [PLOT.png]

One row per run root (`es<entity_scale>_r<restatements>_seed<seed>`):
the world's facts and mentions, the pretrained model's fact ranking on the
held-out facts (per fact: the share of its phrasings whose true statement
ranks first, minus 1 / candidates; mean, 95% CI and a one-sample t-test
across facts), the greedy fact probe, and, when the root ran SFT, SFT's
ranking and its test fact_qa accuracy.
"""

import glob
import json
import os
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from lifejax.eval import runs  # noqa: E402


def _read(path, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _rank(run: str):
  """(accuracy, chance, mean excess, CI half-width, p, facts) or None."""
  data = _read(os.path.join(run, "fact_rank.json"))
  if not data:
    return None
  rows = list(data["facts"].values())
  acc = np.mean([h for r in rows for h in r["hits"]])
  chance = np.mean([1 / r["candidates"] for r in rows for _ in r["hits"]])
  excess = np.array([np.mean(r["hits"]) - 1 / r["candidates"] for r in rows])
  half = stats.t.ppf(0.975, len(excess) - 1) * stats.sem(excess)
  p = stats.ttest_1samp(excess, 0.0, alternative="greater").pvalue
  return acc, chance, excess.mean(), half, p, len(rows)


def _fact_qa(run: str):
  """(correct, n) of SFT's test fact_qa answers, or None."""
  path = os.path.join(run, "eval_answers.jsonl")
  if not os.path.exists(path):
    return None
  rows = [json.loads(line) for line in open(path)]
  qa = [r for r in rows if r.get("task") == "fact_qa"]
  return sum(bool(r.get("correct")) for r in qa), len(qa)


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f}%"


def _rank_cell(r):
  if r is None:
    return "—", "—"
  acc, chance, ex, half, p, _ = r
  return (f"{_pct(acc)} (chance {_pct(chance)})",
          f"{100 * ex:+.1f} [{100 * (ex - half):+.1f}, {100 * (ex + half):+.1f}]"
          f", p {p:.1g}")


def _plot(points, path: str) -> None:
  """Rank accuracy (with its per-fact 95% CI) against chance, per arm."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(points) + 1.4))
  labelled = set()
  for i, (label, stage_ranks) in enumerate(points[::-1]):
    for j, (stage, r) in enumerate(stage_ranks):
      if r is None:
        continue
      acc, chance, ex, half, _, _ = r
      y = i + (0.15 if j else -0.15)
      ax.errorbar(acc, y, xerr=half, fmt="o", color=f"C{j}", capsize=3,
                  label=None if stage in labelled else stage)
      ax.plot(chance, y, "|", color="k", markersize=12,
              label=None if "chance" in labelled else "chance")
      labelled |= {stage, "chance"}
  ax.set_yticks(range(len(points)), [p[0] for p in points[::-1]], fontsize=8)
  ax.set_xlim(0, 1)
  ax.set_xlabel("held-out facts: true value ranked first (share of items;"
                "\nbars: 95% CI of the excess over chance, across facts)",
                fontsize=8)
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title("What the demo's 10M model stores", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(root: str, plot: str | None = None) -> None:
  print("Command: `experiments/fact_density/run.sh` (the demo's pretraining, "
        "`lifecycle/default.gin`, stopped after pretrain or SFT; "
        "`probe.py` for the per-fact ranking; this 2-core CPU).\n")
  print("| entity_scale | restatements | pretrain steps | seed | facts | "
        "mentions mean | median | held-out facts | pretrain rank acc | "
        "excess over chance [95% CI], p | greedy probe | SFT rank acc | "
        "SFT test fact_qa |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  def order(d):
    man = _read(os.path.join(d, "world", "manifest.json"), {})
    return (man.get("entity_scale", 0),
            runs.final_step(os.path.join(d, "pretrain")) or 0,
            man.get("fact_restatements", 0), d)

  roots = sorted(glob.glob(os.path.join(root, "es*")), key=order)
  points = []
  for d in roots:
    man = _read(os.path.join(d, "world", "manifest.json"))
    ev = _read(os.path.join(d, "pretrain", "eval.json"), {})
    if man is None:
      continue
    facts = [json.loads(line) for line in open(
        os.path.join(d, "world", "facts", "facts.jsonl"))]
    mentions = sorted(f["mentions"] for f in facts)
    pre = _rank(os.path.join(d, "pretrain"))
    sft = _rank(os.path.join(d, "sft"))
    qa = _fact_qa(os.path.join(d, "sft"))
    acc, ex = _rank_cell(pre)
    sft_acc, _ = _rank_cell(sft)
    probe = ev.get("fact_probe/accuracy", ev.get("fact_probe_accuracy"))
    qa_s = "—" if qa is None else f"{qa[0]}/{qa[1]} ({100 * qa[0] / qa[1]:.0f}%)"
    points.append((f"entity_scale {man['entity_scale']}, restatements "
                   f"{man.get('fact_restatements', 0)}, "
                   f"{runs.final_step(os.path.join(d, 'pretrain'))} steps",
                   [("pretrain", pre), ("SFT", sft)]))
    steps = runs.final_step(os.path.join(d, "pretrain"))
    print(f"| {man['entity_scale']} | {man.get('fact_restatements', 0)} | "
          f"{steps} | {man['seed']} | {len(facts)} | "
          f"{sum(mentions) / len(mentions):.1f} | "
          f"{mentions[len(mentions) // 2]} | {pre[5] if pre else '—'} | {acc} "
          f"| {ex} | {_pct(probe)} | {sft_acc} | {qa_s} |")
  if plot and points:
    _plot(points, plot)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
