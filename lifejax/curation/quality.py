"""Step 6, document quality filters with their published thresholds.

* Gopher quality and repetition rules (Rae et al., 2021, appendix A1).
* FineWeb's extra line rules (Penedo et al., 2024).
* C4's page rules (Raffel et al., 2020): lorem ipsum, curly bracket,
  minimum sentence count. (C4's line rules are the boilerplate step.)

Every threshold is a field; setting it to None switches that one rule off.
A verdict is the name of the first failing rule, e.g.
"gopher_repetition.dup_line_frac", or None.

Conventions: "words" are whitespace tokens with leading/trailing punctuation
stripped (tokens that are only punctuation are not words); n-gram statistics
use the lower-cased alphanumeric words of `hashing.canonical_words`, an
n-gram's characters being its words and the spaces between them. All
character fractions are over len(text), as in datatrove's implementation.
The top-n-gram rule only counts an n-gram that occurs more than once.
"""

from __future__ import annotations

import dataclasses
import re
import string

import numpy as np

from lifejax.curation import hashing

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_PUNCT = string.punctuation + "“”‘’«»…–—"
_BULLETS = ("•", "‣", "◦", "⁃", "▪", "-", "*")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


@dataclasses.dataclass(frozen=True)
class GopherQualityConfig:
  enabled: bool = True
  min_doc_words: int | None = 50
  max_doc_words: int | None = 100_000
  min_avg_word_length: float | None = 3.0
  max_avg_word_length: float | None = 10.0
  max_hash_ratio: float | None = 0.1  # '#' per word
  max_ellipsis_ratio: float | None = 0.1  # '...' or '…' per word
  max_bullet_lines_ratio: float | None = 0.9
  max_ellipsis_lines_ratio: float | None = 0.3
  min_alpha_words_ratio: float | None = 0.8
  min_stop_words: int | None = 2
  stop_words: tuple[str, ...] = GOPHER_STOP_WORDS


@dataclasses.dataclass(frozen=True)
class GopherRepetitionConfig:
  enabled: bool = True
  dup_para_frac: float | None = 0.3
  dup_para_char_frac: float | None = 0.2
  dup_line_frac: float | None = 0.3
  dup_line_char_frac: float | None = 0.2
  # (n, max fraction of characters in the most frequent repeated n-gram)
  top_ngrams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18),
                                               (4, 0.16))
  # (n, max fraction of characters covered by n-grams seen more than once)
  dup_ngrams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14),
                                               (7, 0.13), (8, 0.12),
                                               (9, 0.11), (10, 0.10))


@dataclasses.dataclass(frozen=True)
class FineWebConfig:
  enabled: bool = True
  # Drop if at most this fraction of lines ends in terminal punctuation.
  line_punct_thr: float | None = 0.12
  # Drop if at least this fraction of lines is <= short_line_length chars.
  short_line_thr: float | None = 0.67
  short_line_length: int = 30
  # Drop if duplicated lines hold at least this fraction of the characters.
  char_dup_ratio: float | None = 0.01
  # Drop if there are more than this many line breaks per word (lists).
  newline_ratio: float | None = 0.3
  stop_chars: tuple[str, ...] = (".", "'", '"', "!", "?")


@dataclasses.dataclass(frozen=True)
class C4PageConfig:
  enabled: bool = True
  lorem_ipsum: bool = True
  curly_bracket: bool = True
  min_sentences: int | None = 5


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  enabled: bool = True
  gopher_quality: GopherQualityConfig = GopherQualityConfig()
  gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
  fineweb: FineWebConfig = FineWebConfig()
  c4: C4PageConfig = C4PageConfig()
  exempt_sources: tuple[str, ...] = ()


def _words(text: str) -> list[str]:
  stripped = (token.strip(_PUNCT) for token in text.split())
  return [w for w in stripped if w]


def _duplicates(items: list[str]) -> tuple[int, int]:
  """(number of repeated items, characters in them): first sightings free."""
  seen: set[str] = set()
  count = chars = 0
  for item in items:
    if item in seen:
      count += 1
      chars += len(item)
    else:
      seen.add(item)
  return count, chars


def gopher_quality(text: str, config: GopherQualityConfig) -> str | None:
  """First failing Gopher quality rule, or None."""
  words = _words(text)
  n = len(words)
  if config.min_doc_words is not None and n < config.min_doc_words:
    return "min_doc_words"
  if config.max_doc_words is not None and n > config.max_doc_words:
    return "max_doc_words"
  if n == 0:
    return "min_doc_words"
  mean_len = sum(len(w) for w in words) / n
  if config.min_avg_word_length is not None and (
      mean_len < config.min_avg_word_length):
    return "min_avg_word_length"
  if config.max_avg_word_length is not None and (
      mean_len > config.max_avg_word_length):
    return "max_avg_word_length"
  if config.max_hash_ratio is not None and (
      text.count("#") / n > config.max_hash_ratio):
    return "max_hash_ratio"
  if config.max_ellipsis_ratio is not None and (
      (text.count("...") + text.count("…")) / n > config.max_ellipsis_ratio):
    return "max_ellipsis_ratio"
  lines = [line for line in text.split("\n") if line.strip()]
  if lines and config.max_bullet_lines_ratio is not None:
    bullets = sum(line.lstrip().startswith(_BULLETS) for line in lines)
    if bullets / len(lines) > config.max_bullet_lines_ratio:
      return "max_bullet_lines_ratio"
  if lines and config.max_ellipsis_lines_ratio is not None:
    ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if ellipses / len(lines) > config.max_ellipsis_lines_ratio:
      return "max_ellipsis_lines_ratio"
  if config.min_alpha_words_ratio is not None:
    alpha = sum(any(c.isalpha() for c in w) for w in words)
    if alpha / n < config.min_alpha_words_ratio:
      return "min_alpha_words_ratio"
  if config.min_stop_words is not None:
    stops = set(config.stop_words)
    if sum(w.lower() in stops for w in words) < config.min_stop_words:
      return "min_stop_words"
  return None


def _ngram_stats(word_h: np.ndarray, lengths: np.ndarray, n: int,
                 total_chars: int) -> tuple[float, float]:
  """Character fractions of (the most frequent repeated n-gram times its
  count, every character covered by some repeated n-gram).

  An n-gram's characters are its words plus the n - 1 spaces between them;
  overlapping repeats are counted once.
  """
  if word_h.shape[0] < n or total_chars == 0:
    return 0.0, 0.0
  offsets = np.array([0, word_h.shape[0]], dtype=np.int64)
  grams, _ = hashing.ngram_hashes(word_h, offsets, n, short_docs=False)
  _, first, inverse, counts = np.unique(grams, return_index=True,
                                        return_inverse=True,
                                        return_counts=True)
  gram_chars = np.convolve(lengths, np.ones(n, dtype=np.int64), "valid") + n - 1
  top = 0.0
  best = counts.max()
  if best > 1:
    top = float((gram_chars[first[counts == best]] * best).max())
  starts = np.flatnonzero(counts[inverse] > 1)
  cover = np.zeros(word_h.shape[0] + 1, dtype=np.int64)
  np.add.at(cover, starts, 1)
  np.add.at(cover, starts + n - 1, -1)  # n - 1 joints after each start
  joints = np.cumsum(cover[:-1])[:-1] > 0  # joint i links words i, i + 1
  covered = np.zeros(word_h.shape[0], dtype=bool)
  covered[:-1] |= joints
  covered[1:] |= joints
  chars = float(lengths[covered].sum() + joints.sum())
  return top / total_chars, chars / total_chars


def gopher_repetition(text: str, config: GopherRepetitionConfig) -> str | None:
  """First failing Gopher repetition rule, or None."""
  if not text:
    return None
  paragraphs = [p for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
  if paragraphs:
    dup, chars = _duplicates(paragraphs)
    if config.dup_para_frac is not None and (
        dup / len(paragraphs) > config.dup_para_frac):
      return "dup_para_frac"
    if config.dup_para_char_frac is not None and (
        chars / len(text) > config.dup_para_char_frac):
      return "dup_para_char_frac"
  lines = [line for line in text.split("\n") if line.strip()]
  if lines:
    dup, chars = _duplicates(lines)
    if config.dup_line_frac is not None and (
        dup / len(lines) > config.dup_line_frac):
      return "dup_line_frac"
    if config.dup_line_char_frac is not None and (
        chars / len(text) > config.dup_line_char_frac):
      return "dup_line_char_frac"
  words = hashing.canonical_words(text)
  if not words:
    return None
  word_h, _ = hashing.word_hashes([" ".join(words)])
  lengths = np.fromiter((len(w) for w in words), dtype=np.int64,
                        count=len(words))
  for n, limit in config.top_ngrams:
    if _ngram_stats(word_h, lengths, n, len(text))[0] > limit:
      return f"top_{n}gram_char_frac"
  for n, limit in config.dup_ngrams:
    if _ngram_stats(word_h, lengths, n, len(text))[1] > limit:
      return f"dup_{n}gram_char_frac"
  return None


def fineweb(text: str, config: FineWebConfig) -> str | None:
  """First failing FineWeb line rule, or None."""
  lines = [line for line in text.split("\n") if line.strip()]
  if not lines:
    return None
  if config.line_punct_thr is not None:
    ended = sum(line.rstrip().endswith(config.stop_chars) for line in lines)
    if ended / len(lines) <= config.line_punct_thr:
      return "line_punct_ratio"
  if config.short_line_thr is not None:
    short = sum(len(line) <= config.short_line_length for line in lines)
    if short / len(lines) >= config.short_line_thr:
      return "short_line_ratio"
  if config.char_dup_ratio is not None:
    _, chars = _duplicates(lines)
    if chars / max(len(text.replace("\n", "")), 1) >= config.char_dup_ratio:
      return "char_dup_ratio"
  if config.newline_ratio is not None:
    words = len(_words(text))
    if text.count("\n") / max(words, 1) > config.newline_ratio:
      return "newline_ratio"
  return None


def c4_page(text: str, config: C4PageConfig) -> str | None:
  """First failing C4 page rule, or None."""
  if config.lorem_ipsum and "lorem ipsum" in text.lower():
    return "lorem_ipsum"
  if config.curly_bracket and "{" in text:
    return "curly_bracket"
  if config.min_sentences is not None and (
      len(_SENTENCE_END.findall(text)) < config.min_sentences):
    return "min_sentences"
  return None


def quality_verdict(text: str, config: QualityConfig) -> str | None:
  """"<family>.<rule>" of the first failing enabled rule, or None."""
  families = (("c4", c4_page, config.c4),
              ("gopher_quality", gopher_quality, config.gopher_quality),
              ("gopher_repetition", gopher_repetition,
               config.gopher_repetition),
              ("fineweb", fineweb, config.fineweb))
  for name, rule, sub in families:
    if sub.enabled:
      reason = rule(text, sub)
      if reason is not None:
        return f"{name}.{reason}"
  return None
