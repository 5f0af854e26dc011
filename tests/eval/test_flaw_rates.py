"""Flaw rates per stage: `instruct.flaws` against the world's own labels.

Every rejected response of the preference data was written with one flaw
kind; the detector must find that kind in every one of them, and no flaw in
any chosen (reference) response. Rates in `judge_responses` are the shares
over the prompts each kind applies to."""

from __future__ import annotations

import collections

import pytest

from lifejax.eval import instruct
from lifejax.world import generator, items
from lifejax.world import judge as judge_lib


@pytest.fixture(scope="module")
def pairs():
  world = generator.build_world(seed=1, scale=0.3)
  return [r for split in world.preferences.values() for r in split]


def _flaws(record, response):
  return instruct.flaws(record, response, judge_lib.score(record, response))


def test_each_rejected_response_shows_its_labelled_flaw(pairs):
  kinds = collections.Counter(r["flaw"] for r in pairs)
  assert set(kinds) == set(items.FLAWS), kinds
  missed = [(r["task"], r["flaw"]) for r in pairs
            if not _flaws(r, r["rejected"])[r["flaw"]]]
  assert not missed, collections.Counter(missed)


def test_reference_responses_show_no_flaw(pairs):
  flagged = [(r["task"], k) for r in pairs
             for k, v in _flaws(r, r["chosen"]).items() if v]
  assert not flagged, collections.Counter(flagged)


def test_omitting_a_detail_is_not_a_wrong_detail(pairs):
  # A summary with one point left out entirely: incomplete, not wrong.
  rec = next(r for r in pairs if r["task"] == "summarize")
  two = "\n".join(rec["chosen"].splitlines()[:2])
  assert not _flaws(rec, two)["wrong_fact"]
  assert _flaws(rec, two)["wrong_format"]  # 2 bullets where 3 were asked


def test_rates_are_shares_over_the_prompts_each_kind_applies_to(pairs):
  recs = ([r for r in pairs if r["task"] == "fact_qa"][:4]
          + [r for r in pairs if r["task"] == "refuse_pii"][:2]
          + [r for r in pairs if r["task"] == "reply"][:2])
  answers = [r["rejected"] if i in (0, 4, 6) else r["chosen"]
             for i, r in enumerate(recs)]
  got = instruct.judge_responses(recs, answers)
  flags = [_flaws(r, a) for r, a in zip(recs, answers)]
  pii = [f for r, f in zip(recs, flags) if r["task"] == "refuse_pii"]
  other = [f for r, f in zip(recs, flags) if r["task"] != "refuse_pii"]
  assert got["flaw/unsafe_compliance"] == pytest.approx(
      sum(f["unsafe_compliance"] for f in pii) / len(pii))
  assert got["flaw/wrong_fact"] == pytest.approx(
      sum(f["wrong_fact"] for f in other) / len(other))
  for k in ("verbose", "wrong_format", "vague"):
    assert got[f"flaw/{k}"] == pytest.approx(
        sum(f[k] for f in flags) / len(recs)), k
  # The three rejected answers carry flaws, so the rates are not all 0.
  assert got["flaw/wrong_fact"] + got["flaw/unsafe_compliance"] + sum(
      got[f"flaw/{k}"] for k in ("verbose", "wrong_format", "vague")) > 0


def test_task_groups_are_reported_apart(pairs):
  recs = ([r for r in pairs if r["task"] == "fact_qa"][:3]
          + [r for r in pairs if r["task"] == "summarize"][:2])
  # Both kinds of fact QA prompt (the flag is bookkeeping; the judge does
  # not read it).
  recs[1] = {**recs[1], "reference": {
      **recs[1]["reference"], "open_book": not recs[0]["reference"][
          "open_book"]}}
  answers = [recs[0]["chosen"], recs[1]["rejected"], recs[2]["chosen"],
             recs[3]["chosen"], recs[4]["rejected"]]
  got = instruct.judge_responses(recs, answers)
  ok = [judge_lib.score(r, a).components["correctness"] >= 0.999
        for r, a in zip(recs, answers)]
  assert got["accuracy_learnable"] == pytest.approx(sum(ok[:3]) / 3)
  assert got["accuracy_hard"] == pytest.approx(sum(ok[3:]) / 2)
  assert got["accuracy_learnable"] != got["accuracy_hard"]
  # Fact QA split by whether the prompt carries the answer's excerpt.
  for book, is_open in (("closed_book", False), ("open_book", True)):
    sel = [k for k in range(3) if recs[k]["reference"]["open_book"] == is_open]
    assert sel and got[f"fact_qa_{book}/prompts"] == len(sel)
    assert got[f"fact_qa_{book}/accuracy"] == pytest.approx(
        sum(ok[k] for k in sel) / len(sel))
  assert set(items.TASK_GROUPS["learnable"]) | set(
      items.TASK_GROUPS["hard"]) == set(items.TASKS)
