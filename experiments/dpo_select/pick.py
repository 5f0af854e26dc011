"""Prints "label=run" of the arm with the best dev win rate vs SFT.

  python experiments/dpo_select/pick.py experiments/dpo_select/dev.md

Reads the JSON evaluate.py writes next to the table (dev.json). The pick is
the highest win rate (ties count half); equal win rates go to the arm listed
first (run.sh lists the smaller learning rate and fewer steps first). An arm
whose rows come from another split is refused: selection uses dev only.
"""

import json
import os
import sys


def pick(rows: list[dict]) -> dict:
  if not rows:
    raise ValueError("no arms to pick from")
  wrong = [r["label"] for r in rows if r["split"] != "validation"]
  if wrong:
    raise ValueError(f"arms {wrong} were judged on another split than "
                     "validation; the pick uses the dev prompts only")
  best = max(r["metrics"]["win_rate_vs_ref"] for r in rows)
  return next(r for r in rows if r["metrics"]["win_rate_vs_ref"] == best)


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit(__doc__)
  with open(os.path.splitext(argv[1])[0] + ".json", encoding="utf-8") as f:
    row = pick(json.load(f))
  print(f"{row['label']}={row['run']}")


if __name__ == "__main__":
  main(sys.argv)
