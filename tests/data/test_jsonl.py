"""lifejax.data.jsonl: the torn-last-line policy and atomic writes."""

import collections
import gzip
import json
import logging
import os

import pytest

from lifejax.data import jsonl


class _Warnings(logging.Handler):
  """Collects the module's warnings (the suite runs with -p no:logging, so
  pytest's caplog is not available)."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.text = ""

  def emit(self, record):
    self.text += record.getMessage() + "\n"


@pytest.fixture
def warnings_():
  handler = _Warnings()
  logger = logging.getLogger(jsonl.__name__)
  logger.addHandler(handler)
  yield handler
  logger.removeHandler(handler)


def _raw(path, text: str) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def test_round_trip(tmp_path):
  rows = [{"a": 1, "text": "Grüße 日本 🎉"}, {"b": [1, 2], "c": None}]
  path = jsonl.write_jsonl(tmp_path / "sub" / "x.jsonl", rows)
  assert jsonl.read_jsonl(path) == rows
  assert list(jsonl.iter_jsonl(path)) == rows
  with open(path, encoding="utf-8") as f:
    assert "Grüße 日本 🎉" in f.read()  # UTF-8, not \u escapes


def test_torn_last_line_is_skipped_and_counted(tmp_path, warnings_):
  path = _raw(tmp_path / "m.jsonl", '{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
  counts = collections.Counter()
  rows = jsonl.read_jsonl(path, counts=counts)
  assert rows == [{"step": 1}, {"step": 2}]
  assert counts == {"torn": 1}
  assert f"{path}:4" in warnings_.text and "torn" in warnings_.text


def test_complete_last_line_without_newline_is_kept(tmp_path):
  path = _raw(tmp_path / "m.jsonl", '{"step": 1}\n{"step": 2}')
  counts = collections.Counter()
  assert jsonl.read_jsonl(path, counts=counts) == [{"step": 1}, {"step": 2}]
  assert counts == {}


def test_torn_multibyte_character_is_a_torn_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_bytes('{"a": 1}\n{"t": "日'.encode("utf-8")[:-1])
  counts = collections.Counter()
  assert jsonl.read_jsonl(path, counts=counts) == [{"a": 1}]
  assert counts["torn"] == 1


@pytest.mark.parametrize("text,line,what", [
    ('{"a": 1}\n{"a": 2\n{"a": 3}\n', 2, "bad JSON line"),
    ('{"a": 1}\n{"a": 2\n', 2, "bad JSON line"),  # has its newline: not torn
    ('{"a": 1}\n[1, 2]\n', 2, "expected a JSON object, got list"),
    ('{"a": 1}\n3', 2, "expected a JSON object, got int"),
])
def test_other_bad_lines_raise_with_file_and_line(tmp_path, text, line, what):
  path = _raw(tmp_path / "bad.jsonl", text)
  with pytest.raises(ValueError, match=what) as e:
    jsonl.read_jsonl(path)
  assert f"{path}:{line}:" in str(e.value)


def test_invalid_utf8_in_the_middle_raises(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
  with pytest.raises(ValueError, match=f"{path}:2"):
    jsonl.read_jsonl(path)


def test_gzip(tmp_path):
  path = tmp_path / "x.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write('{"a": 1}\n{"a": 2}\n')
  assert jsonl.read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_write_is_atomic(tmp_path, monkeypatch):
  path = jsonl.write_jsonl(tmp_path / "x.jsonl", [{"old": 1}])

  def rows():
    yield {"new": 1}
    raise RuntimeError("killed mid-write")

  with pytest.raises(RuntimeError):
    jsonl.write_jsonl(path, rows())
  assert jsonl.read_jsonl(path) == [{"old": 1}]  # never half-written
  assert os.listdir(tmp_path) == ["x.jsonl"]  # no temporary file left

  replaced = []
  real = os.replace
  monkeypatch.setattr(os, "replace",
                      lambda a, b: (replaced.append((a, b)), real(a, b)))
  jsonl.write_jsonl(path, [{"new": 2}])
  assert replaced and replaced[0][1] == path and replaced[0][0] != path
  assert jsonl.read_jsonl(path) == [{"new": 2}]


def test_append_drops_a_torn_tail(tmp_path, warnings_):
  path = tmp_path / "m.jsonl"
  jsonl.append_jsonl(path, {"step": 1})
  with open(path, "a") as f:
    f.write('{"step": 2, "lo')  # the killed run's last write
  jsonl.append_jsonl(path, {"step": 2})
  assert "dropped a torn last line" in warnings_.text
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
  # A complete last record without its newline is kept, not dropped.
  with open(path, "a") as f:
    f.write('{"step": 3}')
  jsonl.append_jsonl(path, {"step": 4})
  assert [r["step"] for r in jsonl.read_jsonl(path)] == [1, 2, 3, 4]


def test_encode_line_is_what_writers_write(tmp_path):
  row = {"x": "é", "n": 1}
  assert jsonl.encode_line(row) == json.dumps(row, ensure_ascii=False) + "\n"
  jsonl.append_jsonl(tmp_path / "a.jsonl", row)
  jsonl.write_jsonl(tmp_path / "w.jsonl", [row])
  assert ((tmp_path / "a.jsonl").read_bytes() == (tmp_path / "w.jsonl"
                                                  ).read_bytes()
          == jsonl.encode_line(row).encode("utf-8"))
