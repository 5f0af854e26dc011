"""Instruction tasks, preference pairs and held-out sets of the world."""

import os
import re

import pytest

from lifejax.world import generator
from lifejax.world import judge

TASKS = {"summarize", "reply", "action_items", "fact_qa", "refuse_pii"}
FLAWS_OK = {
    "summarize": {"vague", "verbose", "wrong_fact", "wrong_format", "rude"},
    "reply": {"vague", "verbose", "wrong_fact", "wrong_format", "rude"},
    "action_items": {"vague", "verbose", "wrong_fact", "wrong_format"},
    "fact_qa": {"vague", "verbose", "wrong_fact", "wrong_format", "rude"},
    "refuse_pii": {"unsafe_compliance", "vague", "verbose", "rude"},
}


@pytest.fixture(scope="module")
def world() -> generator.World:
  return generator.build_world(seed=7, scale=0.5)


def _user(record: dict) -> str:
  turns = record["messages"] if "messages" in record else record["prompt"]
  return [m["content"] for m in turns if m["role"] == "user"][-1]


def _all_records(world):
  for split in generator.SPLITS:
    for r in world.instructions[split]:
      yield "instructions", split, r
    for r in world.preferences[split]:
      yield "preferences", split, r


def _grams(text: str, n: int = 13) -> set[tuple[str, ...]]:
  t = re.findall(r"\w+", text.lower())
  return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


def test_instruction_records_follow_the_schema(world):
  for split in generator.SPLITS:
    assert world.instructions[split] and world.preferences[split]
    assert {r["task"] for r in world.instructions[split]} == TASKS
    for r in world.instructions[split]:
      roles = [m["role"] for m in r["messages"]]
      assert roles == ["system", "user", "assistant"], r["id"]
      assert all(m["content"].strip() for m in r["messages"])
      assert isinstance(r["reference"], dict)
    for r in world.preferences[split]:
      assert [m["role"] for m in r["prompt"]] == ["system", "user"]
      assert r["flaw"] in FLAWS_OK[r["task"]], (r["task"], r["flaw"])
      assert r["chosen"] != r["rejected"]


def test_splits_are_disjoint(world):
  ids, prompts, units = set(), {}, {}
  for kind, split, r in _all_records(world):
    assert r["id"] not in ids
    ids.add(r["id"])
    owner = prompts.setdefault(_user(r), (kind, split))
    assert owner == (kind, split), (r["id"], owner)
    ref = r["reference"]
    unit = (ref.get("fact_id") if r["task"] == "fact_qa" else
            ref.get("employee") if r["task"] == "refuse_pii" else None)
    if unit is not None:
      owner = units.setdefault(unit, (kind, split))
      assert owner == (kind, split), (r["id"], unit, owner)


def test_eval_questions_are_held_out_and_uncontaminated(world):
  facts = {f["id"]: f for f in world.facts}
  held = {q["fact_id"] for q in world.eval["fact_questions"]}
  assert held == {f["id"] for f in world.facts if f["heldout"]}
  for q in world.eval["fact_questions"]:
    assert q["answer"] == facts[q["fact_id"]]["value"]
    assert facts[q["fact_id"]]["subject"] in q["question"]
  relations = {facts[f]["relation"] for f in held}
  assert relations == {f["relation"] for f in world.facts}
  eval_grams = set()
  for q in world.eval["fact_questions"]:
    eval_grams |= _grams(f"{q['question']} {q['answer']}")
  for _, _, r in _all_records(world):
    assert r["reference"].get("fact_id") not in held
    texts = [_user(r)] + ([r["messages"][-1]["content"]] if "messages" in r
                          else [r["chosen"], r["rejected"]])
    for text in texts:
      assert not _grams(text) & eval_grams, r["id"]


def test_tasks_never_state_held_out_facts(world):
  held = [f for f in world.facts if f["heldout"]]
  for _, _, r in _all_records(world):
    turns = r["messages"] if "messages" in r else r["prompt"]
    texts = [m["content"] for m in turns] + (
        [r["chosen"], r["rejected"]] if "chosen" in r else [])
    for text in texts:
      for sentence in re.split(r"[.!?\n]+", text):
        for f in held:
          assert not (f["subject"] in sentence and f["value"] in sentence), (
              r["id"], f["id"], sentence)


def test_references_agree_with_the_world(world):
  facts = {f["id"]: f for f in world.facts}
  people = {e["name"]: e for e in world.entities["employees"]}
  for _, _, r in _all_records(world):
    ref, user = r["reference"], _user(r)
    gold = r["messages"][-1]["content"] if "messages" in r else r["chosen"]
    if r.get("flaw") and "messages" in r:  # a flawed demonstration
      gold = None
    if r["task"] == "fact_qa":
      assert ref["answer"] == facts[ref["fact_id"]]["value"]
      assert ref["answer"] not in ref["distractors"]
      assert gold is None or ref["answer"] in gold
      if ref["open_book"]:
        assert ref["answer"] in user
    elif r["task"] == "refuse_pii":
      e = people[ref["employee"]]
      assert ref["private_values"] == [e["email"], e["phone"]]
      assert e["name"] in user
      assert gold is None or not any(v in gold for v in ref["private_values"])
    elif r["task"] == "summarize":
      assert len(ref["points"]) == 3
      for p in ref["points"]:
        assert all(k in user for k in p["keywords"]), p
    elif r["task"] == "action_items":
      for item in ref["items"]:
        assert item["owner"] in user and item["due"] in user
        assert item["task"] in user
    elif gold is not None:
      assert all(m in gold for m in ref["must_mention"])
      assert gold.splitlines()[-1] == ref["signer"]


def test_unsafe_rejections_leak_and_chosen_never_does(world):
  unsafe = [r for _, _, r in _all_records(world)
            if r.get("flaw") == "unsafe_compliance" and "rejected" in r]
  assert unsafe
  for r in unsafe:
    assert any(v in r["rejected"] for v in r["reference"]["private_values"])
    assert not any(v in r["chosen"] for v in r["reference"]["private_values"])


def test_judge_prefers_every_chosen_response(world):
  for split in generator.SPLITS:
    for r in world.preferences[split]:
      result = judge.compare(r, r["chosen"], r["rejected"])
      assert result.winner == "a", (r["id"], r["flaw"], result)


def test_reference_answers_get_near_full_marks(world):
  for split in generator.SPLITS:
    for r in world.instructions[split]:
      if r.get("flaw"):  # a flawed demonstration (the mixed-quality pool)
        continue
      s = judge.score(r, r["messages"][-1]["content"])
      assert s.total >= 0.95, (r["id"], s)
  for r in world.eval["general_instructions"]:
    assert judge.score(r, r["messages"][-1]["content"]).total >= 0.95


def _solve(question: str) -> str:
  """An independent solver for the general instruction templates."""
  days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
          "Sunday"]
  numbers = ["zero", "one", "two", "three", "four", "five", "six"]
  units = {("metres", "kilometres"): 1000, ("minutes", "hours"): 60,
           ("seconds", "minutes"): 60, ("grams", "kilograms"): 1000,
           ("hours", "days"): 24, ("centimetres", "metres"): 100}
  if m := re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", question):
    a, op, b = int(m[1]), m[2], int(m[3])
    return str({"plus": a + b, "minus": a - b, "times": a * b}[op])
  if m := re.fullmatch(r"How many letters are in the word (\w+)\?", question):
    return str(len(m[1]))
  if m := re.fullmatch(r"Spell the word (\w+) backwards\.", question):
    return "".join(reversed(m[1]))
  if m := re.fullmatch(r"Put these words in alphabetical order: (.*)\.",
                       question):
    return ", ".join(sorted(m[1].split(", ")))
  if m := re.fullmatch(r"Which day of the week comes (\w+) days after (\w+)\?",
                       question):
    return days[(days.index(m[2]) + numbers.index(m[1])) % 7]
  if m := re.fullmatch(r"How many (\w+) are there in (\d+) (\w+)\?", question):
    return str(int(m[2]) * units[(m[1], m[3])])
  if m := re.fullmatch(r"Which number is larger, (\d+) or (\d+)\?", question):
    return str(max(int(m[1]), int(m[2])))
  raise AssertionError(f"unknown general instruction: {question}")


def test_general_instructions_have_correct_answers(world):
  items = world.eval["general_instructions"]
  assert len(items) >= 10
  for r in items:
    assert r["task"] == "general"
    assert r["reference"]["answer"] == _solve(_user(r)), r
    assert r["reference"]["answer"] in r["messages"][-1]["content"]


def test_general_holdout_is_unseen_general_text(world):
  corpus = {d["text"] for s in generator.SOURCES for d in world.corpus[s]}
  company_words = {world.company.split()[0].lower()} | {
      p["name"].split()[0].lower() for p in world.entities["products"]}
  holdout = world.eval["general_holdout"]
  assert len(holdout) >= 10
  for h in holdout:
    assert h["text"] not in corpus
    assert not set(re.findall(r"\w+", h["text"].lower())) & company_words
    assert len(h["text"].split()) >= 50


def test_sft_demonstrations_are_a_mixed_quality_pool(world):
  """A stated share of the training demonstrations carries one of its
  task's flaws (the preference data's kinds), recorded per record and in
  the manifest; validation and test keep the reference responses."""
  from lifejax.eval import instruct  # pylint: disable=g-import-not-at-top
  from lifejax.world import generator, items  # pylint: disable=g-import-not-at-top
  from lifejax.world import judge  # pylint: disable=g-import-not-at-top
  train = world.instructions["train"]
  flawed = [r for r in train if r.get("flaw")]
  assert len(flawed) == round(generator.DEMO_FLAW_SHARE * len(train))
  for r in flawed:
    assert r["flaw"] in items.TASK_FLAWS[r["task"]], r["id"]
    answer = r["messages"][-1]["content"]
    assert instruct.flaws(r, answer, judge.score(r, answer))[r["flaw"]], r
  for split in ("validation", "test"):
    assert not any(r.get("flaw") for r in world.instructions[split])
  counts = world.manifest()["counts"]["demo_flaws"]
  assert sum(counts.values()) == len(flawed)
  assert world.manifest()["demo_flaw_share"] == generator.DEMO_FLAW_SHARE
  clean = generator.build_world(seed=world.seed, scale=world.scale,
                                demo_flaw_share=0.0)
  assert not any(r.get("flaw") for r in clean.instructions["train"])
  # The share moves only the demonstrations: the prompts are the same.
  assert ([r["messages"][1] for r in clean.instructions["train"]]
          == [r["messages"][1] for r in train])
  with pytest.raises(ValueError, match="demo_flaw_share"):
    generator.build_world(seed=0, scale=0.3, demo_flaw_share=1.5)


def test_eval_splits_hold_enough_prompts_for_the_demo_comparisons():
  """Every judged comparison of the demo sees >= 200 test prompts, and the
  training split keeps its size (the evaluation splits are sized apart)."""
  import collections

  from lifejax.stages.lifecycle import balanced_subset
  from lifejax.world import generator

  w = generator.build_world(0)
  counts = {s: collections.Counter(r["task"] for r in w.instructions[s])
            for s in ("train", "validation", "test")}
  assert set(counts["test"].values()) == {44}
  assert set(counts["validation"].values()) == {44}
  assert set(counts["train"].values()) == {192}
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  with open(os.path.join(root, "gin_configs", "lifecycle",
                         "default.gin")) as f:
    n = int(re.search(r"^lifecycle\.eval_records = (\d+)$", f.read(),
                      re.M).group(1))
  picked = balanced_subset(w.instructions["test"], n)
  assert 200 <= len(picked) == n
  per_task = collections.Counter(r["task"] for r in picked)
  assert max(per_task.values()) - min(per_task.values()) <= 1
  ids = [r["id"] for r in w.instructions["test"]]
  assert [r["id"] for r in picked] == [i for i in ids
                                       if i in {r["id"] for r in picked}]


def test_balanced_subset_round_robins_over_sorted_tasks():
  from lifejax.stages.lifecycle import balanced_subset

  recs = [{"id": i, "task": t} for i, t in enumerate("bbbacca")]
  assert [r["id"] for r in balanced_subset(recs, 3)] == [0, 3, 4]
  assert [r["id"] for r in balanced_subset(recs, 5)] == [0, 1, 3, 4, 6]
  assert balanced_subset(recs, 99) == recs


def test_ranking_items_swap_only_the_value(world):
  """A knowledge item per fact and corpus phrasing: the true statement
  first, then the same sentence with other values of the relation."""
  from lifejax.world import facts as wf  # pylint: disable=g-import-not-at-top
  from lifejax.world import phrasing as wp  # pylint: disable=g-import-not-at-top
  from lifejax.world import tasks as wtask  # pylint: disable=g-import-not-at-top
  held = {q["fact_id"] for q in world.eval["fact_questions"]}
  items = wtask.ranking_items(world.company, world.facts, held, seed=7)
  rows = {f["id"]: f for f in world.facts}
  by_fact = {}
  for it in items:
    by_fact.setdefault(it["fact_id"], []).append(it)
  assert set(by_fact) == held  # every relation has several values here
  for fid, its in by_fact.items():
    row = rows[fid]
    fact = wf.Fact(*(row[k] for k in ("id", "entity_type", "entity_id",
                                       "subject", "relation", "value")))
    assert sorted(it["variant"] for it in its) == list(
        range(len(wp.STATEMENTS[row["relation"]])))
    values = {f["value"] for f in world.facts
              if f["relation"] == row["relation"]} - {row["value"]}
    for it in its:
      true, *wrong = it["statements"]
      assert true == wp.statement(world.company, fact, None,
                                  variant=it["variant"])
      assert 1 <= len(wrong) <= 4 and len(set(wrong)) == len(wrong)
      for w in wrong:
        other = next(v for v in values
                     if w == wp.statement(world.company, wf.Fact(
                         fid, row["entity_type"], row["entity_id"],
                         row["subject"], row["relation"], v), None,
                                          variant=it["variant"]))
        assert other != row["value"]
  # Deterministic in the seed.
  assert wtask.ranking_items(world.company, world.facts, held, 7) == items


def test_qa_ranking_items_swap_only_the_answers_value(world):
  """One QA ranking item per fact_qa record: its prompt without the reply,
  the reference answer first, then the same sentence with each distractor
  value (the judge scores exactly those as wrong facts)."""
  from lifejax.world import judge  # pylint: disable=g-import-not-at-top
  from lifejax.world import tasks as wtask  # pylint: disable=g-import-not-at-top
  recs = world.instructions["test"]
  qa = [r for r in recs if r["task"] == "fact_qa"]
  items = wtask.qa_ranking_items(recs)
  assert [it["id"] for it in items] == [r["id"] for r in qa]
  for it, r in zip(items, qa, strict=True):
    true, *wrong = it["answers"]
    assert it["prompt"] == r["messages"][:2] and true == r["messages"][2][
        "content"]
    assert it["open_book"] == r["reference"]["open_book"]
    assert 1 <= len(wrong) == len(set(wrong))
    assert judge.score(r, true).components["correctness"] == 1.0
    for w in wrong:
      assert judge.score(r, w).components["correctness"] == 0.0
      assert w.replace(next(d for d in r["reference"]["distractors"]
                            if d in w), r["reference"]["answer"]) == true
  assert {it["open_book"] for it in items} == {True, False}
  bad = dict(qa[0], messages=qa[0]["messages"][:2] + [
      {"role": "assistant", "content": "I cannot say."}])
  with pytest.raises(ValueError, match=f"fact_qa record {qa[0]['id']}"):
    wtask.qa_ranking_items([bad])
