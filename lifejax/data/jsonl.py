"""JSON Lines files of lifejax runs and data: one JSON object per line.

The torn-last-line policy (the one policy every reader here follows):
a process killed while appending leaves a last line without its trailing
newline that does not parse. That line is a torn write: readers skip it,
count it (`counts["torn"]`) and log a warning naming the file, and
`append_jsonl` drops it before appending, so it never becomes a bad line in
the middle of the file. Any other malformed line (bad JSON, not an object,
invalid UTF-8, or a last line that has its newline) is corruption and
raises a `validation.RecordError` (a ValueError) naming `file:line`. Blank
lines are skipped.

Data loaders read through `read_checked`: each record is checked as it is
read, and a bad one (bad JSON, or one the loader's check rejects) is raised
or skipped and counted by the skip policy of `validation.py`.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, NamedTuple

from lifejax.data import validation

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


def iter_numbered(path: PathLike, *,
                  counts: collections.Counter | None = None,
                  on_bad: Callable[[validation.RecordError], None] | None
                  = None) -> Iterator[tuple[int, dict[str, Any]]]:
  """(1-based line number, object) of a JSONL file (optionally .gz), one
  per non-blank line, under the module's torn-last-line policy. A bad line
  raises its RecordError, or with `on_bad` is passed to it and skipped."""
  p = os.fspath(path)
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
        if isinstance(e, json.JSONDecodeError):
          err = validation.RecordError(validation.line_at(p, line_no),
                                       "bad_json", f"bad JSON line ({e.msg})",
                                       path=p)
        else:
          err = validation.RecordError(validation.line_at(p, line_no),
                                       "invalid_utf8", f"bad JSON line ({e})",
                                       path=p)
      else:
        if isinstance(obj, dict):
          yield line_no, obj
          continue
        err = validation.RecordError(
            validation.line_at(p, line_no), "not_an_object",
            f"expected a JSON object, got {type(obj).__name__}", path=p)
      if on_bad is None:
        raise err
      on_bad(err)


def iter_jsonl(path: PathLike, *, counts: collections.Counter | None = None
               ) -> Iterator[dict[str, Any]]:
  """The objects of a JSONL file (optionally .gz), one per non-blank line,
  under the module's torn-last-line policy."""
  for _, obj in iter_numbered(path, counts=counts):
    yield obj


def read_jsonl(path: PathLike, *, counts: collections.Counter | None = None
               ) -> list[dict[str, Any]]:
  """All objects of a JSONL file (see `iter_jsonl`)."""
  return list(iter_jsonl(path, counts=counts))


# A record check: raises an (unlocated) validation.RecordError for a bad
# record; returns True for a record kept but truncated to a length bound.
Check = Callable[[dict[str, Any]], bool | None]


class Checked(NamedTuple):
  """What `read_checked` kept: records, their 1-based lines, the counts."""
  records: list[dict[str, Any]]
  lines: list[int]
  counts: validation.FileCounts


def read_checked(path: PathLike, check: Check | None = None, *,
                 policy: str = validation.EVAL_POLICY, what: str = "records"
                 ) -> Checked:
  """The records of one JSONL file that pass `check`, with their lines and
  the file's counts.

  A bad line or a record `check` rejects is a RecordError at `path:line`:
  raised ("strict") or skipped and counted ("skip"). A torn last line is
  skipped under both policies (counted as "torn_last_line"). A file with no
  records, or none valid, is an error under both policies.
  """
  validation.check_policy("policy", policy)
  p = os.fspath(path)
  counts = validation.FileCounts()
  torn: collections.Counter = collections.Counter()
  out, lines = [], []

  def bad(err: validation.RecordError) -> None:
    counts.read += 1
    validation.reject(err, policy, counts)

  for line_no, obj in iter_numbered(p, counts=torn, on_bad=bad):
    counts.read += 1
    try:
      truncated = check(obj) if check is not None else None
    except validation.RecordError as e:
      validation.reject(e.at(validation.line_at(p, line_no), p), policy,
                        counts)
      continue
    counts.truncated += bool(truncated)
    out.append(obj)
    lines.append(line_no)
  if torn:
    counts.read += 1
    counts.skipped["torn_last_line"] += 1
  if not counts.read:
    raise validation.empty_file(p, what)
  if not out:
    raise validation.RecordError(
        p, "no_valid_records", f"all {counts.read} {what} were skipped "
        f"({dict(counts.skipped)})", path=p)
  return Checked(out, lines, counts)


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
