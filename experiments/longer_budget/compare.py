"""The demo budget against the longer budget, stage by stage.

Reads each lifecycle root's per-stage eval.json and lifecycle.json and
prints one markdown table (and writes it to --out).

  python experiments/longer_budget/compare.py \
    --run="demo=runs/lifecycle" --run="longer=runs/longer_budget" \
    --out=experiments/longer_budget/results.md
"""

from __future__ import annotations

import argparse

from lifejax.eval.report import fmt
from lifejax.eval.runs import read_json
from lifejax.run.layout import LifecycleRoot

TASKS = ("summarize", "reply", "action_items", "fact_qa", "refuse_pii")
ROWS = (
    [("pretrain", "perplexity/general_holdout", "num",
      "pretrain: general-holdout ppl"),
     ("pretrain", "instruct/accuracy", "pct", "pretrain: instruction acc"),
     ("sft", "instruct/accuracy", "pct", "SFT: strict instruction acc"),
     ("sft", "instruct/format", "pct", "SFT: format compliance"),
     ("sft", "instruct/judge", "num", "SFT: judge score")]
    + [("sft", f"instruct/accuracy/{t}", "pct", f"SFT: acc {t}")
       for t in TASKS]
    + [("sft", "perplexity/general_holdout", "num",
        "SFT: general-holdout ppl"),
       ("reward", "pair_accuracy", "pct", "reward model: pair acc"),
       ("dpo", "win_rate_vs_ref", "pct", "DPO: win rate vs SFT"),
       ("dpo", "kl_to_ref", "num", "DPO: KL to SFT"),
       ("ppo", "win_rate_vs_ref", "pct", "PPO: win rate vs SFT"),
       ("ppo", "kl_to_ref", "num", "PPO: KL to SFT")])


def _eval(root: str, stage: str) -> dict:
  return read_json(LifecycleRoot(root).stage(stage).eval, {})


def _seconds(root: str) -> dict[str, float]:
  ledger = read_json(LifecycleRoot(root).ledger, {"stages": []})
  return {s["name"]: s["seconds"] for s in ledger["stages"]}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--run", action="append", required=True,
                  help="label=lifecycle root (repeat)")
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  runs = [item.split("=", 1) for item in args.run]
  lines = ["| metric | " + " | ".join(label for label, _ in runs) + " |",
           "|---|" + "---|" * len(runs)]
  for stage, key, kind, name in ROWS:
    cells = [fmt(_eval(root, stage).get(key), kind) for _, root in runs]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  secs = [_seconds(root) for _, root in runs]
  for stage in ("pretrain", "sft"):
    lines.append(f"| {stage} wall seconds | " + " | ".join(
        fmt(s.get(stage), "int") for s in secs) + " |")
  text = "\n".join(lines) + "\n"
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
