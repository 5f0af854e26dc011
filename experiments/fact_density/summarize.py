"""Table of the fact-density runs: python summarize.py runs/fact_density"""

import glob
import json
import os
import sys


def main(root: str) -> None:
  rows = []
  for d in sorted(glob.glob(os.path.join(root, "es*_seed*"))):
    with open(os.path.join(d, "world", "manifest.json")) as f:
      man = json.load(f)
    with open(os.path.join(d, "pretrain", "eval.json")) as f:
      ev = json.load(f)
    facts = [json.loads(line) for line in open(
        os.path.join(d, "world", "facts", "facts.jsonl"))]
    mentions = sorted(f["mentions"] for f in facts)
    rows.append((man["entity_scale"], man["seed"], len(facts),
                 sum(mentions) / len(mentions), mentions[len(mentions) // 2],
                 ev.get("fact_probe/accuracy", ev.get("fact_probe_accuracy")),
                 sum(1 for _ in open(os.path.join(
                     d, "world", "eval", "fact_questions.jsonl"))),
                 ev.get("perplexity")))
  print("Command: `experiments/fact_density/run.sh` (demo pretraining, "
        "stopped after its evaluation; this 2-core CPU).\n")
  print("| entity_scale | seed | facts | mentions/fact mean | median | "
        "fact probe | questions | held-out ppl |")
  print("|---|---|---|---|---|---|---|---|")
  for es, seed, n, mean, med, acc, q, ppl in rows:
    acc_s = "—" if acc is None else f"{100 * acc:.1f}%"
    ppl_s = "—" if ppl is None else f"{ppl:.2f}"
    print(f"| {es} | {seed} | {n} | {mean:.1f} | {med} | {acc_s} | "
          f"{q if q is not None else '—'} | {ppl_s} |")


if __name__ == "__main__":
  main(sys.argv[1])
