"""The tool-use experiment's question sets (experiments/tool_use_rl/data.py):
facts dealt to train / dev / test with no leak from the demo's SFT data,
both phrasings per fact, direct and tool conversations whose answers the
judge scores correct, and a tool observation that holds the gold answer."""

import os
import sys

import pytest

from lifejax.data.jsonl import read_jsonl
from lifejax.world import generator
from lifejax.world import judge

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from experiments.tool_use_rl import data  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  generator.generate_world(str(out), seed=0, scale=0.2)
  return str(out)


def test_sets_partition_facts_without_leaks(world, tmp_path):
  counts = data.build(world, str(tmp_path), shares=(0.4, 0.2, 0.4))
  facts = {r["id"]: r for r in read_jsonl(
      os.path.join(world, "facts", "facts.jsonl"))}
  parts = counts["facts"]
  ids = {s: {f for g in data.GROUPS for f in parts[s][g]}
         for s in data.SPLITS}
  # every fact in exactly one split
  assert sum(len(v) for v in ids.values()) == len(facts)
  assert set().union(*ids.values()) == set(facts)
  # the demo's SFT data asks about train facts only
  sft = {r["reference"]["fact_id"] for r in read_jsonl(
      os.path.join(world, "instructions", "train.jsonl"))
         if r["task"] == "fact_qa"}
  assert sft and sft <= ids["train"]
  # groups follow the world's held-out flag; both groups reach dev and test
  for s in data.SPLITS:
    for g in data.GROUPS:
      assert all(facts[f]["heldout"] == (g == "held_out")
                 for f in parts[s][g])
  for s in ("dev", "test"):
    assert parts[s]["stated"] and parts[s]["held_out"]
  for s in data.SPLITS:
    qa = read_jsonl(data.path(str(tmp_path), "qa", s))
    tool = read_jsonl(data.path(str(tmp_path), "tool", s))
    direct = read_jsonl(data.path(str(tmp_path), "direct", s))
    assert len(qa) == len(tool) == len(direct) == 2 * len(ids[s])
    assert {r["reference"]["fact_id"] for r in qa} == ids[s]
    assert len({r["messages"][1]["content"] for r in qa}) == len(qa)
    assert counts[s] == {g: 2 * len(parts[s][g]) for g in data.GROUPS
                         if parts[s][g]}
    for q, t in zip(qa, tool):
      fact = facts[q["reference"]["fact_id"]]
      gold = q["messages"][-1]["content"]
      assert judge.score(q, gold).components["correctness"] == 1.0
      call, obs, answer = (m["content"] for m in t["messages"][2:])
      assert call == f"lookup: {fact['subject']}"
      assert gold == answer == fact["statement"]
      assert gold in obs
      assert [m["role"] for m in t["messages"]] == [
          "system", "user", "assistant", "user", "assistant"]


def test_partition_is_seeded_and_checks_shares(world):
  a = data.partition(world, (0.4, 0.2, 0.4), seed=0)
  assert a == data.partition(world, (0.4, 0.2, 0.4), seed=0)
  assert a != data.partition(world, (0.4, 0.2, 0.4), seed=1)
  with pytest.raises(ValueError, match="shares"):
    data.partition(world, (0.5, 0.5, 0.5))


def test_world_facts_refuses_a_mismatched_table(world, tmp_path):
  import shutil
  other = tmp_path / "w"
  shutil.copytree(world, other)
  path = other / "facts" / "facts.jsonl"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[1:]) + "\n")
  with pytest.raises(ValueError, match="does not match"):
    data.world_facts(str(other))
