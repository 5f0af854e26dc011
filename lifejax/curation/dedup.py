"""Steps 4 and 5, global deduplication: exact content hash, then MinHash LSH.

Both steps see every document that survived the per-document filters, in
global order (source priority, shard, line). Within a group of duplicates
the first document in that order is kept (so with `keep_priority` a curated
source's copy wins over a web copy), the others are removed with `dup_of`
pointing at the kept one. The functions here work on in-memory arrays (the
local runner); the Beam runner expresses the same grouping with GroupByKey
and calls `minhash.connected_components` for the final union-find.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from lifejax.curation import minhash


@dataclasses.dataclass(frozen=True)
class ExactDedupConfig:
  enabled: bool = True
  # Compare texts case-insensitively (whitespace is always collapsed).
  lowercase: bool = False


@dataclasses.dataclass(frozen=True)
class NearDedupConfig:
  enabled: bool = True
  minhash: minhash.MinHashConfig = minhash.MinHashConfig()


def content_hash(text: str, config: ExactDedupConfig) -> str:
  """128-bit hex digest of the whitespace-collapsed text."""
  canonical = " ".join(text.split())
  if config.lowercase:
    canonical = canonical.lower()
  return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def exact_groups(hashes: Sequence[str]) -> dict[int, int]:
  """{index of a duplicate: index of the first document with its hash}."""
  first: dict[str, int] = {}
  dup_of: dict[int, int] = {}
  for i, h in enumerate(hashes):
    if h in first:
      dup_of[i] = first[h]
    else:
      first[h] = i
  return dup_of


def near_groups(sig_DxP: np.ndarray, active_D: np.ndarray,
                config: minhash.MinHashConfig) -> dict[int, int]:
  """{index of a near-duplicate: index of its cluster's first document}.

  Only `active_D` documents take part (exact duplicates and documents without
  shingles do not). Clusters are the connected components of the (verified)
  LSH candidate graph, so near-duplication is taken as transitive. Each
  bucket contributes a star from its first document, which (without
  verification) gives the same components as all pairs in the bucket.
  """
  if sig_DxP.shape[0] == 0:
    return {}
  keys = minhash.band_keys(sig_DxP, config)
  u, v = minhash.star_edges(keys, active_D)
  u, v = minhash.verify_edges(sig_DxP, u, v, config)
  root = minhash.connected_components(sig_DxP.shape[0], u, v)
  members = np.flatnonzero(root != np.arange(root.shape[0]))
  return {int(i): int(root[i]) for i in members}


def cluster_sizes(dup_of: dict[int, int]) -> dict[int, int]:
  """{cluster size (kept + removed): number of clusters}."""
  per_root = collections.Counter(dup_of.values())
  return dict(sorted(collections.Counter(n + 1
                                         for n in per_root.values()).items()))


def priority_rank(source: str, priority: Sequence[str]) -> int:
  """Rank of a source in the keep order: listed sources first, in order."""
  return priority.index(source) if source in priority else len(priority)


def dedup_verdicts(keys: Sequence[tuple[str, int]], ranks: Sequence[int],
                   ids: Sequence[str], hashes: Sequence[str],
                   sig_DxP: np.ndarray, exact: ExactDedupConfig,
                   near: NearDedupConfig
                   ) -> tuple[dict[tuple[str, int], tuple[str, str]],
                              dict[str, dict[int, int]]]:
  """Global dedup over all survivors.

  Args:
    keys: (shard, line) of each survivor; any order.
    ranks: source priority rank of each survivor; the kept member of a
      cluster is the first in (rank, shard, line) order.
    ids, hashes, sig_DxP: per survivor, aligned with `keys`.

  Returns:
    ({key of a removed document: (step, id of the kept one)},
     {"exact"|"near": {cluster size: count}}).
  """
  order = sorted(range(len(keys)), key=lambda i: (ranks[i], keys[i]))
  verdicts: dict[tuple[str, int], tuple[str, str]] = {}
  sizes: dict[str, dict[int, int]] = {"exact": {}, "near": {}}
  active = np.ones(len(order), dtype=bool)
  if exact.enabled:
    dup_of = exact_groups([hashes[i] for i in order])
    for dup, first in dup_of.items():
      verdicts[keys[order[dup]]] = ("exact_dedup", ids[order[first]])
      active[dup] = False
    sizes["exact"] = cluster_sizes(dup_of)
  if near.enabled and order:
    sig = sig_DxP[np.asarray(order)]
    active &= ~np.all(sig == np.uint32(0xFFFFFFFF), axis=1)
    dup_of = near_groups(sig, active, near.minhash)
    for dup, first in dup_of.items():
      verdicts[keys[order[dup]]] = ("near_dedup", ids[order[first]])
    sizes["near"] = cluster_sizes(dup_of)
  return verdicts, sizes
