"""The ranking probe in question-answer form: can a model reach a stored
fact from a question that names its subject?

  python experiments/fact_density/qa_probe.py ROOT [STAGE ...] \
      [--split=test] [--out=FILE.json]

For each fact_qa prompt of the root's world split (world.tasks.
qa_ranking_items), the reference answer against the same answer with each
distractor value, scored as the reply's log-likelihood after the chat
prompt (eval.knowledge.answer_hits; SFT's tokenizer and template for every
stage). Prints, per stage (default: pretrain and sft), the share ranked
first with the chance rate, split into closed-book prompts (the answer only
in the model's memory) and open-book ones (an excerpt in the prompt states
it), and the exact binomial test against chance.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from lifejax import sharding
from lifejax.data import sft as sft_data
from lifejax.data.jsonl import read_jsonl
from lifejax.eval import knowledge, stats
from lifejax.model import transformer
from lifejax.run import artifacts
from lifejax.run.layout import LifecycleRoot
from lifejax.world import tasks as wtask


def probe(root: str, stages: list[str], split: str) -> dict:
  lr = LifecycleRoot(root)
  sft_run = lr.stage("sft").root
  cfg = artifacts.load_model_config(sft_run)
  mesh_cfg = sharding.MeshConfig()
  mesh = sharding.make_mesh(mesh_cfg)
  tok = artifacts.load_tokenizer(sft_run)
  render = sft_data.ChatRender(artifacts.load_template(sft_run), tok)
  items = wtask.qa_ranking_items(read_jsonl(lr.world_instructions(split)))
  chance = [1.0 / len(it["answers"]) for it in items]
  out = {"split": split, "items": [it["id"] for it in items],
         "open_book": [it["open_book"] for it in items], "stages": {}}
  for stage in stages:
    graphdef, params = artifacts.load_params(
        lr.stage(stage).root, transformer.Transformer, cfg, mesh,
        mesh_cfg.rules)
    hits = knowledge.answer_hits(graphdef, jax.device_get(params), tok,
                                 render, items)
    row = {"hits": hits}
    for name, keep in (("all", lambda o: True), ("closed", lambda o: not o),
                       ("open", lambda o: o)):
      sel = [i for i, it in enumerate(items) if keep(it["open_book"])]
      if not sel:
        continue
      k, p0 = sum(hits[i] for i in sel), float(np.mean([chance[i]
                                                         for i in sel]))
      row[name] = {"hits": k, "n": len(sel), "accuracy": k / len(sel),
                   "chance": p0, "p": stats.binom_test_p(k, len(sel), p0)}
    out["stages"][stage] = row
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("root")
  ap.add_argument("stages", nargs="*", default=["pretrain", "sft"])
  ap.add_argument("--split", default="test",
                  choices=("train", "validation", "test"))
  ap.add_argument("--out")
  args = ap.parse_args()
  res = probe(args.root, args.stages, args.split)
  for stage, row in res["stages"].items():
    print(f"{stage}: " + "; ".join(
        f"{k} {v['hits']}/{v['n']} = {100 * v['accuracy']:.1f}% (chance "
        f"{100 * v['chance']:.1f}%, p {v['p']:.2g})"
        for k, v in row.items() if k != "hits"))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(res, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
