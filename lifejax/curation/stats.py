"""Mergeable curation statistics.

A `Tally` is built per shard (or per Beam bundle) and merged; merging is
commutative and associative, and examples are the k smallest by document
order, so the merged tally does not depend on how the work was split. That
is what lets the local and Beam runners produce identical reports.

Sizes are counted in documents and in words (whitespace-separated tokens).
"""

from __future__ import annotations

import collections
from typing import Any

STEPS = ("input", "normalize", "langid", "boilerplate", "quality",
         "exact_dedup", "near_dedup", "decontam", "pii")

SNIPPET_CHARS = 200

Order = tuple[str, int]


def word_count(text: str) -> int:
  """Size unit of every report: whitespace-separated words."""
  return len(text.split())


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


class Tally:
  """Counts per step and source, removal reasons with examples, extras."""

  def __init__(self, examples_per_reason: int = 3):
    self.k = examples_per_reason
    # (step, source) -> [docs_in, words_in, docs_out, words_out]
    self.flow: dict[tuple[str, str], list[int]] = {}
    # (step, reason) -> count
    self.removed: collections.Counter = collections.Counter()
    # (step, reason) -> [(order, doc id, text)]
    self.examples: dict[tuple[str, str], list[tuple[Order, str, str]]] = {}
    # step -> documents changed but kept
    self.modified: collections.Counter = collections.Counter()
    # free-form named counters, e.g. ("pii", "email"), ("lines", "policy")
    self.counters: collections.Counter = collections.Counter()

  def record(self, step: str, source: str, words_in: int,
             words_out: int | None) -> None:
    """One document entered `step`; words_out None means it was removed."""
    row = self.flow.setdefault((step, source), [0, 0, 0, 0])
    row[0] += 1
    row[1] += words_in
    if words_out is not None:
      row[2] += 1
      row[3] += words_out

  def example(self, step: str, reason: str, order: Order, doc_id: str,
              text: str) -> None:
    """Keeps (order, id, snippet) if among the k first by order."""
    bucket = self.examples.setdefault((step, reason), [])
    bucket.append((tuple(order), doc_id, snippet(text)))
    bucket.sort()
    del bucket[self.k:]

  def remove(self, step: str, source: str, words_in: int, reason: str,
             order: Order, doc_id: str, text: str) -> None:
    self.record(step, source, words_in, None)
    self.removed[(step, reason)] += 1
    self.example(step, reason, order, doc_id, text)

  def merge(self, other: "Tally") -> "Tally":
    for key, row in other.flow.items():
      mine = self.flow.setdefault(key, [0, 0, 0, 0])
      for i in range(4):
        mine[i] += row[i]
    self.removed.update(other.removed)
    self.modified.update(other.modified)
    self.counters.update(other.counters)
    for key, items in other.examples.items():
      bucket = sorted(self.examples.get(key, []) + items)
      self.examples[key] = bucket[:self.k]
    return self

  def to_json(self) -> dict[str, Any]:
    return {
        "k": self.k,
        "flow": [[s, src, *row] for (s, src), row in sorted(self.flow.items())],
        "removed": [[s, r, n] for (s, r), n in sorted(self.removed.items())],
        "examples": [[s, r, [[list(o), i, t] for o, i, t in items]]
                     for (s, r), items in sorted(self.examples.items())],
        "modified": dict(sorted(self.modified.items())),
        "counters": [[a, b, n] for (a, b), n in sorted(self.counters.items())],
    }

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "Tally":
    tally = cls(data["k"])
    for step, source, *row in data["flow"]:
      tally.flow[(step, source)] = list(row)
    for step, reason, n in data["removed"]:
      tally.removed[(step, reason)] = n
    for step, reason, items in data["examples"]:
      tally.examples[(step, reason)] = [(tuple(o), i, t) for o, i, t in items]
    tally.modified.update(data["modified"])
    for a, b, n in data["counters"]:
      tally.counters[(a, b)] = n
    return tally
