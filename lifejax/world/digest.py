"""The staff digest: short internal posts that restate the company's facts.

Real knowledge is stated many times, in many forms, across a corpus (Allen-Zhu
& Li, "Physics of Language Models 3.1": a fact becomes extractable after on
the order of a hundred varied exposures). The wiki, records and mail state
each fact of the default world about ten times; the digest adds
`restatements` more statements of every fact (held-out ones included: held
out means no SFT task asks it, not unstated), each in a randomly chosen
corpus phrasing (world/phrasing.py), in posts of a few statements about a few
entities. World config `fact_restatements`; 0 (the default) writes no digest.
"""

import random

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
