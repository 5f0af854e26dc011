"""Sources over local files: JSON Lines, plain text, Parquet, ArrayRecord.

JSONL, text and Parquet files are read in full on each pass (and kept in
memory by `as_map_dataset`); ArrayRecord files are read by row index from
disk. Error locations and skip counting follow `sources.py`; counts are also
kept per file (`file_counts()`).
"""

from __future__ import annotations

import bisect
import glob
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grain

from lifejax.data.sources import (BadRecord, FieldSpec, PathLike, Record,
                                  RowSource, Source, check_fields)


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


def _open_binary(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def stem(path: str) -> str:
  """A file's name without its data extensions (a source's default name)."""
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
    super().__init__(name or stem(self.paths[0]), fields, skip_bad_records)

  def _records(self) -> Iterator[Record]:
    for path in self.paths:
      counts = self._file(path)
      with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
          where = f"{path}:{line_no}"
          try:
            line = raw.decode("utf-8")
          except UnicodeDecodeError as e:
            counts.read += 1
            self._bad(where, BadRecord("invalid_utf8", str(e)), path)
            continue
          if not line.strip():
            self._skipped["blank_line"] += 1
            continue
          counts.read += 1
          try:
            obj = json.loads(line)
          except json.JSONDecodeError as e:
            self._bad(where, BadRecord("bad_json", str(e)), path)
            continue
          try:
            yield check_fields(obj, self.fields)
          except BadRecord as bad:
            self._bad(where, bad, path)


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
    super().__init__(name or stem(self.paths[0]), [field], skip_bad_records)

  def _records(self) -> Iterator[Record]:
    for path in self.paths:
      counts = self._file(path)
      with _open_binary(path) as f:
        data = f.read()
      if self.unit == "file":
        if not data:
          self._skipped["empty_file"] += 1
          continue
        counts.read += 1
        try:
          text = data.decode("utf-8")
        except UnicodeDecodeError as e:
          line_no = data.count(b"\n", 0, e.start) + 1
          self._bad(f"{path}:{line_no}", BadRecord("invalid_utf8", str(e)),
                    path)
          continue
        yield {self.field: text}
        continue
      for line_no, raw in enumerate(data.splitlines(), start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          counts.read += 1
          self._bad(f"{path}:{line_no}", BadRecord("invalid_utf8", str(e)),
                    path)
          continue
        if not line.strip():
          self._skipped["empty_line"] += 1
          continue
        counts.read += 1
        yield {self.field: line}


class ParquetSource(Source):
  """Parquet files; each row is a record (row numbers are 0-based per file)."""

  def __init__(self, paths: PathLike | Sequence[PathLike], *,
               fields: FieldSpec = ("text",), name: str | None = None,
               skip_bad_records: bool = False, read_batch_rows: int = 4096):
    self.paths = expand_paths(paths)
    self.read_batch_rows = read_batch_rows
    super().__init__(name or stem(self.paths[0]), fields, skip_bad_records)

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
      counts = self._file(path)
      for batch in pf.iter_batches(batch_size=self.read_batch_rows,
                                   columns=list(self.fields)):
        for obj in batch.to_pylist():
          counts.read += 1
          try:
            yield check_fields(obj, self.fields)
          except BadRecord as bad:
            self._bad(f"{path} row {row}", bad, path)
          row += 1


class ArrayRecordSource(RowSource):
  """ArrayRecord files whose records are UTF-8 JSON objects or plain text."""

  def __init__(self, paths: PathLike | Sequence[PathLike], *,
               fields: FieldSpec = ("text",), record_format: str = "json",
               name: str | None = None, skip_bad_records: bool = False):
    if record_format not in ("json", "text"):
      raise ValueError(f"record_format must be 'json' or 'text', got "
                       f"{record_format!r}")
    self.paths = expand_paths(paths)
    self.record_format = record_format
    super().__init__(name or stem(self.paths[0]), fields, skip_bad_records)
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
      raise BadRecord("invalid_utf8", str(e)) from None
    if self.record_format == "text":
      return {next(iter(self.fields)): text}
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      raise BadRecord("bad_json", str(e)) from None
    return check_fields(obj, self.fields)


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
