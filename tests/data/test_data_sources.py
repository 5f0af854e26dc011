"""Tests for lifejax.data.sources and file_sources (local formats; TFDS/seqio
live in test_data_tfds_seqio.py)."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python import array_record_module

from lifejax.data import file_sources, sources

GOOD = [{"text": "alpha"}, {"text": "Grüße 日本 🎉"}, {"text": "gamma"}]


def _write_lines(path, lines: list[bytes]):
  path.write_bytes(b"".join(line + b"\n" for line in lines))
  return path


def _json(obj) -> bytes:
  return json.dumps(obj, ensure_ascii=False).encode("utf-8")


BAD_LINES = {
    "bad_json": b'{"text": "unterminated',
    "invalid_utf8": b'{"text": "caf\xe9"}',
    "missing_field": _json({"body": "no text field"}),
    "wrong_type": _json({"text": 42}),
    "not_an_object": _json(["text", "in a list"]),
}


def test_jsonl_reads_records_and_names_itself(tmp_path):
  path = _write_lines(tmp_path / "web.jsonl",
                      [_json(dict(r, extra=1)) for r in GOOD])
  src = file_sources.JsonlSource(path)
  assert src.name == "web"
  assert list(src) == GOOD  # only declared fields are kept
  assert list(src.as_map_dataset()) == GOOD
  assert src.skipped == {}


def test_jsonl_gzip_and_globs(tmp_path):
  with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
    f.write(b"".join(_json(r) + b"\n" for r in GOOD[:2]))
  _write_lines(tmp_path / "b.jsonl", [_json(GOOD[2])])
  src = file_sources.JsonlSource(str(tmp_path / "*.jsonl*"), name="web")
  assert list(src) == GOOD


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_jsonl_bad_record_error_names_file_line_and_problem(tmp_path, reason):
  path = _write_lines(tmp_path / "d.jsonl",
                      [_json(GOOD[0]), BAD_LINES[reason], _json(GOOD[1])])
  with pytest.raises(sources.RecordError) as err:
    list(file_sources.JsonlSource(path))
  assert err.value.reason == reason
  assert str(err.value).startswith(f"{path}:2: {reason}")


def test_jsonl_skipping_counts_every_reason(tmp_path):
  lines = [_json(GOOD[0])]
  for reason, line in sorted(BAD_LINES.items()):
    lines += [line, line] if reason == "bad_json" else [line]
  lines += [b"   ", _json(GOOD[1])]
  src = file_sources.JsonlSource(_write_lines(tmp_path / "d.jsonl", lines),
                                 skip_bad_records=True)
  assert list(src) == GOOD[:2]
  assert src.skipped == {"bad_json": 2, "invalid_utf8": 1, "missing_field": 1,
                         "wrong_type": 1, "not_an_object": 1, "blank_line": 1}
  # Counts describe the latest pass, not a running total.
  assert list(src) == GOOD[:2] and src.skipped["bad_json"] == 2


def test_typed_fields(tmp_path):
  rows = [{"prompt": "p", "score": 1}, {"prompt": "q", "score": 2.5},
          {"prompt": "r", "score": True}]
  path = _write_lines(tmp_path / "d.jsonl", [_json(r) for r in rows])
  src = file_sources.JsonlSource(path, fields={"prompt": str, "score": float},
                                 skip_bad_records=True)
  assert list(src) == [{"prompt": "p", "score": 1.0},
                       {"prompt": "q", "score": 2.5}]
  assert src.skipped == {"wrong_type": 1}
  with pytest.raises(ValueError, match="unsupported type"):
    file_sources.JsonlSource(path, fields={"prompt": bytes})


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    file_sources.JsonlSource(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match=r"\*.txt"):
    file_sources.TextSource(str(tmp_path / "*.txt"))


def test_text_per_line_and_per_file(tmp_path):
  (tmp_path / "a.txt").write_text("one\n\ntwo  spaced\n", encoding="utf-8")
  (tmp_path / "b.txt").write_text("Grüße\nzwei\n", encoding="utf-8")
  (tmp_path / "c.txt").write_text("", encoding="utf-8")
  files = sorted(str(p) for p in tmp_path.glob("*.txt"))
  by_line = file_sources.TextSource(files)
  assert [r["text"] for r in by_line] == [
      "one", "two  spaced", "Grüße", "zwei"]
  assert by_line.skipped == {"empty_line": 1}
  by_file = file_sources.TextSource(files, unit="file", field="body",
                                    name="books")
  assert list(by_file) == [{"body": "one\n\ntwo  spaced\n"},
                           {"body": "Grüße\nzwei\n"}]
  assert by_file.skipped == {"empty_file": 1} and by_file.name == "books"


@pytest.mark.parametrize("unit", ["line", "file"])
def test_text_invalid_utf8_names_the_line(tmp_path, unit):
  path = tmp_path / "t.txt"
  path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
  with pytest.raises(sources.RecordError, match=r"t.txt:3: invalid_utf8"):
    list(file_sources.TextSource(path, unit=unit))
  src = file_sources.TextSource(path, unit=unit, skip_bad_records=True)
  assert len(list(src)) == (2 if unit == "line" else 0)
  assert src.skipped == {"invalid_utf8": 1}


def test_parquet_rows_and_errors(tmp_path):
  path = tmp_path / "p.parquet"
  pq.write_table(pa.table({
      "text": ["a", None, "c", "d"],
      "raw": pa.array([b"ok", b"ok", b"caf\xe9", b"ok"], pa.binary()),
      "n": [1, 2, 3, 4],
  }), path)
  src = file_sources.ParquetSource(path, fields=["text"], read_batch_rows=2)
  with pytest.raises(sources.RecordError,
                     match=r"p.parquet row 1: missing_field: field 'text'"):
    list(src)
  skipping = file_sources.ParquetSource(
      path, fields={"text": str, "raw": str, "n": int}, skip_bad_records=True)
  assert list(skipping) == [{"text": "a", "raw": "ok", "n": 1},
                            {"text": "d", "raw": "ok", "n": 4}]
  assert skipping.skipped == {"missing_field": 1, "invalid_utf8": 1}
  with pytest.raises(sources.RecordError, match=r"row 0: wrong_type"):
    list(file_sources.ParquetSource(path, fields=["n"]))
  with pytest.raises(ValueError, match=r"p.parquet: no column\(s\) \['body'\]"):
    list(file_sources.ParquetSource(path, fields=["body"]))


def _write_array_record(path, rows: list[bytes]):
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for r in rows:
    writer.write(r)
  writer.close()


def test_array_record_is_random_access(tmp_path):
  assert file_sources.write_array_record(tmp_path / "a.array_record", GOOD) == 3
  file_sources.write_array_record(tmp_path / "b.array_record",
                                  [{"text": "delta"}])
  src = file_sources.ArrayRecordSource(
      [tmp_path / "a.array_record", tmp_path / "b.array_record"])
  ds = src.as_map_dataset()
  assert len(ds) == 4
  assert ds[3] == {"text": "delta"} and ds[1] == GOOD[1]
  assert list(src) == GOOD + [{"text": "delta"}]


def test_array_record_plain_text_rows(tmp_path):
  _write_array_record(tmp_path / "t.array_record", [b"one", "zwei ü".encode()])
  src = file_sources.ArrayRecordSource(tmp_path / "t.array_record",
                                       record_format="text")
  assert list(src) == [{"text": "one"}, {"text": "zwei ü"}]


def test_array_record_bad_rows(tmp_path):
  file_sources.write_array_record(tmp_path / "a.array_record", GOOD[:1])
  _write_array_record(tmp_path / "b.array_record",
                      [_json(GOOD[1]), b"\xff\xfe", b"{not json", _json({})])
  paths = [tmp_path / "a.array_record", tmp_path / "b.array_record"]
  with pytest.raises(sources.RecordError,
                     match=r"b.array_record row 1: invalid_utf8"):
    list(file_sources.ArrayRecordSource(paths))
  src = file_sources.ArrayRecordSource(paths, skip_bad_records=True)
  ds = src.as_map_dataset()
  # Random access reads a bad row as None (grain drops it when iterating).
  assert ds[2] is None and ds[1] == GOOD[1]
  assert list(ds) == GOOD[:2]
  assert list(ds) == GOOD[:2]  # re-reading does not double-count
  assert src.skipped == {"invalid_utf8": 1, "bad_json": 1, "missing_field": 1}


def test_in_memory_source_checks_fields():
  src = sources.InMemorySource([{"text": "a"}, {"text": 1}], name="mem")
  with pytest.raises(sources.RecordError, match="mem row 1: wrong_type"):
    src.as_map_dataset()
  with pytest.raises(ValueError, match="no valid records"):
    sources.InMemorySource([{"x": 1}], name="m",
                           skip_bad_records=True).as_map_dataset()
