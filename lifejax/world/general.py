"""General text and general instructions, unrelated to the company.

General pages appear on the clean web (so pretraining sees the distribution)
and, drawn from a separate stream, as the held-out forgetting panel together
with verifiable general instructions (arithmetic, words, calendar, units).
The pages are written from the topic grammars in topics.py.

The panel must measure forgetting of general text, not recall of training
sentences: its pages are written from sentence templates (and personal
asides) that no training page uses, every `HOLDOUT_EVERY`-th of each topic's
list, with the same topics and slot words. No holdout page shares a word
13-gram with anything a stage trains on (tests/world/test_world_holdout.py).
"""

import random

from lifejax.world import text as wt
from lifejax.world import topics

# Personal asides, shared by all topics, that make every page a little unique.
_NARRATIVE: dict[str, list[str]] = wt.load_grammars("general")
PAGE_SPLITS = ("train", "holdout")
HOLDOUT_EVERY = 3


def split_templates(templates: list[str], split: str) -> list[str]:
  """The sentence templates of a page split: "holdout" gets every
  HOLDOUT_EVERY-th template (from the second on), "train" the others."""
  if split not in PAGE_SPLITS:
    raise ValueError(f"page split must be one of {PAGE_SPLITS}, got "
                     f"{split!r}")
  held = lambda i: i % HOLDOUT_EVERY == 1  # noqa: E731
  return [t for i, t in enumerate(templates)
          if held(i) == (split == "holdout")]


def general_page(rng: random.Random, topic: str | None = None,
                 n_sentences: tuple[int, int] = (7, 10),
                 split: str = "train") -> tuple[str, str]:
  """Returns (topic, multi-paragraph text) of a general page, written from
  the sentence templates of `split` ("train": the web's; "holdout": the
  forgetting panel's).

  Each template and, where possible, each slot value is used at most once.
  """
  topic = topic or rng.choice(sorted(topics.TOPICS))
  if topic not in topics.TOPICS:
    raise ValueError(f"unknown topic {topic!r}; expected one of "
                     f"{sorted(topics.TOPICS)}")
  used: dict[str, set[str]] = {}
  grammar = {**topics.COMMON, **topics.TOPICS[topic]}
  grammar["S"] = split_templates(grammar["S"], split)
  narrative = {**_NARRATIVE, "S": split_templates(_NARRATIVE["S"], split)}
  bindings = {}
  if topic == "pets":  # one animal per page keeps the page coherent
    bindings["pet"] = rng.choice(grammar["pet"])
    bindings["pets"] = bindings["pet"] + "s"
  sentences = wt.sentences_from(grammar, rng, rng.randint(*n_sentences),
                                bindings, used=used)
  asides = wt.sentences_from(narrative, rng, rng.randint(1, 2), used=used)
  for aside in asides:
    sentences.insert(rng.randint(1, len(sentences)), aside)
  return topic, wt.paragraphs(sentences, rng)


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                 "eight", "nine", "ten", "eleven", "twelve")
_WORD_POOL = ("garden", "window", "river", "yellow", "pencil", "basket",
              "candle", "forest", "ladder", "marble", "orange", "planet",
              "rocket", "silver", "turtle", "violin", "winter", "anchor",
              "bridge", "castle", "dragon", "meadow", "pepper", "saddle")
_UNITS = (("kilometres", "metres", 1000), ("hours", "minutes", 60),
          ("minutes", "seconds", 60), ("kilograms", "grams", 1000),
          ("days", "hours", 24), ("metres", "centimetres", 100))


def general_instruction(rng: random.Random) -> tuple[str, str, str]:
  """Returns (question, answer value, one-sentence reference response)."""
  kind = rng.choice(("add", "subtract", "multiply", "letters", "reverse",
                     "sort", "weekday", "units", "compare"))
  if kind == "add":
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return (f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.")
  if kind == "subtract":
    a = rng.randint(20, 99)
    b = rng.randint(1, a - 1)
    return (f"What is {a} minus {b}?", str(a - b),
            f"{a} minus {b} is {a - b}.")
  if kind == "multiply":
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return (f"What is {a} times {b}?", str(a * b),
            f"{a} times {b} is {a * b}.")
  if kind == "letters":
    w = rng.choice(_WORD_POOL)
    return (f"How many letters are in the word {w}?", str(len(w)),
            f"The word {w} has {len(w)} letters.")
  if kind == "reverse":
    w = rng.choice(_WORD_POOL)
    return (f"Spell the word {w} backwards.", w[::-1],
            f"The word {w} spelled backwards is {w[::-1]}.")
  if kind == "sort":
    ws = rng.sample(_WORD_POOL, 3)
    s = ", ".join(sorted(ws))
    return (f"Put these words in alphabetical order: {', '.join(ws)}.", s,
            f"In alphabetical order the words are {s}.")
  if kind == "weekday":
    days = wt.WEEKDAYS + ("Saturday", "Sunday")
    i, k = rng.randrange(7), rng.randint(1, 6)
    word = _NUMBER_WORDS[k]
    return (f"Which day of the week comes {word} days after {days[i]}?",
            days[(i + k) % 7],
            f"{word.capitalize()} days after {days[i]} is "
            f"{days[(i + k) % 7]}.")
  if kind == "units":
    big, small, factor = rng.choice(_UNITS)
    n = rng.randint(2, 9)
    return (f"How many {small} are there in {n} {big}?", str(n * factor),
            f"There are {n * factor} {small} in {n} {big}.")
  a, b = rng.sample(range(10, 100), 2)
  return (f"Which number is larger, {a} or {b}?", str(max(a, b)),
          f"The larger number is {max(a, b)}.")
