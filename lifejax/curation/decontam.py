"""Step 8, decontamination against registered evaluation sets.

A document is contaminated if it shares a word n-gram (13 by default, as in
GPT-3) with any evaluation item. Eval items shorter than n words cannot share
a 13-gram; with `match_short_items` such an item (if it has at least
`short_item_min_words` words) matches when it appears whole. Words are the
canonical lower-cased alphanumeric words of `hashing`, so case and
punctuation do not hide a leak.

"drop" removes the document; "cut" removes the matched word spans and keeps
the rest (the document is dropped only if nothing meaningful is left).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from lifejax.curation import hashing

_WORD = re.compile(r"[^\W_]+")
_SPACES = re.compile(r"[ \t]{2,}")


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
  enabled: bool = True
  ngram: int = 13
  mode: str = "drop"  # "drop" | "cut"
  match_short_items: bool = True
  short_item_min_words: int = 8
  # In "cut" mode, a document left with fewer words is dropped.
  min_words_after_cut: int = 20
  exempt_sources: tuple[str, ...] = ()

  def __post_init__(self):
    if self.mode not in ("drop", "cut"):
      raise ValueError(f"mode must be 'drop' or 'cut', got {self.mode!r}")


@dataclasses.dataclass
class ContaminationIndex:
  """Hashed n-grams of every registered eval item, by n-gram length.

  `tables[n]` = (sorted n-gram hashes, index into `set_names` per hash).
  """
  set_names: list[str]
  tables: dict[int, tuple[np.ndarray, np.ndarray]]
  num_items: dict[str, int]

  def find(self, text: str) -> list[tuple[int, int, str]]:
    """Every eval n-gram in `text`: (first word index, length, eval set)."""
    hits: list[tuple[int, int, str]] = []
    if not self.tables:
      return hits
    word_h, offsets = hashing.word_hashes([text])
    for n, (keys, owners) in sorted(self.tables.items()):
      grams, _ = hashing.ngram_hashes(word_h, offsets, n, short_docs=False)
      if grams.shape[0] == 0:
        continue
      pos = np.searchsorted(keys, grams)
      pos = np.minimum(pos, keys.shape[0] - 1)
      for start in np.flatnonzero(keys[pos] == grams).tolist():
        hits.append((start, n, self.set_names[int(owners[pos[start]])]))
    return hits


def build_index(eval_sets: Mapping[str, Iterable[str]],
                config: DecontamConfig) -> ContaminationIndex:
  """Hashes the n-grams of every eval item, grouped by n-gram length."""
  names = sorted(eval_sets)
  by_length: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
  counts: dict[str, int] = {}
  for set_id, name in enumerate(names):
    items = [t for t in eval_sets[name] if t]
    counts[name] = len(items)
    word_h, offsets = hashing.word_hashes(items)
    lengths = np.diff(offsets)
    full = lengths >= config.ngram
    if full.any():
      sub_offsets = np.concatenate([[0], np.cumsum(lengths[full])])
      sub_words = np.concatenate(
          [word_h[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(full)])
      grams, _ = hashing.ngram_hashes(sub_words, sub_offsets, config.ngram,
                                      short_docs=False)
      _add(by_length, config.ngram, grams, set_id)
    if config.match_short_items:
      short = np.flatnonzero((lengths < config.ngram)
                             & (lengths >= config.short_item_min_words))
      for i in short.tolist():
        n = int(lengths[i])
        grams, _ = hashing.ngram_hashes(word_h[offsets[i]:offsets[i + 1]],
                                        np.array([0, n]), n, short_docs=False)
        _add(by_length, n, grams, set_id)
  tables = {}
  for n, (key_parts, owner_parts) in by_length.items():
    keys = np.concatenate(key_parts)
    owners = np.concatenate(owner_parts)
    order = np.argsort(keys, kind="stable")
    tables[n] = (keys[order], owners[order])
  return ContaminationIndex(set_names=names, tables=tables, num_items=counts)


def _add(by_length, n: int, grams: np.ndarray, set_id: int) -> None:
  keys, owners = by_length.setdefault(n, ([], []))
  keys.append(grams)
  owners.append(np.full(grams.shape[0], set_id, dtype=np.int32))


def load_eval_jsonl(path: str | Path,
                    fields: tuple[str, ...] = ("question", "answer")
                    ) -> list[str]:
  """The given string fields of every record of a JSONL eval file."""
  items: list[str] = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      record = json.loads(line)
      items.extend(record[k] for k in fields
                   if isinstance(record.get(k), str))
  return items


def cut_spans(text: str, hits: list[tuple[int, int, str]]) -> str:
  """`text` without the words covered by `hits` (word index spans)."""
  spans = [m.span() for m in _WORD.finditer(text)]
  covered = np.zeros(len(spans) + 1, dtype=np.int64)
  for start, n, _ in hits:
    covered[start] += 1
    covered[start + n] -= 1
  inside = np.cumsum(covered[:-1]) > 0
  pieces, cursor, i = [], 0, 0
  while i < len(spans):
    if not inside[i]:
      i += 1
      continue
    j = i
    while j + 1 < len(spans) and inside[j + 1]:
      j += 1
    pieces.append(text[cursor:spans[i][0]])
    cursor = spans[j][1]
    i = j + 1
  pieces.append(text[cursor:])
  return _SPACES.sub(" ", "".join(pieces)).strip()
