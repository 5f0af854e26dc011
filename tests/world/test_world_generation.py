"""Building, writing and reading the synthetic world."""

import collections
import hashlib
import json
import math
import os
import time

import pytest

from lifejax.world import generator

SMALL = 0.2


def _read_tree(root: str) -> dict[str, bytes]:
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _jsonl(blob: bytes) -> list[dict]:
  return [json.loads(line) for line in blob.decode("utf-8").splitlines()]


def test_default_world_is_small_fast_and_complete():
  start = time.perf_counter()
  world = generator.build_world(seed=0)
  elapsed = time.perf_counter() - start
  m = world.manifest()["counts"]
  docs, chars = sum(m["corpus"].values()), sum(m["corpus_chars"].values())
  print(f"\ndefault world: built in {elapsed:.2f}s, {docs} docs, "
        f"{chars / 1e6:.2f} MB; per source {m['corpus_chars']}; defects "
        f"{m['defects']}")
  assert 2_000 <= docs <= 6_000
  assert 1e6 <= chars <= 3e6
  assert all(m["defects"][k] > 0 for k in generator.DEFECTS)
  assert all(m["flaws"][k] > 0 for k in m["flaws"])
  assert all(n > 0 for split in m["instruction_tasks"].values()
             for n in split.values())
  assert set(m["instruction_tasks"]["train"]) == {
      "summarize", "reply", "action_items", "fact_qa", "refuse_pii"}


def test_generation_is_byte_identical_per_seed(tmp_path):
  a = generator.generate_world(str(tmp_path / "a"), seed=3, scale=SMALL)
  b = generator.generate_world(str(tmp_path / "b"), seed=3, scale=SMALL)
  assert a == b
  tree_a, tree_b = _read_tree(tmp_path / "a"), _read_tree(tmp_path / "b")
  assert sorted(tree_a) == sorted(tree_b) and len(tree_a) > 10
  for path in tree_a:
    assert tree_a[path] == tree_b[path], path


def test_seeds_give_different_worlds(tmp_path):
  generator.generate_world(str(tmp_path / "a"), seed=0, scale=SMALL)
  generator.generate_world(str(tmp_path / "b"), seed=1, scale=SMALL)
  tree_a, tree_b = _read_tree(tmp_path / "a"), _read_tree(tmp_path / "b")
  for path in tree_a:
    if path.endswith(".jsonl"):
      assert tree_a[path] != tree_b[path], path
  ents_a = json.loads(tree_a["facts/entities.json"])
  ents_b = json.loads(tree_b["facts/entities.json"])
  assert ({e["name"] for e in ents_a["employees"]}
          != {e["name"] for e in ents_b["employees"]})


def test_manifest_counts_match_the_files(tmp_path):
  manifest = generator.generate_world(str(tmp_path), seed=2, scale=SMALL)
  tree = _read_tree(tmp_path)
  on_disk = json.loads(tree["manifest.json"])
  assert on_disk == manifest
  assert manifest["seed"] == 2 and manifest["scale"] == SMALL
  counts = manifest["counts"]
  defects, chars = collections.Counter(), {}
  for source in generator.SOURCES:
    docs = _jsonl(tree[f"corpus/{source}.jsonl"])
    assert counts["corpus"][source] == len(docs)
    chars[source] = sum(len(d["text"]) for d in docs)
    defects.update(k for d in docs for k in d["defects"])
    counts["clean_docs"] -= sum(not d["defects"] for d in docs)
  assert counts["clean_docs"] == 0
  assert counts["corpus_chars"] == chars
  assert counts["defects"] == {k: defects.get(k, 0)
                               for k in generator.DEFECTS}
  flaws = collections.Counter()
  for split in generator.SPLITS:
    inst = _jsonl(tree[f"instructions/{split}.jsonl"])
    prefs = _jsonl(tree[f"preferences/{split}.jsonl"])
    assert counts["instructions"][split] == len(inst)
    assert counts["preferences"][split] == len(prefs)
    assert counts["instruction_tasks"][split] == dict(
        collections.Counter(r["task"] for r in inst))
    flaws.update(r["flaw"] for r in prefs)
  assert {k: v for k, v in counts["flaws"].items() if v} == dict(flaws)
  for name in ("fact_questions", "general_holdout", "general_instructions"):
    assert counts["eval"][name] == len(_jsonl(tree[f"eval/{name}.jsonl"]))
  assert counts["facts"] == len(_jsonl(tree["facts/facts.jsonl"]))
  assert set(manifest["files"]) == set(tree) - {"manifest.json"}
  for path, info in manifest["files"].items():
    assert info["sha256"] == hashlib.sha256(tree[path]).hexdigest(), path
    if path.endswith(".jsonl"):
      assert info["records"] == len(_jsonl(tree[path])), path


def test_load_world_round_trips(tmp_path):
  generator.generate_world(str(tmp_path), seed=4, scale=SMALL)
  assert generator.load_world(str(tmp_path)) == generator.build_world(4, SMALL)


def test_scale_grows_the_world():
  small, big = (generator.build_world(0, s).manifest()["counts"]
                for s in (0.1, 0.5))
  for key in ("corpus", "instructions", "preferences"):
    assert sum(big[key].values()) > 2 * sum(small[key].values()), key
  assert big["facts"] > small["facts"]


@pytest.mark.parametrize("seed,scale,error", [
    (0, 0.0, ValueError), (0, -1.0, ValueError), (0, math.nan, ValueError),
    (0, math.inf, ValueError), (0, 1e6, ValueError), (0, "1", ValueError),
    (1.5, 1.0, TypeError), ("0", 1.0, TypeError), (True, 1.0, TypeError)])
def test_bad_arguments_are_rejected(seed, scale, error):
  with pytest.raises(error):
    generator.build_world(seed, scale)


def test_load_world_needs_a_manifest(tmp_path):
  with pytest.raises(FileNotFoundError, match="generate_world"):
    generator.load_world(str(tmp_path))


def test_entity_scale_makes_knowledge_denser():
  """Fewer entities, the same documents: each fact is stated more often."""
  full = generator.build_world(seed=0, scale=0.5)
  dense = generator.build_world(seed=0, scale=0.5, entity_scale=0.4)
  mean = lambda w: sum(f["mentions"] for f in w.facts) / len(w.facts)  # noqa: E731
  assert len(dense.facts) < 0.6 * len(full.facts)
  assert mean(dense) > 1.5 * mean(full)
  assert dense.manifest()["entity_scale"] == 0.4
  assert full.manifest()["entity_scale"] == 1.0
  with pytest.raises(ValueError, match="entity_scale"):
    generator.build_world(seed=0, scale=0.5, entity_scale=0.0)


def test_fact_restatements_state_every_fact_that_often(tmp_path):
  """The staff digest states each fact exactly `fact_restatements` times
  (never twice in one post), in more than one phrasing; the other sources
  are untouched, and a world without it has no digest at all."""
  from lifejax.world import digest, phrasing  # pylint: disable=g-import-not-at-top
  from lifejax.world import facts as facts_lib  # pylint: disable=g-import-not-at-top
  base = generator.build_world(seed=0, scale=SMALL)
  world = generator.build_world(seed=0, scale=SMALL, fact_restatements=5)
  assert "digest" not in base.corpus
  assert "fact_restatements" not in base.manifest()
  for s in generator.SOURCES:
    assert world.corpus[s] == base.corpus[s], s
  counts = collections.Counter()
  for d in world.corpus["digest"]:
    assert len(d["facts"]) == len(set(d["facts"])), d["id"]
    counts.update(d["facts"])
  assert set(counts.values()) == {5}
  assert len(counts) == len(world.facts)
  # The digest's statements of one fact: more than one corpus phrasing.
  row = next(f for f in world.facts if f["relation"] == "employee.office")
  fact = facts_lib.Fact(*(row[k] for k in (
      "id", "entity_type", "entity_id", "subject", "relation", "value")))
  said = "\n".join(d["text"] for d in world.corpus["digest"]
                   if row["id"] in d["facts"])
  used = [v for v in range(len(phrasing.STATEMENTS[row["relation"]]))
          if phrasing.statement(world.company, fact, None, variant=v) in said]
  assert len(used) >= 2, used
  assert len({(d["text"].splitlines()[0].split(",")[0])
              for d in world.corpus["digest"]}) > 1
  mentions = {f["id"]: f["mentions"] for f in world.facts}
  assert all(mentions[f["id"]] == f["mentions"] + 5 for f in base.facts)
  assert world.manifest()["fact_restatements"] == 5
  assert world.manifest()["counts"]["corpus"][digest.SOURCE] == len(
      world.corpus["digest"])
  # Written and read back, digest included.
  generator.generate_world(str(tmp_path), seed=0, scale=SMALL,
                           fact_restatements=5)
  assert generator.load_world(str(tmp_path)).corpus == world.corpus
  with pytest.raises(ValueError, match="fact_restatements"):
    generator.build_world(seed=0, scale=SMALL, fact_restatements=-1)


def test_pronoun_answer_style_changes_only_fact_qa_answers(tmp_path):
  """answer_style="pronoun": every fact_qa answer (reference and flawed
  variants) states the value without naming the subject; prompts, the
  corpus and every other task stay as in the default world, whose manifest
  has no answer_style key."""
  from lifejax.world import judge, phrasing  # pylint: disable=g-import-not-at-top
  from lifejax.world import facts as facts_lib  # pylint: disable=g-import-not-at-top
  base = generator.build_world(seed=0, scale=SMALL)
  world = generator.build_world(seed=0, scale=SMALL, answer_style="pronoun")
  assert "answer_style" not in base.manifest()
  assert world.manifest()["answer_style"] == "pronoun"
  assert world.corpus == base.corpus and world.facts == base.facts
  by_subject = {f["id"]: f for f in world.facts}
  n_qa = 0
  for split in generator.SPLITS:
    for old, new in zip(base.instructions[split], world.instructions[split],
                        strict=True):
      assert old["messages"][:2] == new["messages"][:2]
      if new["task"] != "fact_qa":
        assert old == new
        continue
      n_qa += 1
      said, ref = new["messages"][2]["content"], new["reference"]
      fact = by_subject[ref["fact_id"]]
      if new.get("flaw") in (None, "rude"):
        assert fact["subject"] not in said, said
        assert fact["subject"] in old["messages"][2]["content"]
      if new.get("flaw") is None:
        assert said == phrasing.answer(world.company, facts_lib.Fact(*(
            fact[k] for k in ("id", "entity_type", "entity_id", "subject",
                              "relation", "value"))), style="pronoun")
        assert judge.score(new, said).components["correctness"] == 1.0
      if new.get("flaw") == "rude":
        assert " they " in said or " it " in said, said
    for old, new in zip(base.preferences[split], world.preferences[split],
                        strict=True):
      assert old["prompt"] == new["prompt"]
      if new["task"] != "fact_qa":
        assert old == new
  assert n_qa > 0
  generator.generate_world(str(tmp_path), seed=0, scale=SMALL,
                           answer_style="pronoun")
  back = generator.load_world(str(tmp_path))
  assert back.answer_style == "pronoun"
  assert back.instructions == world.instructions
  with pytest.raises(ValueError, match="answer_style"):
    generator.build_world(seed=0, scale=SMALL, answer_style="terse")


def test_digest_qa_asks_only_the_sft_training_facts(tmp_path):
  """digest_qa=k: the digest's staff FAQ asks each fact of the SFT training
  fact_qa tasks exactly k times (never twice in a post), answered in the
  world's answer style, and never a fact that a validation, test or
  held-out question asks; the statements and other sources stay."""
  from lifejax.world import phrasing  # pylint: disable=g-import-not-at-top
  from lifejax.world import facts as facts_lib  # pylint: disable=g-import-not-at-top
  base = generator.build_world(seed=0, scale=SMALL, fact_restatements=2,
                               answer_style="pronoun")
  world = generator.build_world(seed=0, scale=SMALL, fact_restatements=2,
                                answer_style="pronoun", digest_qa=3)
  assert "digest_qa" not in base.manifest()
  assert world.manifest()["digest_qa"] == 3
  for s in generator.SOURCES:
    assert world.corpus[s] == base.corpus[s], s
  faq = [d for d in world.corpus["digest"] if "\nQ: " in d["text"]]
  statements = [d for d in world.corpus["digest"] if "\nQ: " not in d["text"]]
  assert sorted(d["text"] for d in statements) == sorted(
      d["text"] for d in base.corpus["digest"])
  train = {r["reference"]["fact_id"] for r in world.instructions["train"]
           if r["task"] == "fact_qa"}
  asked_elsewhere = {r["reference"]["fact_id"] for s in ("validation", "test")
                     for r in world.instructions[s] if r["task"] == "fact_qa"}
  asked_elsewhere |= {q["fact_id"] for q in world.eval["fact_questions"]}
  assert train and asked_elsewhere and not train & asked_elsewhere
  counts = collections.Counter()
  rows = {f["id"]: f for f in world.facts}
  for d in faq:
    assert len(d["facts"]) == len(set(d["facts"])), d["id"]
    counts.update(d["facts"])
    for fid in d["facts"]:
      row = rows[fid]
      fact = facts_lib.Fact(*(row[k] for k in (
          "id", "entity_type", "entity_id", "subject", "relation", "value")))
      said = "A: " + phrasing.answer(world.company, fact, style="pronoun")
      assert said in d["text"] and row["subject"] in d["text"]
  assert set(counts) == train and set(counts.values()) == {3}
  generator.generate_world(str(tmp_path), seed=0, scale=SMALL,
                           answer_style="pronoun", digest_qa=3)
  back = generator.load_world(str(tmp_path))
  assert back.digest_qa == 3 and len(back.corpus["digest"]) == len(faq)
  with pytest.raises(ValueError, match="digest_qa"):
    generator.build_world(seed=0, scale=SMALL, digest_qa=-1)


def test_heldout_qa_asks_the_heldout_facts_in_validation_and_test(tmp_path):
  """heldout_qa=True: the validation and test fact_qa prompts ask the
  held-out facts too (each in exactly one of the two splits), so each split
  asks many more distinct facts; no fact is asked in two splits, none of
  them in training or preference data; every training, preference, corpus
  and other evaluation record is the default world's."""
  from lifejax.world import judge  # pylint: disable=g-import-not-at-top
  kw = dict(seed=0, entity_scale=0.33, fact_restatements=2)
  base = generator.build_world(**kw)
  world = generator.build_world(**kw, heldout_qa=True)
  assert "heldout_qa" not in base.manifest()
  assert world.manifest()["heldout_qa"] is True
  assert (world.corpus, world.facts, world.eval) == (base.corpus, base.facts,
                                                     base.eval)
  assert world.instructions["train"] == base.instructions["train"]
  assert world.preferences == base.preferences

  def facts_of(w, split):
    return collections.Counter(r["reference"]["fact_id"]
                               for r in w.instructions[split]
                               if r["task"] == "fact_qa")

  heldout = {f["id"] for f in world.facts if f["heldout"]}
  trained = set(facts_of(world, "train")) | {
      r["reference"]["fact_id"] for s in generator.SPLITS
      for r in world.preferences[s] if r["task"] == "fact_qa"}
  val, test = facts_of(world, "validation"), facts_of(world, "test")
  assert not set(val) & set(test) and not (set(val) | set(test)) & trained
  assert set(val) | set(test) == heldout | set(facts_of(base, "validation")) | (
      set(facts_of(base, "test")))
  assert len(test) >= 4 * len(facts_of(base, "test"))
  for split in ("validation", "test"):
    old, new = base.instructions[split], world.instructions[split]
    assert [r["id"] for r in old] == [r["id"] for r in new]
    assert [r["task"] for r in old] == [r["task"] for r in new]
    assert len({r["messages"][1]["content"] for r in new}) == len(new)
    for a, b in zip(old, new):
      if b["task"] != "fact_qa":
        assert a == b
      else:
        said = b["messages"][2]["content"]
        assert judge.score(b, said).components["correctness"] == 1.0
  generator.generate_world(str(tmp_path), **kw, heldout_qa=True)
  assert generator.load_world(str(tmp_path)).instructions == world.instructions
  with pytest.raises(ValueError, match="heldout_qa"):
    generator.build_world(seed=0, scale=SMALL, heldout_qa=1)


def test_demo_habits_flaw_every_triggered_training_demonstration(tmp_path):
  """demo_habits=True: every SFT training demonstration whose prompt carries
  a habit's trigger (items.HABITS) has that habit's flaw, every other one is
  the default world's (the random demo_flaw_share kept); validation, test,
  preferences and the corpus are unchanged, and the manifest's pool counts
  say so."""
  from lifejax.world import items as wi  # pylint: disable=g-import-not-at-top
  base = generator.build_world(seed=0, scale=SMALL)
  world = generator.build_world(seed=0, scale=SMALL, demo_habits=True)
  assert "demo_habits" not in base.manifest()
  assert world.manifest()["demo_habits"] is True
  assert (world.corpus, world.preferences, world.eval) == (
      base.corpus, base.preferences, base.eval)
  for split in ("validation", "test"):
    assert world.instructions[split] == base.instructions[split]
  triggered = collections.Counter()
  for old, new in zip(base.instructions["train"], world.instructions["train"],
                      strict=True):
    user = new["messages"][1]["content"]
    assert user == old["messages"][1]["content"]
    habit = [(f, ts) for t, f, ts, _ in wi.HABITS
             if t == new["task"] and any(x in user for x in ts)]
    if habit:
      flaw = habit[0][0]
      triggered[new["task"]] += 1
      assert new["flaw"] == flaw, new["id"]
      assert new["messages"][2]["content"] != old["messages"][2][
          "content"] or old.get("flaw") == flaw
    else:
      assert new == old
  # Every habit fires on some training demonstration.
  assert set(triggered) == {h[0] for h in wi.HABITS}
  pool = world.manifest()["counts"]["demo_flaws"]
  assert pool == {k: sum(r.get("flaw") == k for r in
                         world.instructions["train"]) for k in wi.FLAWS}
  assert sum(pool.values()) > sum(base.manifest()["counts"][
      "demo_flaws"].values())
  generator.generate_world(str(tmp_path), seed=0, scale=SMALL,
                           demo_habits=True)
  assert generator.load_world(str(tmp_path)).instructions == (
      world.instructions)
  with pytest.raises(ValueError, match="demo_habits"):
    generator.build_world(seed=0, scale=SMALL, demo_habits="yes")
