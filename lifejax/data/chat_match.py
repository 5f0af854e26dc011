"""Finding the turns of a rendered conversation again.

A rendering is BOS, then turns `prefix content suffix separator`, optionally
ending with a bare assistant prefix (the generation prompt). `parse_turns`
recovers the turns from a sequence of atoms: token ids (chat_render.py's
`parse_conversation`) or characters and marker strings (the parity checker).
A turn's content ends at the first occurrence of its role's suffix that lets
the rest of the sequence parse too (backtracking), so content that happens to
contain the suffix does not derail it.

With `space` (a predicate on atoms) matching is lenient: whitespace atoms in
and around the markers are ignored, and content comes out without the
whitespace next to them. The parity checker uses that to find whitespace
drift; token-level parsing is always exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

Atom = int | str
Pattern = Sequence[Atom]
Space = Callable[[Atom], bool] | None


def split_markers(text: str, markers: Sequence[str]) -> list[tuple[str, bool]]:
  """`text` cut into non-empty (part, is_marker) pieces; longest marker wins."""
  if not markers:
    return [(text, False)] if text else []
  pattern = "(" + "|".join(
      re.escape(m) for m in sorted(markers, key=len, reverse=True)) + ")"
  parts = re.split(pattern, text)
  return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


class Turn(NamedTuple):
  """A found turn: content is `seq[start:end]`; `closed` if its suffix was
  found (an unterminated last assistant turn is a cut-off generation)."""
  role: str
  start: int
  end: int
  closed: bool = True


class Parsed(NamedTuple):
  turns: list[Turn]
  generation_prompt: bool  # ends with a bare assistant prefix


def _match(seq: tuple[Atom, ...], pos: int, pat: tuple[Atom, ...],
           space: Space) -> int | None:
  """End of `pat` matched at `pos`, or None."""
  if space is None:
    end = pos + len(pat)
    return end if seq[pos:end] == pat else None
  i, n = pos, len(seq)
  for atom in pat:
    while i < n and space(seq[i]):
      i += 1
    if i >= n or seq[i] != atom:
      return None
    i += 1
  while i < n and space(seq[i]):
    i += 1
  return i


def _occurrences(seq: tuple[Atom, ...], start: int, pat: tuple[Atom, ...],
                 space: Space) -> Iterator[tuple[int, int]]:
  """(start, end) of every match of `pat` at or after `start`, in order."""
  if space is None and pat:
    s = start
    while True:
      try:
        s = seq.index(pat[0], s)
      except ValueError:
        return
      e = _match(seq, s, pat, space)
      if e is not None:
        yield s, e
      s += 1
  else:
    for s in range(start, len(seq) + 1):
      e = _match(seq, s, pat, space)
      if e is not None:
        yield s, e


def parse_turns(seq: Sequence[Atom], bos: Pattern,
                formats: Mapping[str, tuple[Pattern, Pattern, Pattern]], *,
                space: Space = None, allow_open: bool = False,
                marker: Callable[[Atom], bool] | None = None
                ) -> Parsed | None:
  """The turns of `seq`, or None if it is not a rendering of `formats`.

  Args:
    seq: token ids, or text atoms (characters and whole marker strings).
    bos: the leading BOS pattern (may be empty).
    formats: role -> (prefix, suffix, separator) patterns; prefixes and
      suffixes non-empty. The separator may be missing at the very end.
    space: whitespace predicate for lenient matching (None: exact).
    allow_open: accept an unterminated last assistant turn.
    marker: atoms that can never be content (special ids, marker strings);
      a turn's content ends at the latest before the next one.
  """
  seq = tuple(seq)
  n = len(seq)
  if space is None:
    prep = tuple
  else:
    def prep(p: Pattern) -> tuple[Atom, ...]:
      return tuple(a for a in p if not space(a))
  pats = {role: tuple(prep(p) for p in fmt) for role, fmt in formats.items()}
  first = _match(seq, 0, prep(bos), space)
  if first is None:
    return None
  # limit[i]: index of the first marker atom at or after i.
  limit = [n] * (n + 1)
  for i in range(n - 1, -1, -1):
    limit[i] = i if marker is not None and marker(seq[i]) else limit[i + 1]
  memo: dict[int, Parsed | None] = {}

  def at(pos: int) -> Parsed | None:
    if pos in memo:
      return memo[pos]
    memo[pos] = None  # A zero-progress re-entry fails instead of looping.
    memo[pos] = result = turns_at(pos)
    return result

  def turns_at(pos: int) -> Parsed | None:
    if pos == n:
      return Parsed([], False)
    for role, (prefix, suffix, separator) in pats.items():
      begin = _match(seq, pos, prefix, space)
      if begin is None:
        continue
      if begin == n and role == "assistant":
        return Parsed([], True)
      for s, e in _occurrences(seq, begin, suffix, space):
        if s > limit[begin]:
          break
        nxt = e if e == n else _match(seq, e, separator, space)
        rest = None if nxt is None else at(nxt)
        if rest is not None:
          return Parsed([Turn(role, begin, s)] + rest.turns,
                        rest.generation_prompt)
      if allow_open and role == "assistant" and limit[begin] == n:
        return Parsed([Turn(role, begin, n, closed=False)], False)
    return None

  return at(first)
