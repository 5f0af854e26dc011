r"""Adds a "drills" source (repeated random lists) to a curated directory.

The copy-curriculum arm of this experiment: each drill is a random list of
the world's names, products, days, places and numbers, written three times
("List: ...", "Again: ...", "Once more: ..."), so two thirds of its tokens
can only be predicted by copying. Not part of the world or the default
lifecycle; it writes curated/drills/ and a row in the curation report's mix
table so that `lifecycle.pretrain_sources` can name it.

  python experiments/copy_probe/add_drills.py runs/probe_drill50/curated 1.0 [n]

The second argument is the drills' share before normalisation: the other
sources' shares sum to 1 and `lifecycle._curriculum` normalises, so 1.0
gives drills half of the token stream and 0.093 gives 8.5%.
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from lifejax.run import layout  # noqa: E402
from lifejax.world import facts as wf  # noqa: E402
from lifejax.world import text as wt  # noqa: E402


def main(curated: str, share: float, n: int = 1500, seed: int = 7) -> None:
  facts = wf.build_facts(0, 1.0)
  rng = random.Random(seed)
  pool = ([e.first for e in facts.employees] + [p.name for p in facts.products]
          + list(wt.WEEKDAYS) + [d.name for d in facts.departments]
          + list(facts.offices) + [v.name for v in facts.vendors]
          + [str(k) for k in range(2, 400, 7)])
  os.makedirs(os.path.join(curated, "drills"), exist_ok=True)
  words = 0
  with open(os.path.join(curated, "drills", "drills-00000.jsonl"), "w") as f:
    for i in range(n):
      items = ", ".join(rng.choice(pool) for _ in range(rng.randint(6, 14)))
      text = (f"Memory drill {i}.\nList: {items}.\nAgain: {items}.\n"
              f"Once more: {items}.")
      words += len(text.split())
      f.write(json.dumps({"id": f"drills-{i:05d}", "source": "drills",
                          "text": text}) + "\n")
  path = os.path.join(curated, layout.CURATION_REPORT)
  with open(path) as f:
    report = json.load(f)
  report["mix"] = [r for r in report["mix"] if r["source"] != "drills"]
  report["mix"].append({"source": "drills", "docs": n, "words": words,
                        "weight": 1.0, "weighted_words": words,
                        "share": share, "natural_share": 0.0})
  with open(path, "w") as f:
    json.dump(report, f)
  print(f"{n} drills, {words} words -> {curated}/drills (share {share})")


if __name__ == "__main__":
  main(sys.argv[1], float(sys.argv[2]),
       *([int(sys.argv[3])] if len(sys.argv) > 3 else []))
