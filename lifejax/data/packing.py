"""Packing token documents into fixed-length LM rows.

The LM row contract (the training code depends on it), all of shape (T,):
  tokens      int32   inputs
  targets     int32   next token of the same document
  loss_mask   float32 1.0 on real positions, 0.0 on padding
  segment_ids int32   1..k per packed document piece, 0 on padding
  positions   int32   restart at 0 in every segment

A document of n tokens [BOS, ..., EOS] gives n-1 (input, target) pairs. A
document longer than T+1 tokens is split into pieces of at most T+1 tokens
that overlap by one token, so every pair survives exactly once and nothing is
dropped. Pieces are placed by grain's best-fit packer over a window of
`num_packing_bins` rows; more bins means less padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

LM_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")
_PAIR = "pairs"  # packed feature: (n, 2) = (token, target), one segment array.


def split_document(ids: Sequence[int] | np.ndarray, seq_len: int
                   ) -> list[np.ndarray]:
  """Pieces of <= seq_len + 1 tokens overlapping by one; int32, 1-D.

  Concatenating each piece's pairs (piece[:-1], piece[1:]) gives exactly the
  document's pairs; documents of fewer than 2 tokens give no pieces.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  ids = np.asarray(ids, dtype=np.int32)
  if ids.ndim != 1:
    raise ValueError(f"a document must be 1-D token ids, got shape {ids.shape}")
  return [ids[s:s + seq_len + 1] for s in range(0, len(ids) - 1, seq_len)]


class _DocumentToPairs(grain.experimental.FlatMapTransform):
  """1-D token document -> {"pairs": (n, 2) int32} pieces of n <= T pairs."""

  # Only used by grain's MapDataset flat_map; the packing path is IterDataset.
  max_fan_out = 1024

  def __init__(self, seq_len: int):
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    self.seq_len = seq_len

  def flat_map(self, element: np.ndarray) -> list[dict[str, np.ndarray]]:
    # The pairs of split_document's pieces, as row slices of one (n-1, 2)
    # array: one numpy call per document, not per piece (a multi-megabyte
    # document has thousands of pieces).
    ids = np.asarray(element, dtype=np.int32)
    if ids.ndim != 1:
      raise ValueError(f"a document must be 1-D token ids, got shape "
                       f"{ids.shape}")
    pairs = np.stack([ids[:-1], ids[1:]], axis=-1)
    return [{_PAIR: pairs[s:s + self.seq_len]}
            for s in range(0, len(pairs), self.seq_len)]


class _PackedToLmRow(grain.transforms.Map):
  """grain's packed features -> the LM row contract."""

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pairs = element[_PAIR]
    segment_ids = element[f"{_PAIR}_segment_ids"].astype(np.int32)
    return {
        "tokens": pairs[:, 0].astype(np.int32),
        "targets": pairs[:, 1].astype(np.int32),
        "loss_mask": (segment_ids > 0).astype(np.float32),
        "segment_ids": segment_ids,
        "positions": element[f"{_PAIR}_positions"].astype(np.int32),
    }


def pack_documents(docs: grain.IterDataset, *, seq_len: int,
                   num_packing_bins: int, seed: int = 0,
                   shuffle_bins: bool = True) -> grain.IterDataset:
  """Packs a dataset of 1-D int token documents into LM rows of length T.

  Args:
    docs: elements are 1-D integer arrays (one document each, with BOS/EOS
      already added if wanted).
    seq_len: T, the row length.
    num_packing_bins: rows filled at once; a window is emitted when a piece
      fits in none of its rows.
    seed: seed of the order in which a window's rows are emitted.
    shuffle_bins: emit a window's rows in shuffled order (training) or in
      order (evaluation).

  Returns:
    IterDataset of dicts with the `LM_KEYS` arrays, each of shape (T,). Its
    iterator state is a JSON-compatible dict.
  """
  if num_packing_bins < 1:
    raise ValueError(f"num_packing_bins must be >= 1, got {num_packing_bins}")
  pieces = grain.experimental.FlatMapIterDataset(
      docs, _DocumentToPairs(seq_len))
  packed = grain.experimental.BestFitPackIterDataset(
      pieces, length_struct={_PAIR: seq_len},
      num_packing_bins=num_packing_bins, seed=seed, shuffle_bins=shuffle_bins)
  return packed.map(_PackedToLmRow())


def packing_efficiency(batch: dict[str, Any]) -> float:
  """Share of non-padding positions in an LM batch (or row), in [0, 1]."""
  segment_ids = np.asarray(batch["segment_ids"])
  if segment_ids.size == 0:
    raise ValueError("empty batch")
  return float(np.count_nonzero(segment_ids) / segment_ids.size)
