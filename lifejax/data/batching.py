"""Fixed-size batches on the host: the pad-run-trim map over rows, and the
example batches that fix a trainer's shapes and shardings.

A jitted function compiles once per input shape, so rows are fed to it in
chunks of exactly `batch_size`: the last chunk is padded by repeating its
first row, and the outputs of the padding rows are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lifejax import sharding


def num_rows(rows: Any) -> int:
  """The shared leading-axis size N of a pytree of arrays."""
  leaves = jax.tree.leaves(rows)
  if not leaves:
    raise ValueError("no arrays to batch")
  n = leaves[0].shape[0]
  for x in leaves:
    if x.shape[0] != n:
      raise ValueError(f"rows disagree on their count: {x.shape[0]} vs {n}")
  return n


def pad_rows(rows: Any, size: int) -> Any:
  """Each leaf (n, ...) grown to (size, ...) by repeating its first row
  (n <= size); unchanged when n == size."""
  n = num_rows(rows)
  if n > size:
    raise ValueError(f"{n} rows do not fit a batch of {size}")
  if n == size:
    return rows
  return jax.tree.map(
      lambda x: np.concatenate([x, np.repeat(x[:1], size - n, 0)]), rows)


def map_padded(fn: Callable[[Any, int], Any], rows: Any, batch_size: int
               ) -> Any:
  """fn over fixed-size chunks of `rows`, outputs concatenated on the host.

  rows: a pytree of arrays, every leaf (N, ...). fn(chunk, i) gets chunk i
  (rows i*batch_size .. i*batch_size + batch_size - 1), every leaf
  (batch_size, ...): the last chunk is padded by repeating its first row.
  fn returns a pytree whose leaves all lead with that batch axis. The result
  is that pytree with numpy leaves (N, ...): each chunk's output fetched to
  the host (whole in every process: `sharding.fetch`), the padding rows'
  outputs dropped, chunks concatenated in order.
  batch_size 0: one call on all N rows (no padding).

  Equals fn on all rows at once whenever fn treats rows independently; the
  chunking is what keeps shapes (and compilations) fixed.
  """
  n = num_rows(rows)
  if not n:  # no call would show the outputs' structure
    raise ValueError("map_padded needs at least one row")
  size = batch_size or n
  outs = []
  for i, start in enumerate(range(0, n, size)):
    chunk = jax.tree.map(lambda x, s=start: x[s:s + size], rows)
    real = min(size, n - start)
    out = sharding.fetch(fn(pad_rows(chunk, size), i))
    if real < size:
      out = jax.tree.map(lambda x, r=real: np.asarray(x)[:r], out)
    outs.append(out)
  return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)


def example_lm_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """A zero batch with the LM layout, (B, T) each: int32 tokens, targets,
  segment_ids, positions and a float32 loss_mask (for shapes and
  shardings)."""
  z = np.zeros((batch_size, seq_len), np.int32)
  return {"tokens": z, "targets": z, "loss_mask": z.astype(np.float32),
          "segment_ids": z, "positions": z}


def example_pair_batch(batch_size: int, seq_len: int,
                       with_ref_logp: bool = False
                       ) -> dict[str, dict[str, np.ndarray]]:
  """A zero preference batch: {"chosen": LM batch, "rejected": LM batch},
  each side with a (B,) float32 `ref_logp` when `with_ref_logp` (DPO's
  precomputed reference log-probs)."""
  pair = {}
  for side in ("chosen", "rejected"):
    pair[side] = example_lm_batch(batch_size, seq_len)
    if with_ref_logp:
      pair[side]["ref_logp"] = np.zeros((batch_size,), np.float32)
  return pair
