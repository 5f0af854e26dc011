"""The forgetting panel (eval/general_holdout) shares no word 13-gram with
anything a stage trains on: pretraining's corpus (whose clean web carries
the general pages SFT also mixes in), SFT's instructions, the preference
pairs and the general instructions. A page written from the training
templates instead does share them, so the check can fail."""

from __future__ import annotations

import random

import pytest

from lifejax.world import general, generator
from lifejax.world import text as wt

N = 13  # the usual contamination n-gram (GPT-3's decontamination used 13)


def _texts(record) -> list[str]:
  out = [record[k] for k in ("text", "prompt", "chosen", "rejected",
                             "response") if isinstance(record.get(k), str)]
  for k in ("messages", "prompt", "chosen", "rejected"):
    if isinstance(record.get(k), list):
      out += [m["content"] for m in record[k] if isinstance(m, dict)]
  return out


@pytest.fixture(scope="module")
def world():
  return generator.build_world(seed=0, scale=0.5)


@pytest.fixture(scope="module")
def trained_grams(world):
  files = world.files()
  trained = [p for p in files
             if p.startswith("corpus/") or p in (
                 "instructions/train.jsonl", "preferences/train.jsonl",
                 "eval/general_instructions.jsonl")]
  assert "corpus/web.jsonl" in trained
  grams = set()
  for path in trained:
    for record in files[path]:
      for text in _texts(record):
        grams |= wt.shingles(text, N)
  return grams


def test_holdout_shares_no_13gram_with_training_text(world, trained_grams):
  holdout = world.eval["general_holdout"]
  assert len(holdout) >= 50
  shared = [r["id"] for r in holdout
            if wt.shingles(r["text"], N) & trained_grams]
  assert not shared, f"{len(shared)} holdout pages overlap: {shared[:5]}"


def test_pages_from_the_training_templates_would_overlap(trained_grams):
  rng = random.Random(0)
  pages = [general.general_page(rng, split="train")[1] for _ in range(40)]
  overlapping = sum(bool(wt.shingles(p, N) & trained_grams) for p in pages)
  assert overlapping >= 30, overlapping


def test_template_splits_partition_each_topic():
  for topic, grammar in general.topics.TOPICS.items():
    train = general.split_templates(grammar["S"], "train")
    held = general.split_templates(grammar["S"], "holdout")
    assert sorted(train + held) == sorted(grammar["S"]), topic
    assert not set(train) & set(held) and len(held) >= 4, topic
  with pytest.raises(ValueError, match="page split"):
    general.split_templates(["a"], "test")
