"""Record sources: the `Source` interface, record checks, in-memory records.

Every source has a `name`, yields plain dict records holding exactly its
declared `fields`, and offers `as_map_dataset()` (a random-access
`grain.MapDataset`, which grain shuffling and sharding need). File sources
(`file_sources.py`) are read once and kept in memory for that; ArrayRecord and
array_record-backed TFDS datasets (`tfds_sources.py`, with seqio) are random
access natively (`RowSource`) and stay on disk.

A malformed record raises `RecordError` naming the file, the line (1-based,
text formats) or row (0-based, Parquet/ArrayRecord/TFDS/seqio) and the problem.
With `skip_bad_records=True` it is dropped instead and counted under its
reason in `source.skipped`, e.g. {"bad_json": 2, "missing_field": 1}. Counts
describe the latest pass over the source (for ArrayRecord: every distinct bad
row seen so far). Blank JSONL lines and empty texts are never errors; they are
counted too ("blank_line", "empty_line", "empty_file"). File sources also
count per file (`file_counts()`, a `validation.SkipLog` reads them); a
source with nothing in it is an error naming its files.
"""

from __future__ import annotations

import abc
import collections
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lifejax.data import validation
from lifejax.data.validation import RecordError  # re-exported

Record = dict[str, Any]
FieldSpec = Sequence[str] | Mapping[str, type]
PathLike = str | os.PathLike[str]

_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool",
               list: "list", dict: "dict"}


def _normalize_fields(fields: FieldSpec) -> dict[str, type]:
  if isinstance(fields, str):
    raise TypeError(f"fields must be a sequence of names, got {fields!r}")
  if isinstance(fields, Mapping):
    spec = dict(fields)
  else:
    spec = {f: str for f in fields}
  if not spec:
    raise ValueError("a source needs at least one field")
  for key, typ in spec.items():
    if typ not in _TYPE_NAMES:
      raise ValueError(f"field {key!r}: unsupported type {typ!r}; use one of "
                       f"{sorted(_TYPE_NAMES.values())}")
  return spec


def _plain(value: Any) -> Any:
  """numpy/bytes values from TFDS or seqio -> JSON-like Python values."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


class BadRecord(Exception):
  """A bad record, before its location is known: reason + detail."""

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail


def check_fields(obj: Any, spec: Mapping[str, type]) -> Record:
  """{field: value} for the declared fields, type-checked; raises BadRecord."""
  if not isinstance(obj, Mapping):
    raise BadRecord("not_an_object",
                    f"expected an object, got {type(obj).__name__}")
  out = {}
  for key, typ in spec.items():
    if key not in obj or obj[key] is None:
      raise BadRecord("missing_field", f"field {key!r} is missing")
    value = _plain(obj[key])
    if isinstance(value, bytes) and typ is str:
      try:
        value = value.decode("utf-8")
      except UnicodeDecodeError as e:
        raise BadRecord("invalid_utf8", f"field {key!r}: {e}") from None
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
      value, ok = float(value), True
    if not ok:
      raise BadRecord("wrong_type", f"field {key!r} should be "
                      f"{_TYPE_NAMES[typ]}, got {type(value).__name__}")
    if typ is str and not validation.is_text(value):
      raise BadRecord("invalid_utf8", f"field {key!r} holds a lone "
                      "surrogate (not text)")
    out[key] = value
  return out


class Source(abc.ABC):
  """A named stream of dict records with declared fields."""

  def __init__(self, name: str, fields: FieldSpec, skip_bad_records: bool):
    self.name = name
    self.fields = _normalize_fields(fields)
    self.skip_bad_records = skip_bad_records
    self._skipped: collections.Counter[str] = collections.Counter()
    self._files: dict[str, validation.FileCounts] = {}
    self._materialized: list[Record] | None = None

  @property
  def skipped(self) -> dict[str, int]:
    """Records dropped in the latest pass, per reason."""
    return dict(self._skipped)

  def file_counts(self) -> dict[str, validation.FileCounts]:
    """Per file, in the latest pass: records read (blank lines are not
    records) and skipped per reason."""
    return dict(self._files)

  def _file(self, path: str) -> validation.FileCounts:
    return self._files.setdefault(path, validation.FileCounts())

  def describe(self) -> str:
    """How errors name the source: its files, else its name."""
    paths = getattr(self, "paths", None)
    return ", ".join(paths) if paths else f"source {self.name!r}"

  def _bad(self, where: str, bad: BadRecord, path: str | None = None
           ) -> None:
    if not self.skip_bad_records:
      raise RecordError(where, bad.reason, bad.detail, path=path) from None
    self._skipped[bad.reason] += 1
    if path is not None:
      self._file(path).skipped[bad.reason] += 1

  @abc.abstractmethod
  def _records(self) -> Iterator[Record]:
    """One pass over the valid records, reporting bad ones via `_bad`."""

  def __iter__(self) -> Iterator[Record]:
    self._skipped = collections.Counter()
    self._files = {}
    return self._records()

  def as_map_dataset(self) -> grain.MapDataset:
    """All records as a random-access dataset (read once, then cached)."""
    if self._materialized is None:
      self._materialized = list(self)
    if not self._materialized:
      if getattr(self, "paths", None) and not any(
          c.read for c in self._files.values()):
        raise validation.empty_file(self.describe())
      raise RecordError(self.describe(), "no_valid_records",
                        f"no valid records (skipped: {self.skipped})")
    return grain.MapDataset.source(self._materialized)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r})"


class InMemorySource(Source):
  """Records already in memory (e.g. the synthetic world's corpora)."""

  def __init__(self, records: Sequence[Mapping[str, Any]], *, name: str,
               fields: FieldSpec = ("text",), skip_bad_records: bool = False):
    super().__init__(name, fields, skip_bad_records)
    self._input = records

  def _records(self) -> Iterator[Record]:
    for i, obj in enumerate(self._input):
      try:
        yield check_fields(obj, self.fields)
      except BadRecord as bad:
        self._bad(f"{self.name} row {i}", bad)


class RowSource(Source):
  """A source read lazily by row index, for natively random-access storage.

  Bad rows are found when first read (by iteration or by grain through
  `as_map_dataset`) and counted once each, however often they are re-read.
  """

  def __init__(self, name: str, fields: FieldSpec, skip_bad_records: bool):
    super().__init__(name, fields, skip_bad_records)
    # Filled from grain reader threads; set.add/setdefault are atomic in
    # CPython, so no lock (which would also make the source unpicklable).
    self._bad_rows: dict[str, set[int]] = {}

  @abc.abstractmethod
  def _rows(self) -> Sequence[Any]:
    """The raw random-access rows."""

  @abc.abstractmethod
  def _where(self, index: int) -> str:
    """Where row `index` lives, for error messages."""

  @abc.abstractmethod
  def _to_record(self, raw: Any) -> Record:
    """Checked record from a raw row; raises BadRecord."""

  def parse(self, index: int, raw: Any) -> Record | None:
    """Record of row `index`; None if the row is bad and skipping is on."""
    try:
      return self._to_record(raw)
    except BadRecord as bad:
      if not self.skip_bad_records:
        raise RecordError(self._where(index), bad.reason, bad.detail) from None
      self._bad_rows.setdefault(bad.reason, set()).add(index)
      return None

  @property
  def skipped(self) -> dict[str, int]:
    return {k: len(v) for k, v in self._bad_rows.items()}

  def file_counts(self) -> dict[str, validation.FileCounts]:
    """Rows seen bad so far; every row counts as read (rows are read
    lazily, so a file's count is complete after a full pass)."""
    counts = validation.FileCounts(read=len(self._rows()))
    for reason, rows in self._bad_rows.items():
      counts.skipped[reason] = len(rows)
    return {self.describe(): counts}

  def __iter__(self) -> Iterator[Record]:
    return self._records()

  def _records(self) -> Iterator[Record]:
    rows = self._rows()
    for i in range(len(rows)):
      record = self.parse(i, rows[i])
      if record is not None:
        yield record

  def as_map_dataset(self) -> grain.MapDataset:
    rows = self._rows()
    if len(rows) == 0:
      raise validation.empty_file(self.describe())
    return grain.MapDataset.source(rows).map_with_index(self.parse).filter(
        _is_record)


def _is_record(r: Record | None) -> bool:
  return r is not None
