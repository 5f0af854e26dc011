"""JSON Lines files of lifejax runs and data: one JSON object per line.

The torn-last-line policy (the one policy every reader here follows):
a process killed while appending leaves a last line without its trailing
newline that does not parse. That line is a torn write: readers skip it,
count it (`counts["torn"]`) and log a warning naming the file, and
`append_jsonl` drops it before appending, so it never becomes a bad line in
the middle of the file. Any other malformed line (bad JSON, not an object,
invalid UTF-8, or a last line that has its newline) is corruption and
raises ValueError naming `file:line`. Blank lines are skipped.

Writers: `write_jsonl` replaces a file atomically (temporary file, then
os.replace), so a crash never leaves a half-written file under the final
name; `append_jsonl` adds one row to a growing log (metrics).
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

PathLike = str | os.PathLike[str]
_log = logging.getLogger(__name__)


def _open(path: PathLike) -> BinaryIO:
  if os.fspath(path).endswith(".gz"):
    return gzip.open(path, "rb")  # type: ignore[return-value]
  return open(path, "rb")


def _parse(raw: bytes) -> Any:
  """The JSON value of a line; UnicodeDecodeError / JSONDecodeError."""
  return json.loads(raw.decode("utf-8"))


def _torn(path: PathLike, line_no: int,
          counts: collections.Counter | None) -> None:
  _log.warning("%s:%d: skipped a torn last line (no trailing newline, "
                  "not valid JSON): a write cut short by a killed process",
                  os.fspath(path), line_no)
  if counts is not None:
    counts["torn"] += 1


def iter_jsonl(path: PathLike, *, counts: collections.Counter | None = None
               ) -> Iterator[dict[str, Any]]:
  """The objects of a JSONL file (optionally .gz), one per non-blank line,
  under the module's torn-last-line policy."""
  with _open(path) as f:
    for line_no, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        obj = _parse(raw)
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if not raw.endswith(b"\n"):  # only the last line lacks its newline
          _torn(path, line_no, counts)
          return
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise ValueError(f"{os.fspath(path)}:{line_no}: bad JSON line "
                         f"({msg})") from None
      if not isinstance(obj, dict):
        raise ValueError(f"{os.fspath(path)}:{line_no}: expected a JSON "
                         f"object, got {type(obj).__name__}")
      yield obj


def read_jsonl(path: PathLike, *, counts: collections.Counter | None = None
               ) -> list[dict[str, Any]]:
  """All objects of a JSONL file (see `iter_jsonl`)."""
  return list(iter_jsonl(path, counts=counts))


def encode_line(row: Mapping[str, Any]) -> str:
  """One JSONL line (UTF-8 text, not ASCII-escaped, newline-terminated):
  the exact text every writer here produces."""
  return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> str:
  """Replaces `path` with one line per row, atomically; returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(encode_line(row))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _drop_torn_tail(f: BinaryIO, path: str) -> None:
  """Ends an append-mode file on a newline: a complete last record gets its
  newline, a torn one is cut off (see the module's policy)."""
  end = f.seek(0, os.SEEK_END)
  if end == 0:
    return
  f.seek(end - 1)
  if f.read(1) == b"\n":
    return
  start = end
  while start > 0:  # back to the byte after the last newline
    step = min(start, 1 << 16)
    f.seek(start - step)
    chunk = f.read(step)
    i = chunk.rfind(b"\n")
    if i >= 0:
      start = start - step + i + 1
      break
    start -= step
  f.seek(start)
  tail = f.read()
  try:
    ok = isinstance(_parse(tail), dict)
  except (UnicodeDecodeError, json.JSONDecodeError):
    ok = False
  if ok:
    f.seek(end)
    f.write(b"\n")
  else:
    _log.warning("%s: dropped a torn last line (%d bytes) before "
                    "appending", path, end - start)
    f.truncate(start)


def append_jsonl(path: PathLike, row: Mapping[str, Any]) -> None:
  """Appends one row to `path` (created if missing) and flushes it."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "ab+") as f:
    _drop_torn_tail(f, path)
    f.seek(0, os.SEEK_END)
    f.write(encode_line(row).encode("utf-8"))
