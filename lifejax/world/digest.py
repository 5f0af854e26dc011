"""The staff digest: short internal posts that restate the company's facts.

Real knowledge is stated many times, in many forms, across a corpus (Allen-Zhu
& Li, "Physics of Language Models 3.1": a fact becomes extractable after on
the order of a hundred varied exposures). The wiki, records and mail state
each fact of the default world about ten times; the digest adds
`restatements` more statements of every fact (held-out ones included: held
out means no SFT task asks it, not unstated), each in a randomly chosen
corpus phrasing (world/phrasing.py), in posts of a few statements about a few
entities. World config `fact_restatements`; 0 (the default) writes no digest.

The digest can also carry a staff FAQ (world config `digest_qa`): question-
answer pairs about the facts the SFT training tasks ask, and only those, in
the fact_qa tasks' question and answer forms. Storage is not extraction:
a model that stores "X joined in 2012" as a continuation of X's name need not
answer "When did X join?" for people it never saw asked about. Allen-Zhu &
Li (3.1) find extraction generalises to unseen people when pretraining mixes
in QA about other people; the FAQ is that mix, and the facts of the
validation, test and held-out questions never appear in it.
"""

import random
from collections.abc import Sequence

from lifejax.world import corpus as wc
from lifejax.world import facts as wf
from lifejax.world import phrasing as wp
from lifejax.world import text as wt

SOURCE = "digest"
_HEADERS = (
    "Staff digest, week {n}.", "Notes from the {company} intranet, issue {n}.",
    "Who is who and what is what: digest {n}.", "Internal bulletin no. {n}.",
    "Quick facts for new starters, part {n}.", "The weekly {company} roundup, "
    "number {n}.")
_FACTS_PER_POST = (4, 7)
_FAQ_HEADERS = ("Staff FAQ, part {n}.", "Questions we get asked, no. {n}.",
                "Ask {company}: answers from the help desk, issue {n}.")
_QA_PER_POST = (3, 6)


def digest_posts(facts: wf.Facts, seed: int, restatements: int
                 ) -> list[wc.Doc]:
  """Posts stating every fact `restatements` times, never twice in one
  post, with the statements of one entity kept together (in a post about
  Ada Ashby, her department and office sit side by side, as in real text)."""
  if restatements < 0:
    raise ValueError(f"fact_restatements must be >= 0, got {restatements}")
  if not restatements:
    return []
  rng = wt.stream(seed, SOURCE)
  # Deal each round's facts (all of them, shuffled) into posts; a post never
  # repeats a fact because one round states each fact once.
  docs = []
  for _ in range(restatements):
    pool = list(facts.facts)
    rng.shuffle(pool)
    while pool:
      k = min(len(pool), rng.randint(*_FACTS_PER_POST))
      chosen, pool = pool[:k], pool[k:]
      docs.append(_post(facts, chosen, rng, len(docs) + 1))
  rng.shuffle(docs)
  return docs


def _post(facts: wf.Facts, chosen: list[wf.Fact], rng: random.Random,
          n: int) -> wc.Doc:
  by_entity: dict[str, list[wf.Fact]] = {}
  for f in chosen:
    by_entity.setdefault(f.entity_id, []).append(f)
  order = list(by_entity)
  rng.shuffle(order)
  lines = [wt.fill(rng.choice(_HEADERS), {"n": str(n),
                                          "company": facts.company})]
  for ent in order:
    group = by_entity[ent]
    rng.shuffle(group)
    lines.append(" ".join(wp.statement(facts.company, f, rng) for f in group))
  return wc.Doc(SOURCE, "\n".join(lines), facts=sorted(f.id for f in chosen))


def faq_posts(facts: wf.Facts, seed: int, fact_ids: Sequence[str],
              repeats: int, answer_style: str = "restate") -> list[wc.Doc]:
  """FAQ posts asking each of `fact_ids` `repeats` times (never twice in a
  post), each time in a random question phrasing, answered in
  `answer_style` (phrasing.answer)."""
  if repeats < 0:
    raise ValueError(f"digest_qa must be >= 0, got {repeats}")
  wanted = set(fact_ids)
  chosen = [f for f in facts.facts if f.id in wanted]
  if len(chosen) != len(wanted):
    raise ValueError(f"faq_posts: unknown fact ids "
                     f"{sorted(wanted - {f.id for f in chosen})[:5]}")
  if not repeats or not chosen:
    return []
  rng = wt.stream(seed, SOURCE, "faq")
  docs = []
  for _ in range(repeats):
    pool = list(chosen)
    rng.shuffle(pool)
    while pool:
      k = min(len(pool), rng.randint(*_QA_PER_POST))
      group, pool = pool[:k], pool[k:]
      lines = [wt.fill(rng.choice(_FAQ_HEADERS),
                       {"n": str(len(docs) + 1), "company": facts.company})]
      for f in group:
        q = wp.question(facts.company, f, rng.randrange(2))
        a = wp.answer(facts.company, f, style=answer_style)
        lines.append(f"Q: {q}\nA: {a}")
      docs.append(wc.Doc(SOURCE, "\n\n".join(lines),
                         facts=sorted(f.id for f in group)))
  rng.shuffle(docs)
  return docs

