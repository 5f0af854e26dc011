"""Weighted mixing of sources (the data curriculum).

Weights are per *document* (record), like seqio's mixing rates: with weights
(3, 1) three of every four documents come from the first source, whatever
their lengths. Mixing is grain's deterministic interleave (`MapDataset.mix`),
not random sampling, so the realized mix matches the weights over any long
window and the mixed dataset stays random access: its iterator state is a
single index, which is what makes resumption exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from lifejax.data import sources as sources_lib, tfds_sources


def normalize_weights(weights: Sequence[float] | None, n: int) -> list[float]:
  """Weights as fractions summing to 1 (uniform if None); validated."""
  if n < 1:
    raise ValueError("mixing needs at least one dataset")
  if weights is None:
    return [1.0 / n] * n
  weights = [float(w) for w in weights]
  if len(weights) != n:
    raise ValueError(f"got {len(weights)} mixing weights for {n} sources")
  if not all(math.isfinite(w) and w > 0 for w in weights):
    raise ValueError(f"mixing weights must be finite and > 0, got {weights}")
  total = sum(weights)
  return [w / total for w in weights]


def mix(datasets: Sequence[grain.MapDataset],
        weights: Sequence[float] | None = None) -> grain.MapDataset:
  """Interleaves `datasets` in proportion to `weights`.

  The result ends when the first dataset runs out (repeat them first for an
  endless mix). A single dataset is returned unchanged.
  """
  fractions = normalize_weights(weights, len(datasets))
  if len(datasets) == 1:
    return datasets[0]
  return grain.MapDataset.mix(list(datasets), fractions)


def seqio_sources(
    name: str, *, split: str, fields: sources_lib.FieldSpec = ("text",),
    skip_bad_records: bool = False
) -> tuple[list[tfds_sources.SeqioSource], list[float]]:
  """The tasks of a registered seqio Mixture (or one Task) and their rates.

  Pass the result to `pipeline.lm_dataset(sources, ..., weights=rates)`: the
  tasks are then mixed by grain with seqio's rates, keeping grain's
  checkpointable iterator state (seqio's own tf.data mixing has none).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    tasks = list(provider.tasks)
    rates = [float(provider.get_rate(t)) for t in tasks]
  else:
    tasks, rates = [provider], [1.0]
  srcs = [tfds_sources.SeqioSource(t.name, split=split, fields=fields,
                                   skip_bad_records=skip_bad_records)
          for t in tasks]
  return srcs, rates


class MixedIterator:
  """Each step draws the general-data batch with probability `share`.

  The choice is a pure function of (seed, step), and both sub-iterators'
  states are saved, so a resumed run sees exactly the same batches.
  """

  def __init__(self, main: Any, general: Any | None, share: float, seed: int):
    if general is None and share > 0:
      raise ValueError("general_share > 0 needs general_files")
    self.main, self.general, self.share, self.seed = main, general, share, seed
    self.step = 0

  def __iter__(self):
    return self

  def __next__(self):
    u = np.random.default_rng([self.seed, self.step]).random()
    self.step += 1
    if self.general is not None and u < self.share:
      return next(self.general)
    return next(self.main)

  def get_state(self) -> dict:
    state = {"step": self.step, "main": self.main.get_state()}
    if self.general is not None:
      state["general"] = self.general.get_state()
    return state

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])
    self.main.set_state(state["main"])
    if self.general is not None:
      self.general.set_state(state["general"])
