"""Vectorized, deterministic hashing of words and word n-grams.

Every hash here is a pure function of the text (no Python `hash`, no process
seed), so signatures computed in different processes, machines or runners are
bit-identical. A batch of documents is hashed at once: the texts are joined
into one byte array (separators mapped to NUL by a single bytes.translate),
and every word's polynomial hash is one segment sum (np.add.reduceat) of
byte * BASE^position, shifted back by BASE^-start. uint64 arithmetic wraps,
i.e. everything is mod 2^64.

Legend: D documents, W words, S n-grams (shingles), B bytes.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

# Words for hashing: lower-cased runs of letters/digits (punctuation, `_` and
# every kind of whitespace separate words).
_NON_WORD = re.compile(r"[\W_]+")
# The separators bytes.translate cannot see: non-ASCII characters that are
# not word characters. A non-ASCII text is lower-cased, these become spaces,
# and the byte table does the rest: the same words as `canonical_words`, with
# one regex match per rare run instead of one per ASCII separator.
_NON_ASCII_SEP = re.compile(r"[^\x00-\x7f\w]+")

_BASE = np.uint64(0x100000001B3)  # odd, so invertible mod 2^64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LEN_SALT = np.uint64(0x9E3779B97F4A7C15)

# Odd multipliers for the position inside an n-gram (order matters).
_POSITION_MULTIPLIERS = np.array(
    [(0x9E3779B97F4A7C15 * (2 * i + 1) + 0x632BE59BD9B4E019 * i) % (1 << 64) | 1
     for i in range(64)],
    dtype=np.uint64)

# (BASE^i, BASE^-i) tables, replaced as one tuple so that concurrent readers
# (Beam's DirectRunner uses threads) never pair tables of different lengths.
_powers_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "tables": (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)),
}


def canonical_words(text: str) -> list[str]:
  """Lower-cased alphanumeric words of `text`, as hashed by this module."""
  return _NON_WORD.sub(" ", text.lower()).split()


def fmix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finalizer: an avalanching bijection on uint64 arrays."""
  x = x.copy()
  tmp = np.empty_like(x)
  for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
    np.right_shift(x, np.uint64(shift), out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    if mult is not None:
      np.multiply(x, mult, out=x)
  return x


def position_multipliers(n: int) -> np.ndarray:
  """The first `n` odd uint64 multipliers used to combine ordered hashes."""
  return _POSITION_MULTIPLIERS[:n]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
  """BASE^i and BASE^-i (mod 2^64) for i < n, grown and cached."""
  pw, inv = _powers_cache["tables"]
  if pw.shape[0] < n:
    size = max(n, 2 * pw.shape[0])
    pw = np.full(size, _BASE, dtype=np.uint64)
    pw[0] = 1
    inv = np.full(size, _BASE_INV, dtype=np.uint64)
    inv[0] = 1
    pw, inv = np.cumprod(pw, dtype=np.uint64), np.cumprod(inv, dtype=np.uint64)
    _powers_cache["tables"] = (pw, inv)
  return pw[:n], inv[:n]


def _separator_table() -> bytes:
  """Byte map: ASCII letters lower-cased, digits kept, other ASCII -> 0."""
  table = bytearray(256)
  for i in range(256):
    c = chr(i)
    if i >= 128:
      table[i] = i  # UTF-8 continuation/lead bytes stay part of words
    elif c.isalnum():
      table[i] = ord(c.lower())
  return bytes(table)


_SEPARATORS = _separator_table()


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Hashes every canonical word of every text (see `canonical_words`).

  Returns:
    (hashes_W uint64, offsets_D1 int64): the words of text d are
    hashes_W[offsets[d]:offsets[d + 1]].
  """
  # ASCII texts (the common case) skip the regex: one bytes.translate maps
  # separators to NUL for a whole group of texts.
  parts = [t.encode("ascii") if t.isascii()
           else _NON_ASCII_SEP.sub(" ", t.lower()).encode("utf-8")
           for t in texts]
  hashes, counts = [], []
  group_start, group_bytes = 0, 0
  for i, part in enumerate(parts):
    group_bytes += len(part) + 1
    if group_bytes >= _GROUP_BYTES or i == len(parts) - 1:
      h, c = _hash_group(parts[group_start:i + 1])
      hashes.append(h)
      counts.append(c)
      group_start, group_bytes = i + 1, 0
  offsets = np.zeros(len(parts) + 1, dtype=np.int64)
  if counts:
    np.cumsum(np.concatenate(counts), out=offsets[1:])
  if not hashes:
    return np.zeros(0, dtype=np.uint64), offsets
  return np.concatenate(hashes), offsets


# Texts are hashed in groups of about this many bytes: keeps the arrays in
# cache and the table of powers small.
_GROUP_BYTES = 1 << 20


def _hash_group(parts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Word hashes [W] and per-text word counts [len(parts)] of one group."""
  lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64,
                        count=len(parts))
  doc_starts = np.zeros(len(parts), dtype=np.int64)
  np.cumsum(lengths[:-1], out=doc_starts[1:])
  bytes_B = np.frombuffer(b"\0".join(parts).translate(_SEPARATORS) + b"\0",
                          dtype=np.uint8)
  # Word boundaries are where in-word changes; starting outside a word and
  # ending on the NUL above, they alternate start, end, start, ...
  in_word = bytes_B != 0
  edges = np.flatnonzero(in_word[1:] != in_word[:-1]) + 1
  if in_word[0]:
    edges = np.concatenate([[0], edges])
  starts, ends = edges[0::2], edges[1::2]
  bounds = np.append(np.searchsorted(starts, doc_starts), starts.shape[0])
  counts = np.diff(bounds)
  if starts.shape[0] == 0:
    return np.zeros(0, dtype=np.uint64), counts
  pw, inv = _powers(bytes_B.shape[0])
  # Separators are 0 so they add nothing; each word's sum of c_i * BASE^i,
  # shifted back by BASE^-start, is its position-free polynomial hash.
  raw = np.add.reduceat(bytes_B.astype(np.uint64) * pw, starts) * inv[starts]
  lengths_W = (ends - starts).astype(np.uint64)
  return fmix64(raw ^ (lengths_W * _LEN_SALT)), counts


def ngram_hashes(hashes_W: np.ndarray, offsets: np.ndarray, n: int,
                 short_docs: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Hashes every window of `n` consecutive words inside each document.

  Args:
    hashes_W: word hashes from `word_hashes`.
    offsets: its document offsets, shape [D + 1].
    n: n-gram length in words (1 <= n <= 64).
    short_docs: if True a document with 0 < words < n contributes a single
      n-gram of all its words (so short documents still get a signature);
      if False it contributes none.

  Returns:
    (ngrams_S uint64, ngram_offsets_D1 int64), laid out like `word_hashes`.
  """
  if not 1 <= n <= _POSITION_MULTIPLIERS.shape[0]:
    raise ValueError(f"n-gram length must be in [1, 64], got {n}")
  counts = np.diff(offsets)
  num_docs = counts.shape[0]
  full = np.maximum(counts - n + 1, 0)
  short = (counts > 0) & (counts < n) if short_docs else np.zeros(num_docs,
                                                                 dtype=bool)
  per_doc = np.where(short, 1, full)
  ng_offsets = np.zeros(num_docs + 1, dtype=np.int64)
  np.cumsum(per_doc, out=ng_offsets[1:])
  out = np.zeros(int(ng_offsets[-1]), dtype=np.uint64)
  if out.shape[0] == 0:
    return out, ng_offsets
  num_words = hashes_W.shape[0]
  if num_words >= n:
    # Every window of the concatenated word array, by shifted slices; then
    # keep the windows that start and end inside one document.
    acc = hashes_W[:num_words - n + 1] * _POSITION_MULTIPLIERS[0]
    for j in range(1, n):
      acc += hashes_W[j:num_words - n + 1 + j] * _POSITION_MULTIPLIERS[j]
    doc_of = np.repeat(np.arange(num_docs), counts)[:num_words - n + 1]
    inside = np.arange(num_words - n + 1) + n <= offsets[1:][doc_of]
    slots = np.repeat(~short, per_doc)
    out[slots] = acc[inside]
  for d in np.flatnonzero(short).tolist():
    words = hashes_W[offsets[d]:offsets[d + 1]]
    out[ng_offsets[d]] = np.sum(words * _POSITION_MULTIPLIERS[:words.shape[0]],
                                dtype=np.uint64)
  return fmix64(out), ng_offsets


def text_ngram_hashes(texts: Sequence[str], n: int,
                      short_docs: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """`ngram_hashes` of canonical words, straight from texts."""
  words, offsets = word_hashes(texts)
  return ngram_hashes(words, offsets, n, short_docs=short_docs)
