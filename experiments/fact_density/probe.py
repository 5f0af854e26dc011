"""Knowledge ranking of a lifecycle root's pretrained (and SFT) model.

  python experiments/fact_density/probe.py ROOT [ROOT ...]

For each root, the held-out facts' ranking items (world.tasks.ranking_items)
are scored by `pretrain/` (and `sft/` when it exists) and written per fact to
`<root>/<stage>/fact_rank.json`, as the lifecycle's own evaluation writes
them (knowledge.per_fact): for roots recorded before that evaluation
existed.
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
from lifejax.run.layout import RunDir  # noqa: E402
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
  _, facts = knowledge.fact_ranking(graphdef, sharding.fetch(params),
                                     artifacts.load_tokenizer(run), items)
  path = RunDir(run).fact_rank
  with open(path, "w") as f:
    json.dump({"facts": facts}, f)
  return path


def main(roots: list[str]) -> None:
  for root in roots:
    for stage in ("pretrain", "sft"):
      path = probe(root, stage)
      if path:
        print(path, flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
