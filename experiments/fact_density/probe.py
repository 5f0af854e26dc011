"""Knowledge ranking of a lifecycle root's pretrained (and SFT) model.

  python experiments/fact_density/probe.py ROOT [ROOT ...]

For each root, the held-out facts' ranking items (world.tasks.ranking_items,
the lifecycle's own `fact_rank/*` eval) are scored by `pretrain/` (and `sft/`
when it exists) and written per fact to `<root>/<stage>/fact_rank.json`:
{"facts": {fact_id: {"hits": [...], "candidates": k, "mentions": n}}}. The
lifecycle computes the same aggregates in its evaluation; this script adds
the per-fact rows the significance test needs, and serves roots recorded
before the ranking eval existed.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from lifejax import sharding  # noqa: E402
from lifejax.data.jsonl import read_jsonl  # noqa: E402
from lifejax.eval import knowledge  # noqa: E402
from lifejax.model import transformer  # noqa: E402
from lifejax.run import artifacts  # noqa: E402
from lifejax.world import tasks as wtask  # noqa: E402


def probe(root: str, stage: str) -> str | None:
  run = os.path.join(root, stage)
  if not os.path.isdir(os.path.join(run, "checkpoints")):
    return None
  with open(os.path.join(root, "world", "manifest.json")) as f:
    man = json.load(f)
  facts = read_jsonl(os.path.join(root, "world", "facts", "facts.jsonl"))
  held = {q["fact_id"] for q in read_jsonl(
      os.path.join(root, "world", "eval", "fact_questions.jsonl"))}
  items = wtask.ranking_items(man["company"], facts, held, man["seed"])
  mesh_cfg = sharding.MeshConfig(data=1, fsdp=1, model=1)
  cfg = artifacts.load_model_config(run)
  graphdef, params = artifacts.load_params(
      run, transformer.Transformer, cfg, sharding.make_mesh(mesh_cfg),
      mesh_cfg.rules)
  hits = knowledge.item_hits(graphdef, sharding.fetch(params),
                             artifacts.load_tokenizer(run), items)
  mentions = {f["id"]: f["mentions"] for f in facts}
  out: dict[str, dict] = {}
  for it, hit in zip(items, hits):
    row = out.setdefault(it["fact_id"], {
        "hits": [], "candidates": len(it["statements"]),
        "relation": it["relation"], "mentions": mentions[it["fact_id"]]})
    row["hits"].append(hit)
  path = os.path.join(run, "fact_rank.json")
  with open(path, "w") as f:
    json.dump({"facts": out}, f)
  return path


def main(roots: list[str]) -> None:
  for root in roots:
    for stage in ("pretrain", "sft"):
      path = probe(root, stage)
      if path:
        print(path, flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
