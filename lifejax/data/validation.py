"""Validated inputs: one error type, one skip policy, one counter.

Every loader of records (pretraining text, SFT conversations, preference
pairs, RL prompts, and the evaluation sets of each) checks a record where
it reads it, and treats a bad one by a policy:

  "strict"  raise the bad record's `RecordError`
  "skip"    drop it, count it under its reason and go on

A `RecordError` reads `path:line: reason: detail` (lines are 1-based; a
record with no line is named by what identifies it: `path row 3`,
`source record 4 (id 'x')`). A loader reports what it read into a
`SkipLog`: per file, the records read, those skipped per reason, and those
kept but cut to the loader's length bound ("truncated"). A stage writes the
log to summary.json (`input_records`) and, at its end, logs one warning
line per file that had records skipped or truncated.

An empty file is an error under either policy: it is a config mistake (a
wrong path, a failed export), not a bad record. Defaults (README, "Input
validation"): skip-and-count for training data, strict for evaluation sets.

Loaders report from the thread that reads the files (the stage's), never
from grain's reader threads, so the log needs no lock.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from typing import Any, Protocol

POLICIES = ("strict", "skip")
TRAIN_POLICY = "skip"   # training data: a few bad records cost a few records
EVAL_POLICY = "strict"  # eval sets: a smaller set silently changes the numbers

_log = logging.getLogger(__name__)


class RecordError(ValueError):
  """A bad record: `where` it is (`path:line`), `reason` (a short key, also
  the skip counter's) and `detail`; `path` is its file when known."""

  def __init__(self, where: str, reason: str, detail: str = "", *,
               path: str | None = None):
    super().__init__(": ".join(x for x in (where, reason, detail) if x))
    self.where = where
    self.reason = reason
    self.detail = detail
    self.path = path

  def at(self, where: str, path: str | None = None) -> RecordError:
    """The same error located at `where` (in file `path`)."""
    return RecordError(where, self.reason, self.detail, path=path)

  def __reduce__(self):
    return (_rebuild, (type(self), self.where, self.reason, self.detail,
                       self.path))


def _rebuild(cls: type, where: str, reason: str, detail: str,
             path: str | None) -> RecordError:
  err = RecordError.__new__(cls)
  RecordError.__init__(err, where, reason, detail, path=path)
  return err


def line_at(path: str | os.PathLike[str], line: int) -> str:
  """`path:line`, how every file record is named."""
  return f"{os.fspath(path)}:{line}"


def empty_file(path: str | os.PathLike[str], what: str = "records"
               ) -> RecordError:
  """The error for a file with nothing in it (raised under both policies)."""
  p = os.fspath(path)
  return RecordError(p, "empty_file", f"the file has no {what}", path=p)


def is_text(value: str) -> bool:
  """False for a str holding a lone surrogate: valid JSON (as a \\ud800
  escape) but not text, which no tokenizer can encode."""
  if value.isascii():
    return True
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def field(record: Any, name: str, typ: type) -> Any:
  """record[name] if it is a `typ`; else an (unlocated) RecordError:
  "not_an_object", "missing_field" (absent or null), "wrong_type" or, for
  a str with a lone surrogate, "invalid_utf8"."""
  if not isinstance(record, dict):
    raise RecordError("", "not_an_object", "expected a JSON object, got "
                      f"{type(record).__name__}")
  value = record.get(name)
  if value is None:
    raise RecordError("", "missing_field", f"field {name!r} is missing")
  if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
    raise RecordError("", "wrong_type", f"field {name!r} should be "
                      f"{typ.__name__}, got {type(value).__name__}")
  if typ is str and not is_text(value):
    raise RecordError("", "invalid_utf8", f"field {name!r} holds a lone "
                      "surrogate (not text)")
  return value


def check_policy(option: str, policy: str) -> str:
  """`policy` if it is one of POLICIES, else a ValueError naming `option`."""
  if policy not in POLICIES:
    raise ValueError(f"{option}={policy!r}: choose one of {list(POLICIES)} "
                     "(strict: the first bad record is an error; skip: bad "
                     "records are dropped and counted)")
  return policy


def training_policy(stage: str, bad_records: str | None,
                    skip_bad: bool | None = None) -> str:
  """A stage's training-data policy from its `bad_records` option or the
  older boolean spelling `skip_bad` (SFT's); TRAIN_POLICY if neither."""
  if bad_records is not None and skip_bad is not None:
    raise ValueError(f"{stage}.skip_bad and {stage}.bad_records say the "
                     f"same thing: give only {stage}.bad_records")
  if skip_bad is not None:
    return "skip" if skip_bad else "strict"
  if bad_records is None:
    return TRAIN_POLICY
  return check_policy(f"{stage}.bad_records", bad_records)


@dataclasses.dataclass
class FileCounts:
  """One file's counts: records read, skipped per reason, kept truncated."""

  read: int = 0
  skipped: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  truncated: int = 0

  def as_dict(self) -> dict[str, Any]:
    return {"read": self.read, "kept": self.read - sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "truncated": self.truncated}


class CountingSource(Protocol):
  """A source that counts its own skips per file (file_sources.py)."""

  def file_counts(self) -> dict[str, FileCounts]: ...


def reject(error: RecordError, policy: str, counts: FileCounts) -> None:
  """Applies `policy` to a bad record: raises `error` ("strict") or counts
  it in `counts` under its reason ("skip")."""
  if policy == "strict":
    raise error
  counts.skipped[error.reason] += 1


class SkipLog:
  """What every loader of a stage read, per file (see the module doc).

  A file loaded again replaces its earlier counts (its latest read counts,
  as for a Source's `skipped`). Sources that count themselves (pretraining
  text) are `watch`ed and asked at `as_dict` time.
  """

  def __init__(self):
    self._files: dict[str, tuple[str, str, FileCounts]] = {}
    self._sources: list[tuple[CountingSource, str, str]] = []

  def put(self, path: str | os.PathLike[str], counts: FileCounts, *,
          kind: str, policy: str) -> None:
    """Records one file's counts (`kind`: what its records are)."""
    self._files[os.fspath(path)] = (kind, policy, counts)

  def watch(self, source: CountingSource, *, kind: str, policy: str) -> Any:
    """Reports `source`'s own per-file counts; returns the source."""
    self._sources.append((source, kind, policy))
    return source

  def _all(self) -> dict[str, tuple[str, str, FileCounts]]:
    out = {}
    for source, kind, policy in self._sources:
      for path, counts in source.file_counts().items():
        out[path] = (kind, policy, counts)
    out.update(self._files)
    return out

  def as_dict(self) -> dict[str, dict[str, Any]]:
    """{path: {"kind", "policy", "read", "kept", "skipped": {reason: n},
    "truncated"}} (what summary.json's "input_records" holds)."""
    return {path: {"kind": kind, "policy": policy, **counts.as_dict()}
            for path, (kind, policy, counts) in sorted(self._all().items())}

  def warn(self, stage: str) -> None:
    """One warning per file that had records skipped or truncated, e.g.
    `sft: data/train.jsonl: 97 of 100 conversations kept; skipped 3
    (bad_json 2, unknown_role 1); 5 truncated to the length bound`."""
    for path, d in self.as_dict().items():
      if not (d["skipped"] or d["truncated"]):
        continue
      parts = [f"{d['kept']} of {d['read']} {d['kind']} kept"]
      if d["skipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in d["skipped"].items())
        parts.append(f"skipped {sum(d['skipped'].values())} ({reasons})")
      if d["truncated"]:
        parts.append(f"{d['truncated']} truncated to the length bound")
      _log.warning("%s: %s: %s", stage, path, "; ".join(parts))

  def summary(self, stage: str) -> dict[str, Any]:
    """Logs the skips (`warn`) and returns {"input_records": as_dict()}:
    what a stage's finish adds to summary.json."""
    self.warn(stage)
    return {"input_records": self.as_dict()}

