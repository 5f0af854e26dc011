"""Step 9, the data mix: per-source sampling weights -> effective shares.

A source's effective share of the training stream is proportional to its
cleaned size times its weight (a weight of 2 means "seen twice as often per
word as its size alone would give", i.e. upsampling).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class MixConfig:
  # Sampling weight per source; sources not listed get `default_weight`.
  weights: tuple[tuple[str, float], ...] = ()
  default_weight: float = 1.0

  def weight(self, source: str) -> float:
    return dict(self.weights).get(source, self.default_weight)


def mix_table(cleaned: Mapping[str, Mapping[str, int]],
              config: MixConfig) -> list[dict[str, float | int | str]]:
  """Effective share per source.

  Args:
    cleaned: {source: {"docs": n, "words": n}} after curation.
    config: the sampling weights.

  Returns:
    One row per source (sorted by name): source, docs, words, weight,
    weighted_words (= words x weight), share (weighted_words / total, sums
    to 1 unless everything is empty), natural_share (words / total words).
  """
  total = sum(float(v["words"]) * config.weight(s) for s, v in cleaned.items())
  natural = sum(float(v["words"]) for v in cleaned.values())
  rows = []
  for source in sorted(cleaned):
    words = int(cleaned[source]["words"])
    weight = config.weight(source)
    rows.append({
        "source": source,
        "docs": int(cleaned[source]["docs"]),
        "words": words,
        "weight": weight,
        "weighted_words": words * weight,
        "share": words * weight / total if total > 0 else 0.0,
        "natural_share": words / natural if natural > 0 else 0.0,
    })
  return rows
