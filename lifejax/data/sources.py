"""Record sources: local files, TFDS, seqio, in memory.

Every source has a `name`, yields plain dict records holding exactly its
declared `fields`, and offers `as_map_dataset()` (a random-access
`grain.MapDataset`, which grain shuffling and sharding need). File sources are
read once and kept in memory for that; ArrayRecord and array_record-backed
TFDS datasets are random access natively and stay on disk.

A malformed record raises `RecordError` naming the file, the line (1-based,
text formats) or row (0-based, Parquet/ArrayRecord/TFDS/seqio) and the problem.
With `skip_bad_records=True` it is dropped instead and counted under its
reason in `source.skipped`, e.g. {"bad_json": 2, "missing_field": 1}. Counts
describe the latest pass over the source (for ArrayRecord: every distinct bad
row seen so far). Blank JSONL lines and empty texts are never errors; they are
counted too ("blank_line", "empty_line", "empty_file").
"""

from __future__ import annotations

import abc
import bisect
import collections
import glob
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

Record = dict[str, Any]
FieldSpec = Sequence[str] | Mapping[str, type]
PathLike = str | os.PathLike[str]

_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool",
               list: "list", dict: "dict"}


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """All records of a small JSONL file (one object per non-empty line).

  Raises ValueError naming `path:line` for a line that is not a JSON object.
  """
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: bad JSON ({e.msg})") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{path}:{i}: expected a JSON object, got "
                         f"{type(rec).__name__}")
      out.append(rec)
  return out


class RecordError(ValueError):
  """A malformed record: `where` (file:line or file row) and `reason`."""

  def __init__(self, where: str, reason: str, detail: str):
    super().__init__(f"{where}: {reason}: {detail}")
    self.where = where
    self.reason = reason
    self.detail = detail


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


class _Bad(Exception):
  """A bad record, before its location is known: reason + detail."""

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail


def _check_fields(obj: Any, spec: Mapping[str, type]) -> Record:
  """{field: value} for the declared fields, type-checked; raises _Bad."""
  if not isinstance(obj, Mapping):
    raise _Bad("not_an_object", f"expected an object, got {type(obj).__name__}")
  out = {}
  for key, typ in spec.items():
    if key not in obj or obj[key] is None:
      raise _Bad("missing_field", f"field {key!r} is missing")
    value = _plain(obj[key])
    if isinstance(value, bytes) and typ is str:
      try:
        value = value.decode("utf-8")
      except UnicodeDecodeError as e:
        raise _Bad("invalid_utf8", f"field {key!r}: {e}") from None
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
      value, ok = float(value), True
    if not ok:
      raise _Bad("wrong_type", f"field {key!r} should be {_TYPE_NAMES[typ]}, "
                 f"got {type(value).__name__}")
    out[key] = value
  return out


def expand_paths(paths: PathLike | Sequence[PathLike]) -> list[str]:
  """Files named by `paths` (globs expanded, sorted); error if none exist."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  out = []
  for p in paths:
    p = os.fspath(p)
    matches = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
    if not matches or not all(os.path.isfile(m) for m in matches):
      raise FileNotFoundError(f"no such file: {p}")
    out.extend(matches)
  if not out:
    raise FileNotFoundError("no input files given")
  return out


class Source(abc.ABC):
  """A named stream of dict records with declared fields."""

  def __init__(self, name: str, fields: FieldSpec, skip_bad_records: bool):
    self.name = name
    self.fields = _normalize_fields(fields)
    self.skip_bad_records = skip_bad_records
    self._skipped: collections.Counter[str] = collections.Counter()
    self._materialized: list[Record] | None = None

  @property
  def skipped(self) -> dict[str, int]:
    """Records dropped in the latest pass, per reason."""
    return dict(self._skipped)

  def _bad(self, where: str, bad: _Bad) -> None:
    if not self.skip_bad_records:
      raise RecordError(where, bad.reason, bad.detail) from None
    self._skipped[bad.reason] += 1

  @abc.abstractmethod
  def _records(self) -> Iterator[Record]:
    """One pass over the valid records, reporting bad ones via `_bad`."""

  def __iter__(self) -> Iterator[Record]:
    self._skipped = collections.Counter()
    return self._records()

  def as_map_dataset(self) -> grain.MapDataset:
    """All records as a random-access dataset (read once, then cached)."""
    if self._materialized is None:
      self._materialized = list(self)
    if not self._materialized:
      raise ValueError(f"source {self.name!r} has no valid records "
                       f"(skipped: {self.skipped})")
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
        yield _check_fields(obj, self.fields)
      except _Bad as bad:
        self._bad(f"{self.name} row {i}", bad)


def _open_binary(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _stem(path: str) -> str:
  base = os.path.basename(path)
  for ext in (".gz", ".jsonl", ".json", ".txt", ".parquet", ".array_record"):
    base = base.removesuffix(ext)
  return base


class JsonlSource(Source):
  """JSON Lines files (optionally .gz): one JSON object per line."""

  def __init__(self, paths: PathLike | Sequence[PathLike], *,
               fields: FieldSpec = ("text",), name: str | None = None,
               skip_bad_records: bool = False):
    self.paths = expand_paths(paths)
    super().__init__(name or _stem(self.paths[0]), fields, skip_bad_records)

  def _records(self) -> Iterator[Record]:
    for path in self.paths:
      with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
          where = f"{path}:{line_no}"
          try:
            line = raw.decode("utf-8")
          except UnicodeDecodeError as e:
            self._bad(where, _Bad("invalid_utf8", str(e)))
            continue
          if not line.strip():
            self._skipped["blank_line"] += 1
            continue
          try:
            obj = json.loads(line)
          except json.JSONDecodeError as e:
            self._bad(where, _Bad("bad_json", str(e)))
            continue
          try:
            yield _check_fields(obj, self.fields)
          except _Bad as bad:
            self._bad(where, bad)


class TextSource(Source):
  """Plain UTF-8 text: one document per file (unit="file") or per line."""

  def __init__(self, paths: PathLike | Sequence[PathLike], *,
               unit: str = "line", field: str = "text",
               name: str | None = None, skip_bad_records: bool = False):
    if unit not in ("file", "line"):
      raise ValueError(f"unit must be 'file' or 'line', got {unit!r}")
    self.paths = expand_paths(paths)
    self.unit = unit
    self.field = field
    super().__init__(name or _stem(self.paths[0]), [field], skip_bad_records)

  def _records(self) -> Iterator[Record]:
    for path in self.paths:
      with _open_binary(path) as f:
        data = f.read()
      if self.unit == "file":
        try:
          text = data.decode("utf-8")
        except UnicodeDecodeError as e:
          line_no = data.count(b"\n", 0, e.start) + 1
          self._bad(f"{path}:{line_no}", _Bad("invalid_utf8", str(e)))
          continue
        if not text:
          self._skipped["empty_file"] += 1
          continue
        yield {self.field: text}
        continue
      for line_no, raw in enumerate(data.splitlines(), start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          self._bad(f"{path}:{line_no}", _Bad("invalid_utf8", str(e)))
          continue
        if not line.strip():
          self._skipped["empty_line"] += 1
          continue
        yield {self.field: line}


class ParquetSource(Source):
  """Parquet files; each row is a record (row numbers are 0-based per file)."""

  def __init__(self, paths: PathLike | Sequence[PathLike], *,
               fields: FieldSpec = ("text",), name: str | None = None,
               skip_bad_records: bool = False, read_batch_rows: int = 4096):
    self.paths = expand_paths(paths)
    self.read_batch_rows = read_batch_rows
    super().__init__(name or _stem(self.paths[0]), fields, skip_bad_records)

  def _records(self) -> Iterator[Record]:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    for path in self.paths:
      try:
        pf = pq.ParquetFile(path)
      except Exception as e:  # pyarrow raises several types for bad files.
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from e
      missing = [k for k in self.fields if k not in pf.schema_arrow.names]
      if missing:
        raise ValueError(f"{path}: no column(s) {missing}; the file has "
                         f"{pf.schema_arrow.names}")
      row = 0
      for batch in pf.iter_batches(batch_size=self.read_batch_rows,
                                   columns=list(self.fields)):
        for obj in batch.to_pylist():
          try:
            yield _check_fields(obj, self.fields)
          except _Bad as bad:
            self._bad(f"{path} row {row}", bad)
          row += 1


class _RowSource(Source):
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
    """Checked record from a raw row; raises _Bad."""

  def parse(self, index: int, raw: Any) -> Record | None:
    """Record of row `index`; None if the row is bad and skipping is on."""
    try:
      return self._to_record(raw)
    except _Bad as bad:
      if not self.skip_bad_records:
        raise RecordError(self._where(index), bad.reason, bad.detail) from None
      self._bad_rows.setdefault(bad.reason, set()).add(index)
      return None

  @property
  def skipped(self) -> dict[str, int]:
    return {k: len(v) for k, v in self._bad_rows.items()}

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
      raise ValueError(f"source {self.name!r} has no records")
    return grain.MapDataset.source(rows).map_with_index(self.parse).filter(
        _is_record)


def _is_record(r: Record | None) -> bool:
  return r is not None


class ArrayRecordSource(_RowSource):
  """ArrayRecord files whose records are UTF-8 JSON objects or plain text."""

  def __init__(self, paths: PathLike | Sequence[PathLike], *,
               fields: FieldSpec = ("text",), record_format: str = "json",
               name: str | None = None, skip_bad_records: bool = False):
    if record_format not in ("json", "text"):
      raise ValueError(f"record_format must be 'json' or 'text', got "
                       f"{record_format!r}")
    self.paths = expand_paths(paths)
    self.record_format = record_format
    super().__init__(name or _stem(self.paths[0]), fields, skip_bad_records)
    if record_format == "text" and (len(self.fields) != 1 or
                                    list(self.fields.values()) != [str]):
      raise ValueError("record_format='text' needs exactly one str field")
    self._data_source = grain.sources.ArrayRecordDataSource(self.paths)
    # pylint: disable-next=g-import-not-at-top
    from array_record.python import array_record_module
    self._starts = [0]
    for p in self.paths:
      reader = array_record_module.ArrayRecordReader(p)
      self._starts.append(self._starts[-1] + reader.num_records())
      reader.close()

  def __len__(self) -> int:
    return self._starts[-1]

  def _rows(self) -> Sequence[bytes]:
    return self._data_source

  def _where(self, index: int) -> str:
    f = bisect.bisect_right(self._starts, index) - 1
    return f"{self.paths[f]} row {index - self._starts[f]}"

  def _to_record(self, raw: bytes) -> Record:
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise _Bad("invalid_utf8", str(e)) from None
    if self.record_format == "text":
      return {next(iter(self.fields)): text}
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      raise _Bad("bad_json", str(e)) from None
    return _check_fields(obj, self.fields)


def write_array_record(path: PathLike, records: Iterable[Mapping[str, Any]]
                       ) -> int:
  """Writes records as UTF-8 JSON ArrayRecord rows; returns the row count."""
  # pylint: disable-next=g-import-not-at-top
  from array_record.python import array_record_module
  # group_size:1 keeps single-row random reads cheap (what shuffling does).
  writer = array_record_module.ArrayRecordWriter(os.fspath(path),
                                                 "group_size:1")
  n = 0
  try:
    for r in records:
      writer.write(json.dumps(r, ensure_ascii=False).encode("utf-8"))
      n += 1
  finally:
    writer.close()
  return n


class TfdsSource(_RowSource):
  """A prepared TFDS dataset read by name from `data_dir` (never downloads).

  array_record-backed datasets are read random access from disk; tfrecord
  ones are read once through tf.data and kept in memory.
  """

  def __init__(self, dataset: str, *, split: str,
               data_dir: PathLike | None = None, fields: FieldSpec = ("text",),
               name: str | None = None, skip_bad_records: bool = False):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    super().__init__(name or f"{dataset}:{split}", fields, skip_bad_records)
    self.dataset, self.split = dataset, split
    self._builder = tfds.builder(
        dataset, data_dir=None if data_dir is None else os.fspath(data_dir))
    if not self._builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS dataset {dataset!r} is not prepared under "
          f"{self._builder.data_dir}; lifejax never downloads at run time, "
          "prepare it beforehand (builder.download_and_prepare()).")
    file_format = self._builder.info.file_format
    self.random_access = (
        getattr(file_format, "value", file_format) == "array_record")
    self._examples: Sequence[Any] | None = None

  def _rows(self) -> Sequence[Any]:
    if self.random_access:
      return self._builder.as_data_source(split=self.split)
    if self._examples is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._examples = list(tfds.as_numpy(
          self._builder.as_dataset(split=self.split, shuffle_files=False)))
    return self._examples

  def _where(self, index: int) -> str:
    return f"tfds {self.dataset}/{self.split} row {index}"

  def _to_record(self, raw: Mapping[str, Any]) -> Record:
    return _check_fields(raw, self.fields)


class SeqioSource(Source):
  """A registered seqio Task, one pass over a split, kept in memory.

  Records are the task's preprocessed examples: string features become str,
  token features (from a tokenize preprocessor) become lists of int. For a
  seqio Mixture use `lifejax.data.mixture.seqio_sources`.
  """

  def __init__(self, task: str, *, split: str, fields: FieldSpec = ("text",),
               name: str | None = None, skip_bad_records: bool = False):
    import seqio  # pylint: disable=g-import-not-at-top
    super().__init__(name or task, fields, skip_bad_records)
    self.task, self.split = task, split
    provider = seqio.get_mixture_or_task(task)
    if isinstance(provider, seqio.Mixture):
      raise ValueError(f"{task!r} is a seqio Mixture; use "
                       "lifejax.data.mixture.seqio_sources to get its tasks "
                       "and rates")
    self._task = provider

  def _records(self) -> Iterator[Record]:
    ds = self._task.get_dataset(sequence_length=None, split=self.split,
                                shuffle=False, use_cached=False, num_epochs=1)
    for i, example in enumerate(ds.as_numpy_iterator()):
      try:
        yield _check_fields(example, self.fields)
      except _Bad as bad:
        self._bad(f"seqio {self.task}/{self.split} row {i}", bad)
