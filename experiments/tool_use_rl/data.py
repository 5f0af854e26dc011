"""The tool-use experiment's question sets, partitioned by fact.

Every fact of a generated world (facts/facts.jsonl) is asked in both of its
closed-book question phrasings (`phrasing.question` variants 0 and 1). Facts
are dealt to train / dev / test:

  * every fact the demo's SFT data asks about (a `fact_qa` record of
    instructions/train.jsonl, closed- or open-book) goes to train, so no
    dev or test question is one the SFT model was tuned to answer;
  * the remaining facts, stated in pretraining ("stated") or never stated
    anywhere ("held out": facts/facts.jsonl `heldout`, the world's
    eval/fact_questions), are dealt by a seeded shuffle within each group
    into train / dev / test in `shares`.

Files written (records as the world's instruction records: system + user +
the gold assistant answer, with the judge's fact_qa reference; `group` =
"stated" | "held_out" and `relation` added):

  qa/<split>.jsonl      the questions (prompt records; the RL task)
  direct/<split>.jsonl  SFT conversations answering directly (the
                        memorisation control)
  tool/<split>.jsonl    SFT conversations that call the directory first:
                        "lookup: <subject>", the directory's observation
                        (a user turn), then the gold answer
"""

from __future__ import annotations

import collections
import json
import os
import random
from collections.abc import Sequence
from typing import Any

from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.world import facts as wf
from lifejax.world import phrasing as wp
from lifejax.world import tasks as wtask
from lifejax.world import tools as tools_lib

SPLITS = ("train", "dev", "test")
GROUPS = ("stated", "held_out")
MAX_WORDS = 30  # the world's fact_qa answer budget


def world_facts(world_dir: str) -> wf.Facts:
  """The world's Facts, rebuilt from its manifest and checked against
  facts/facts.jsonl (the distractors need the entity tables)."""
  with open(os.path.join(world_dir, "manifest.json"), encoding="utf-8") as f:
    m = json.load(f)
  facts = wf.build_facts(m["seed"], m["scale"], m.get("entity_scale", 1.0))
  rows = read_jsonl(os.path.join(world_dir, "facts", "facts.jsonl"))
  got = [(f.id, f.subject, f.relation, f.value) for f in facts.facts]
  want = [(r["id"], r["subject"], r["relation"], r["value"]) for r in rows]
  if got != want:
    raise ValueError(f"{world_dir}: facts/facts.jsonl does not match the "
                     "world rebuilt from manifest.json (seed, scale, "
                     "entity_scale): a world from other code?")
  return facts


def partition(world_dir: str, shares: Sequence[float], seed: int = 0
              ) -> dict[str, dict[str, list[str]]]:
  """{split: {group: [fact ids]}} (see the module docstring)."""
  if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-9:
    raise ValueError(f"shares must be 3 non-negative numbers summing to 1, "
                     f"got {shares}")
  rows = read_jsonl(os.path.join(world_dir, "facts", "facts.jsonl"))
  sft_facts = {r["reference"]["fact_id"] for r in read_jsonl(
      os.path.join(world_dir, "instructions", "train.jsonl"))
               if r.get("task") == "fact_qa"}
  out = {s: {g: [] for g in GROUPS} for s in SPLITS}
  rng = random.Random(f"tool_use_rl/{seed}")
  for group in GROUPS:
    ids = [r["id"] for r in rows
           if (group == "held_out") == bool(r["heldout"])]
    seen = [i for i in ids if i in sft_facts]
    if group == "held_out" and seen:
      raise ValueError(f"{world_dir}: held-out facts {seen[:3]} are asked "
                       "in instructions/train.jsonl")
    out["train"][group] += seen
    rest = [i for i in ids if i not in sft_facts]
    rng.shuffle(rest)
    n_train = round(len(rest) * shares[0])
    n_dev = round(len(rest) * shares[1])
    out["train"][group] += rest[:n_train]
    out["dev"][group] += rest[n_train:n_train + n_dev]
    out["test"][group] += rest[n_train + n_dev:]
  return out


def build(world_dir: str, out_dir: str,
          shares: Sequence[float] = (0.4, 0.2, 0.4), seed: int = 0
          ) -> dict[str, Any]:
  """Writes the sets (module docstring) to `out_dir`; returns the counts
  per split and group and the partition's fact ids."""
  facts = world_facts(world_dir)
  by_id = {f.id: f for f in facts.facts}
  directory = tools_lib.Directory.from_world(world_dir)
  system = wtask.SYSTEM.format(company=facts.company)
  parts = partition(world_dir, shares, seed)
  os.makedirs(out_dir, exist_ok=True)
  counts: dict[str, Any] = {}
  for split in SPLITS:
    qa, direct, tool = [], [], []
    for group in GROUPS:
      for fid in parts[split][group]:
        fact = by_id[fid]
        rng = random.Random(f"{fid}/distractors")
        wrong = wf.distractors(facts, fact, rng)
        gold = wp.answer(facts.company, fact)
        for variant in (0, 1):
          question = wp.question(facts.company, fact, variant)
          rec = {"id": f"tu-{split}-{fid}-{variant}", "task": "fact_qa",
                 "group": group, "relation": fact.relation,
                 "reference": {"answer": fact.value, "fact_id": fid,
                               "distractors": wrong, "open_book": False,
                               "max_words": MAX_WORDS}}
          sys_msg = {"role": "system", "content": system}
          qa.append({**rec, "messages": [
              sys_msg, {"role": "user", "content": question},
              {"role": "assistant", "content": gold}]})
          direct.append(qa[-1])
          tool.append({**rec, "id": rec["id"] + "-tool", "messages": [
              sys_msg, *tools_lib.tool_use_messages(
                  directory, question, fact.subject, gold)]})
    for name, recs in (("qa", qa), ("direct", direct), ("tool", tool)):
      write_jsonl(path(out_dir, name, split), recs)
    counts[split] = dict(collections.Counter(r["group"] for r in qa))
  counts["facts"] = parts
  return counts


def path(out_dir: str, kind: str, split: str) -> str:
  """<out_dir>/<kind>/<split>.jsonl (kind: qa | direct | tool); the same
  file names in every kind, so both SFT runs log eval/sft_dev/*."""
  return os.path.join(out_dir, kind, f"{split}.jsonl")
