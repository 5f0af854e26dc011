"""Clean web pages: company-related posts (product reviews, care guides,
news, staff stories) and general pages on everyday topics."""

import random
from typing import Callable

from lifejax.world import corpus as wc
from lifejax.world import facts as wf
from lifejax.world import general as wg
from lifejax.world import phrasing as wp
from lifejax.world import text as wt

_WEB: dict[str, list[str]] = {
    "review": [
        "I bought {pref} {when} and have used it {use} since.",
        "Mine {verdict_s}, and I would {rec} it to {who}.",
        "The box was {box} and everything was ready to use {ready}.",
        "After {weeks} weeks it still {state}.",
        "My only complaint is that {pref} {complaint}.",
        "Overall I think {pref} is {overall}.",
        "My {relative} borrowed it for a week and wants one too.",
        "The instructions were {manual}.",
        "I compared it with {rival} before buying.",
    ],
    "guide": [
        "To get the most from your {item}, {tip}.",
        "Keep it away from {danger} when it is not in use.",
        "Read the short manual before you {first_use}.",
        "If {pref} {fault}, {fix}.",
        "Store it in a {place} place between uses.",
        "A little care every {period} keeps {pref} working for years.",
        "Wipe the outside with a {cloth} cloth.",
        "Never use {chemical} on any part of it.",
        "Most problems can be solved by {simple}.",
    ],
    "news": [
        "{company} shared an update about {pref} this {period2}.",
        "Staff at the {office} office {news_act} to mark the occasion.",
        "The team behind {pref} said that {quote}.",
        "Demand for it has been {demand} in recent months.",
        "Local shops {shops} {pref} in their windows.",
        "Visitors were invited to try it {try_where}.",
        "A short video about the product was shared {video}.",
        "More events are planned for {later}.",
    ],
    "story": [
        "We spent a {day} with {first} to see what the work is like.",
        "The day starts {start} with {morning}.",
        "Around noon {first} {noon}.",
        "In the afternoon there is time for {afternoon}.",
        "{first} says the best part of the job is {best}.",
        "Before leaving, {first} {leave}.",
    ],
}
_WEB_SLOTS: dict[str, list[str]] = {
    "pref": ["the {item}", "this product", "it"],
    "relative": ["sister", "neighbour", "father", "flatmate"],
    "manual": ["short and clear", "easy to follow", "a bit too brief",
               "printed on recycled paper"],
    "rival": ["two cheaper models", "an older model", "a friend's one",
              "several shop samples"],
    "cloth": ["soft", "damp", "dry", "microfibre"],
    "chemical": ["strong bleach", "harsh cleaners", "oven spray",
                 "scouring powder"],
    "simple": ["switching it off and on", "checking the plug",
               "cleaning the filter", "reading the manual"],
    "try_where": ["in the lobby", "at the spring fair", "in a pop up shop",
                  "at the open day"],
    "video": ["on the company blog", "in the newsletter", "at the town fair"],
    "later": ["the autumn", "next spring", "the holiday season",
              "the coming months"],
    "when": ["last spring", "a few months ago", "at the end of last year",
             "for my new flat", "as a birthday present"],
    "use": ["almost every day", "at least twice a week", "at work",
            "on every trip"],
    "verdict_s": ["works well", "feels solid", "looks great on the shelf",
                  "does exactly what I need"],
    "rec": ["recommend", "happily suggest", "gladly point"],
    "who": ["friends", "anyone on a budget", "busy families",
            "my coworkers"],
    "box": ["small and tidy", "made of recycled card", "easy to open"],
    "ready": ["within minutes", "straight away", "after a quick wash"],
    "weeks": ["three", "six", "ten", "twelve"],
    "state": ["works like new", "looks clean", "has no scratches",
              "runs quietly"],
    "complaint": ["is a little heavy", "only comes in two colours",
                  "has a short cable", "takes a moment to warm up"],
    "overall": ["good value for money", "a solid choice", "worth the price",
                "a small joy to use"],
    "tip": ["clean it after each use", "read the care label",
            "keep the original box", "check the seals now and then"],
    "danger": ["small children", "open flames", "wet floors",
               "direct sunlight"],
    "first_use": ["switch it on", "use it for the first time",
                  "plug it in", "fill it"],
    "fault": ["stops working", "makes a clicking sound",
              "feels warm to the touch", "does not turn on"],
    "fix": ["unplug it and wait a minute", "contact the support team",
            "check that every part is in place", "let it cool down first"],
    "place": ["dry", "cool", "clean", "safe"],
    "period": ["week", "month", "few weeks"],
    "period2": ["week", "month", "spring", "autumn"],
    "news_act": ["held a small party", "shared cake with visitors",
                 "opened the doors to the public", "gave short tours"],
    "quote": ["customers had asked for it for a long time",
              "it was a real team effort", "they are proud of the result",
              "feedback so far has been warm"],
    "demand": ["strong", "steady", "higher than expected", "growing"],
    "shops": ["show", "display", "feature", "promote"],
    "day": ["Tuesday", "Wednesday", "rainy Thursday", "busy Monday"],
    "start": ["early", "at eight", "with a short meeting", "quietly"],
    "morning": ["a look at the inbox", "a coffee with the team",
                "a quick plan for the day", "a walk around the office"],
    "noon": ["joins colleagues for lunch", "answers a few calls",
             "checks the latest numbers", "takes a short walk"],
    "afternoon": ["deeper work", "meetings with other teams",
                  "training a new colleague", "writing reports"],
    "best": ["the people", "solving problems", "learning something new",
             "seeing happy customers"],
    "leave": ["writes a list for tomorrow", "waters the office plants",
              "tidies the desk", "says goodbye to everyone"],
}


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
    topic, text = wg.general_page(rng)
    out.append({"id": f"general-{i:04d}", "topic": topic, "text": text})
  return out
