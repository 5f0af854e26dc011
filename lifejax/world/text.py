"""Text primitives for the synthetic world: seeded streams, a grammar expander,
sentence assembly and word shingles.

Every random choice in the world comes from `stream(seed, *names)`, so one part
of the world can change without reshuffling the others.
"""

import functools
import hashlib
import json
import os
import random
import re
from typing import Mapping, Sequence

Grammar = Mapping[str, Sequence[str]]

_SLOT = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"[a-z0-9]+")
_MAX_DEPTH = 12

MONTHS = ("January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def month_year_property(prefix: str) -> property:
  """A read-only property "March 2019" from the fields <prefix>_month (3)
  and <prefix>_year (2019)."""
  return property(lambda self: f"{MONTHS[getattr(self, prefix + '_month') - 1]}"
                  f" {getattr(self, prefix + '_year')}")


_GRAMMARS = os.path.join(os.path.dirname(__file__), "grammars")


@functools.lru_cache(maxsize=None)
def load_grammars(name: str) -> dict:
  """The word tables in grammars/<name>.json (package data: sentence
  templates and slot choices are data, kept out of the code)."""
  with open(os.path.join(_GRAMMARS, f"{name}.json"), encoding="utf-8") as f:
    return json.load(f)


def stream(seed: int, *names: object) -> random.Random:
  """An RNG determined only by `seed` and `names` (stable across runs)."""
  key = ":".join([str(seed), *map(str, names)])
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return random.Random(int.from_bytes(digest[:8], "big"))


def expand(grammar: Grammar, symbol: str, rng: random.Random,
           bindings: Mapping[str, str] | None = None,
           used: dict[str, set[str]] | None = None, _depth: int = 0) -> str:
  """Expands `symbol`; `{name}` slots take `bindings[name]`, else a rule.

  A rule used twice yields two different values when it can: within one
  template, or across calls that share the same `used` record.

  Raises:
    KeyError: a slot names neither a binding nor a grammar rule.
    RecursionError: the grammar recurses deeper than a fixed limit.
  """
  if _depth > _MAX_DEPTH:
    raise RecursionError(f"grammar too deep while expanding {symbol!r}")
  template = rng.choice(grammar[symbol])
  used = {} if used is None else used

  def sub(match: re.Match) -> str:
    name = match.group(1)
    if bindings is not None and name in bindings:
      return bindings[name]
    if name not in grammar:
      raise KeyError(f"slot {name!r} has no binding and no grammar rule")
    taken = used.setdefault(name, set())
    for _ in range(6):
      value = expand(grammar, name, rng, bindings, used, _depth + 1)
      if value not in taken:
        break
    taken.add(value)
    return value

  return _SLOT.sub(sub, template)


def fill(template: str, bindings: Mapping[str, str]) -> str:
  """Substitutes every `{name}` slot of `template` from `bindings`."""
  def sub(match: re.Match) -> str:
    name = match.group(1)
    if name not in bindings:
      raise KeyError(f"slot {name!r} missing from bindings for {template!r}")
    return bindings[name]
  return _SLOT.sub(sub, template)


def capitalize(sentence: str) -> str:
  """Upper-cases the first character, leaving the rest untouched."""
  return sentence[:1].upper() + sentence[1:]


def article(phrase: str) -> str:
  """Returns `phrase` prefixed with "a" or "an"."""
  return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def sentences_from(grammar: Grammar, rng: random.Random, count: int,
                   bindings: Mapping[str, str] | None = None,
                   avoid: set[str] | None = None, symbol: str = "S",
                   used: dict[str, set[str]] | None = None) -> list[str]:
  """Up to `count` sentences, each from a different template of `symbol`.

  Using every template (and slot value, as far as possible) at most once
  keeps a document from repeating itself; pass `used` to share that record.
  """
  templates = list(grammar[symbol])
  rng.shuffle(templates)
  seen = set(avoid or ())
  used = {} if used is None else used
  out = []
  for template in templates[:count]:
    sentence = capitalize(expand({**grammar, symbol: [template]}, symbol, rng,
                                 bindings, used))
    if sentence not in seen:
      seen.add(sentence)
      out.append(sentence)
  return out


def paragraphs(sentences: Sequence[str], rng: random.Random,
               min_len: int = 3, max_len: int = 5) -> str:
  """Joins sentences into blank-line separated paragraphs of random length."""
  paras, i = [], 0
  while i < len(sentences):
    n = rng.randint(min_len, max_len)
    paras.append(" ".join(sentences[i:i + n]))
    i += n
  return "\n\n".join(paras)


def words(text: str) -> list[str]:
  """Lower-cased alphanumeric word tokens of `text`."""
  return _WORD.findall(text.lower())


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
  """The set of word n-grams of `text` (a single short-text gram if shorter)."""
  toks = words(text)
  if len(toks) < n:
    return {tuple(toks)} if toks else set()
  return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set, b: set) -> float:
  """Jaccard similarity of two sets (1.0 for two empty sets)."""
  if not a and not b:
    return 1.0
  return len(a & b) / len(a | b)


def split_sentences(text: str) -> list[str]:
  """Splits prose into sentences at `.`, `!` or `?` followed by whitespace."""
  parts = re.split(r"(?<=[.!?])\s+", text.strip())
  return [p for p in parts if p]
