"""Table of the fact-density runs: python summarize.py runs/fact_density

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


def main(root: str) -> None:
  print("Command: `experiments/fact_density/run.sh` (the demo's pretraining, "
        "`lifecycle/default.gin`, stopped after pretrain or SFT; "
        "`probe.py` for the per-fact ranking; this 2-core CPU).\n")
  print("| entity_scale | restatements | pretrain steps | seed | facts | "
        "mentions mean | median | held-out facts | pretrain rank acc | "
        "excess over chance [95% CI], p | greedy probe | SFT rank acc | "
        "SFT test fact_qa |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  roots = sorted(glob.glob(os.path.join(root, "es*")), key=lambda d: (
      _read(os.path.join(d, "world", "manifest.json"), {}).get(
          "entity_scale", 0), runs.final_step(os.path.join(d, "pretrain"))
      or 0, d))
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
    steps = runs.final_step(os.path.join(d, "pretrain"))
    print(f"| {man['entity_scale']} | {man.get('fact_restatements', 0)} | "
          f"{steps} | {man['seed']} | {len(facts)} | "
          f"{sum(mentions) / len(mentions):.1f} | "
          f"{mentions[len(mentions) // 2]} | {pre[5] if pre else '—'} | {acc} "
          f"| {ex} | {_pct(probe)} | {sft_acc} | {qa_s} |")


if __name__ == "__main__":
  main(sys.argv[1])
