"""Clean web pages: company-related posts (product reviews, care guides,
news, staff stories) and general pages on everyday topics."""

import random
from typing import Callable

from lifejax.world import corpus as wc
from lifejax.world import facts as wf
from lifejax.world import general as wg
from lifejax.world import phrasing as wp
from lifejax.world import text as wt

_WEB: dict[str, list[str]] = wt.load_grammars("web")["pages"]
_WEB_SLOTS: dict[str, list[str]] = wt.load_grammars("web")["slots"]


def _company_page(facts: wf.Facts, rng: random.Random) -> wc.Doc:
  kind = rng.choice(sorted(_WEB))
  c = facts.company
  p = rng.choice(facts.products)
  e = rng.choice(facts.employees)
  slots = {"p": p.name, "item": p.item.lower(), "company": c, "first": e.first,
           "office": e.office}
  if kind == "story":
    chosen = [f for f in facts.facts_of(e.id) if rng.random() < 0.7]
  else:
    own = facts.facts_of(p.id)
    chosen = rng.sample(own, rng.randint(1, 3))
  stated = [wp.statement(c, f, rng) for f in chosen]
  grammar = {**_WEB_SLOTS, "S": _WEB[kind]}
  filler = wt.sentences_from(grammar, rng, len(_WEB[kind]), slots,
                             set(stated))
  rest = stated + filler[1:]
  rng.shuffle(rest)
  return wc.Doc("web", wt.paragraphs(filler[:1] + rest, rng, 3, 4),
                facts=sorted(f.id for f in chosen),
                meta={"topic": f"company_{kind}"})


def _general_page(rng: random.Random) -> wc.Doc:
  topic, text = wg.general_page(rng)
  return wc.Doc("web", text, meta={"topic": topic})


def clean_page_maker(facts: wf.Facts, company_share: float = 0.45
                     ) -> Callable[[random.Random], wc.Doc]:
  """A maker of fresh clean web pages: company pages or general pages."""
  if not 0.0 <= company_share <= 1.0:
    raise ValueError(f"company_share must be in [0, 1], got {company_share}")

  def make(rng: random.Random) -> wc.Doc:
    if rng.random() < company_share:
      return _company_page(facts, rng)
    return _general_page(rng)
  return make


def clean_web_pages(facts: wf.Facts, seed: int, n: int) -> list[wc.Doc]:
  """`n` distinct clean web pages."""
  rng = wt.stream(seed, "web_clean")
  make = clean_page_maker(facts)
  docs, seen = [], set()
  for _ in range(n * 4):
    if len(docs) == n:
      break
    doc = make(rng)
    if doc.text not in seen:
      seen.add(doc.text)
      docs.append(doc)
  return docs


def general_holdout(seed: int, n: int) -> list[dict[str, str]]:
  """`n` general pages from a stream of their own (the forgetting panel)."""
  rng = wt.stream(seed, "general_holdout")
  out = []
  for i in range(n):
    topic, text = wg.general_page(rng, split="holdout")
    out.append({"id": f"general-{i:04d}", "topic": topic, "text": text})
  return out
