"""MinHash signatures, LSH banding and connected components, all in numpy.

Signature of a document: for each of P hash functions h_p, the minimum of
h_p(x) over the document's shingle hashes x (word n-grams from `hashing`).
h_p is multiply-add-shift hashing, h_p(x) = ((a_p * x + b_p) mod 2^64) >> 32
for 32-bit x and random 64-bit a_p (odd), b_p, which is 2-independent
(Dietzfelbinger 1996) and needs only a multiply and an add per element:
no modulo. Since `>> 32` is monotone, the minimum is taken on the 64-bit
values and shifted once at the end.

Legend: D documents, S shingles, P permutations (= bands * rows), N bands.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Sequence

import numpy as np

from lifejax import checks
from lifejax.curation import hashing

_EMPTY = np.uint32(0xFFFFFFFF)


SCHEMES = ("permutations", "one_permutation")


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
  """Near-duplicate detection parameters.

  14 bands x 8 rows = 112 hashes puts the LSH S-curve's midpoint at Jaccard
  (1/14)^(1/8) ~= 0.72: a pair at Jaccard 0.9 becomes a candidate with
  probability 1 - (1 - 0.9^8)^14 = 0.9996, at 0.8 only 0.92, at 0.6 0.21
  (the range FineWeb/RefinedWeb-style dedup uses). For recall at 0.8, use
  more bands of fewer rows (22 x 5: 0.9998 at 0.8) with verify_threshold.

  scheme: "permutations" (classic MinHash: P hash functions, each
  document's minimum under each; O(shingles x P)) or "one_permutation"
  (one hash per shingle splits it into P bins, each bin keeps its minimum,
  empty bins borrow a non-empty bin's value by optimal densification:
  Li, Owen & Zhang 2012; Shrivastava 2017; O(shingles + P)). Both estimate
  Jaccard as the fraction of equal entries; their signatures differ.
  """
  ngram: int = 5
  bands: int = 14
  rows: int = 8
  # If set, a candidate pair (from a shared band) only counts as duplicate
  # if its signature-estimated Jaccard is at least this. Lets a low-threshold
  # banding (many bands, few rows) find pairs down to ~0.5 without merging
  # the unrelated documents it also proposes.
  verify_threshold: float | None = None
  seed: int = 1
  # Shingles per vectorized block; bounds temporary memory to
  # block * bands * rows * 8 bytes (~3.7 MB at the defaults).
  block: int = 4096
  scheme: str = "permutations"

  def __post_init__(self):
    checks.choice("MinHashConfig.scheme", self.scheme, SCHEMES)
    checks.at_least("MinHashConfig.bands", self.bands, 1)
    checks.at_least("MinHashConfig.rows", self.rows, 1)

  @property
  def num_perm(self) -> int:
    return self.bands * self.rows

  def threshold(self) -> float:
    """Jaccard at which a pair becomes a candidate with probability ~1/2."""
    return (1.0 / self.bands) ** (1.0 / self.rows)


def permutations(config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
  """The (a_P, b_P) uint64 parameters of the P hash functions."""
  rng = np.random.default_rng(config.seed)
  a = rng.integers(0, np.iinfo(np.uint64).max, size=config.num_perm,
                   dtype=np.uint64, endpoint=True) | np.uint64(1)
  b = rng.integers(0, np.iinfo(np.uint64).max, size=config.num_perm,
                   dtype=np.uint64, endpoint=True)
  return a, b


def signatures_from_shingles(shingles_S: np.ndarray, offsets: np.ndarray,
                             config: MinHashConfig) -> np.ndarray:
  """MinHash signatures [D, P] uint32 of documents given their shingles.

  A document without shingles gets the all-0xFFFFFFFF signature.
  """
  if config.scheme == "one_permutation":
    return _one_permutation_signatures(shingles_S, offsets, config)
  a, b = permutations(config)
  num_docs = offsets.shape[0] - 1
  sig_PxD = np.full((config.num_perm, num_docs), np.iinfo(np.uint64).max,
                    dtype=np.uint64)
  x_S = (shingles_S ^ (shingles_S >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
  doc_of = np.repeat(np.arange(num_docs), np.diff(offsets))
  # [P, block] layout: the per-document min runs along contiguous memory.
  buf = np.empty((config.num_perm, config.block), dtype=np.uint64)
  for lo in range(0, x_S.shape[0], config.block):
    hi = min(lo + config.block, x_S.shape[0])
    vals = buf[:, :hi - lo]
    np.multiply(a[:, None], x_S[None, lo:hi], out=vals)
    vals += b[:, None]
    docs = doc_of[lo:hi]
    seg = np.flatnonzero(np.diff(docs, prepend=-1))
    mins = np.minimum.reduceat(vals, seg, axis=1)
    owners = docs[seg]
    sig_PxD[:, owners] = np.minimum(sig_PxD[:, owners], mins)
  out = np.ascontiguousarray((sig_PxD >> np.uint64(32)).astype(np.uint32).T)
  out[np.diff(offsets) == 0] = _EMPTY
  return out


def _one_permutation_key(config: MinHashConfig) -> np.uint64:
  """The seed's 64-bit key: a config's one permutation is x -> fmix64(x ^
  key)."""
  rng = np.random.default_rng([config.seed, 1])
  return rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64,
                      endpoint=True)


def densification_probe(config: MinHashConfig, attempt: int) -> np.ndarray:
  """[P] bins: where each bin looks on its `attempt`-th try to borrow a
  value (the same for every document, so equal documents borrow alike)."""
  p = config.num_perm
  j = np.arange(p, dtype=np.uint64)
  mixed = hashing.fmix64(j * np.uint64(0x9E3779B97F4A7C15)
                         ^ np.uint64((attempt + 1) * 0xD1B54A32D192ED03
                                     % (1 << 64))
                         ^ _one_permutation_key(config))
  return (mixed % np.uint64(p)).astype(np.int64)


# Densification attempts tried per vectorized step.
_PROBES = 32


@functools.lru_cache(maxsize=64)
def _probe_block(config: MinHashConfig, attempt: int) -> np.ndarray:
  """densification_probe for attempts attempt .. attempt + _PROBES - 1."""
  block = np.stack([densification_probe(config, attempt + a)
                    for a in range(_PROBES)])
  block.setflags(write=False)
  return block


def _one_permutation_signatures(shingles_S: np.ndarray, offsets: np.ndarray,
                                config: MinHashConfig) -> np.ndarray:
  """One permutation hashing with optimal densification.

  Each shingle's hash h = fmix64(x ^ key) puts it in bin (h_hi * P) >> 32
  (h_hi: the top 32 bits) with value h_lo (the low 32 bits); each document
  keeps the minimum value per bin. An empty bin j borrows the value of bin
  densification_probe(attempt)[j] on the first attempt that lands on a
  non-empty bin (Shrivastava 2017), so two documents with the same bins
  filled borrow the same values.
  """
  p = config.num_perm
  num_docs = offsets.shape[0] - 1
  counts = np.diff(offsets)
  h = hashing.fmix64(shingles_S ^ _one_permutation_key(config))
  bins = ((h >> np.uint64(32)) * np.uint64(p)) >> np.uint64(32)
  doc_of = np.repeat(np.arange(num_docs, dtype=np.uint64), counts)
  # uint64 with 2^32 for "empty", since every uint32 value can occur.
  empty = np.uint64(1 << 32)
  sig = np.full(num_docs * p, empty, dtype=np.uint64)
  np.minimum.at(sig, doc_of * np.uint64(p) + bins, h & np.uint64(0xFFFFFFFF))
  sig = sig.reshape(num_docs, p)
  todo = np.flatnonzero((counts > 0) & np.any(sig == empty, axis=1))
  if todo.size:
    source = sig[todo]  # only bins a shingle filled are borrowed from
    result = source.copy()
    pending = np.arange(todo.size)  # rows of `source` with an empty bin
    attempt = 0
    while pending.size:  # a document with a shingle fills every bin
      # _PROBES attempts at once: each empty bin takes the value of the
      # first probed bin a shingle filled.
      probes = _probe_block(config, attempt)  # [A, P]
      found = source[pending][:, probes]  # [R, A, P]
      hit = found != empty
      first = np.argmax(hit, axis=1)[:, None, :]
      value = np.take_along_axis(found, first, axis=1)[:, 0]
      rows = result[pending]
      take = (rows == empty) & hit.any(axis=1)
      rows[take] = value[take]
      result[pending] = rows
      pending = pending[np.any(rows == empty, axis=1)]
      attempt += _PROBES
    sig[todo] = result
  out = sig.astype(np.uint32)
  out[counts == 0] = _EMPTY
  return out


def signatures(texts: Sequence[str], config: MinHashConfig) -> np.ndarray:
  """MinHash signatures [D, P] uint32 over word `config.ngram`-shingles.

  Texts are processed in groups of about `_GROUP_CHARS` characters, which
  bounds the shingle arrays' memory.
  """
  out = np.empty((len(texts), config.num_perm), dtype=np.uint32)
  start, size = 0, 0
  for i, text in enumerate(texts):
    size += len(text)
    if size >= _GROUP_CHARS or i == len(texts) - 1:
      shingles, offsets = hashing.text_ngram_hashes(texts[start:i + 1],
                                                    config.ngram)
      out[start:i + 1] = signatures_from_shingles(shingles, offsets, config)
      start, size = i + 1, 0
  return out


# Measured on 31 MB of Python sources (2-core AVX2 host, 22 x 5 hashes):
# 2^16 characters per group 1.43 s, 2^18 1.30 s, 2^20 0.93 s, 2^21 0.94 s
# (fewer numpy calls; the [P, block] temporary is bounded by `block`).
_GROUP_CHARS = 1 << 20


def signatures_parallel(texts: Sequence[str], config: MinHashConfig,
                        pool: concurrent.futures.Executor, workers: int,
                        chunks_per_worker: int = 4) -> np.ndarray:
  """`signatures(texts, config)`, computed by `pool`'s worker processes.

  The texts are cut into `workers * chunks_per_worker` contiguous chunks of
  about equal characters (signatures are per document, so the result is
  bitwise the same as in one process). The pool is the caller's (e.g. a
  spawn-context ProcessPoolExecutor kept for a whole curation run), so its
  start is paid once, not per call.
  """
  checks.at_least("workers", workers, 1)
  checks.at_least("chunks_per_worker", chunks_per_worker, 1)
  if not texts:
    return np.empty((0, config.num_perm), dtype=np.uint32)
  sizes = np.cumsum([len(t) for t in texts])
  pieces = min(len(texts), workers * chunks_per_worker)
  cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, pieces) / pieces)
  bounds = sorted({0, len(texts), *(int(c) + 1 for c in cuts)})
  bounds = [b for b in bounds if b <= len(texts)]
  parts = [list(texts[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])
           if hi > lo]
  return np.concatenate(list(pool.map(signatures, parts,
                                      [config] * len(parts))))


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
  """Fraction of equal signature entries: an unbiased Jaccard estimate."""
  return float(np.mean(sig_a == sig_b))


def band_keys(sig_DxP: np.ndarray, config: MinHashConfig) -> np.ndarray:
  """One uint64 key per (document, band): [D, N]. Equal bands, equal keys."""
  rows = sig_DxP.reshape(sig_DxP.shape[0], config.bands, config.rows)
  acc = np.zeros(rows.shape[:2], dtype=np.uint64)
  mult = hashing.position_multipliers(config.rows)
  for r in range(config.rows):
    acc += rows[:, :, r].astype(np.uint64) * mult[r]
  return hashing.fmix64(acc)


def star_edges(keys_DxN: np.ndarray, valid_D: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Candidate edges from LSH buckets, as (u_E, v_E) document indices.

  Documents sharing a key in any band are candidates. Each bucket becomes a
  star from its lowest index to every other member, which yields the same
  connected components as all pairs with far fewer edges.
  """
  us, vs = [], []
  index = np.arange(keys_DxN.shape[0])
  if valid_D is not None:
    index = index[valid_D]
  for band in range(keys_DxN.shape[1]):
    keys = keys_DxN[index, band]
    order = np.lexsort((index, keys))
    k, docs = keys[order], index[order]
    first = np.ones(k.shape[0], dtype=bool)
    first[1:] = k[1:] != k[:-1]
    head = np.maximum.accumulate(np.where(first, np.arange(k.shape[0]), 0))
    us.append(docs[head[~first]])
    vs.append(docs[~first])
  if not us:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
  return np.concatenate(us), np.concatenate(vs)


def verify_edges(sig_DxP: np.ndarray, u_E: np.ndarray, v_E: np.ndarray,
                 config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
  """Edges whose signature-estimated Jaccard passes `verify_threshold`."""
  if config.verify_threshold is None or u_E.shape[0] == 0:
    return u_E, v_E
  keep = np.empty(u_E.shape[0], dtype=bool)
  for lo in range(0, u_E.shape[0], 65536):
    hi = lo + 65536
    agree = sig_DxP[u_E[lo:hi]] == sig_DxP[v_E[lo:hi]]
    keep[lo:hi] = agree.mean(axis=1) >= config.verify_threshold
  return u_E[keep], v_E[keep]


def bucket_pairs(keys_DxN: np.ndarray) -> set[tuple[int, int]]:
  """Every candidate pair (i < j) sharing a bucket in some band.

  Quadratic in bucket size: for evaluation on samples, not for dedup.
  """
  pairs: set[tuple[int, int]] = set()
  for band in range(keys_DxN.shape[1]):
    buckets: dict[int, list[int]] = {}
    for i, key in enumerate(keys_DxN[:, band].tolist()):
      buckets.setdefault(key, []).append(i)
    for members in buckets.values():
      for x in range(len(members)):
        for y in range(x + 1, len(members)):
          pairs.add((members[x], members[y]))
  return pairs


def connected_components(num_nodes: int, u_E: np.ndarray,
                         v_E: np.ndarray) -> np.ndarray:
  """Union-find over edges, batched: returns root_D, the smallest index of
  each node's component.

  Each round hooks every root to the smallest root it shares an edge with,
  then compresses paths by pointer jumping, until no edge joins two roots.
  Roots only ever point to smaller roots, so no cycle can form.
  """
  parent = np.arange(num_nodes)
  u_E = np.asarray(u_E, dtype=np.int64)
  v_E = np.asarray(v_E, dtype=np.int64)
  while True:
    pu, pv = parent[u_E], parent[v_E]
    cross = pu != pv
    if not cross.any():
      return parent
    lo = np.minimum(pu[cross], pv[cross])
    hi = np.maximum(pu[cross], pv[cross])
    np.minimum.at(parent, hi, lo)
    while True:
      grand = parent[parent]
      if np.array_equal(grand, parent):
        break
      parent = grand
