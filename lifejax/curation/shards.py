"""JSONL shards: planning, reading with validation, atomic writing.

Input is a directory of `<source>.jsonl[.gz]` files or `<source>/*.jsonl[.gz]`
folders (the embedded world writes `corpus/<source>.jsonl`), or any iterable
of document dicts, which is first written to such files. Each file is cut
into shards of at most `shard_docs` lines; a shard is the unit of parallel,
resumable work and maps to one output file `<out>/<source>/<shard>.jsonl`.

Bad records are never fatal: each is counted with a reason and skipped.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from lifejax.curation.stats import Tally
from lifejax.data.jsonl import encode_line


@dataclasses.dataclass(frozen=True)
class InputConfig:
  shard_docs: int = 2000
  # Longer texts are skipped as "too_large" (characters).
  max_chars: int = 1_000_000
  # A text whose share of control / U+FFFD characters exceeds this, or that
  # holds a NUL, is "binary".
  max_binary_ratio: float = 0.01
  # Fields dropped from output documents: the embedded world's planted
  # labels (and the raw PII values they carry) must not leak into training.
  drop_fields: tuple[str, ...] = ("defects", "dup_of", "pii",
                                  "boilerplate_lines", "leaks")


@dataclasses.dataclass(frozen=True)
class ShardSpec:
  """Lines [start, stop) of one input file."""
  name: str
  source: str
  path: str
  start: int
  stop: int


def _source_files(input_dir: Path) -> list[tuple[str, Path]]:
  found = []
  for entry in sorted(input_dir.iterdir()):
    if entry.is_file() and entry.name.endswith((".jsonl", ".jsonl.gz")):
      found.append((entry.name.split(".jsonl")[0], entry))
    elif entry.is_dir() and not entry.name.startswith(("_", ".")):
      for f in sorted(entry.iterdir()):
        if f.is_file() and f.name.endswith((".jsonl", ".jsonl.gz")):
          found.append((entry.name, f))
  return found


def _open(path: str | Path, mode: str = "rb"):
  return gzip.open(path, mode) if str(path).endswith(".gz") else open(path,
                                                                      mode)


def plan_shards(input_dir: str | Path, shard_docs: int) -> list[ShardSpec]:
  """Shards of every input file, in (source, file, line) order."""
  specs: list[ShardSpec] = []
  counters: dict[str, int] = {}
  for source, path in _source_files(Path(input_dir)):
    with _open(path) as f:
      lines = sum(1 for _ in f)
    for start in range(0, max(lines, 1), shard_docs):
      n = counters.get(source, 0)
      counters[source] = n + 1
      specs.append(ShardSpec(f"{source}-{n:05d}", source, str(path), start,
                             min(start + shard_docs, lines)))
  return specs


def materialize(docs: Iterable[Any], dest: Path, tally: Tally) -> None:
  """Writes an iterable of documents as `<dest>/<source>.jsonl` files.

  Items that are not JSON-serializable dicts are counted in `tally` under
  ("input", reason) and dropped here.
  """
  dest.mkdir(parents=True, exist_ok=True)
  handles: dict[str, Any] = {}
  try:
    for doc in docs:
      reason = None
      line = None
      if not isinstance(doc, dict):
        reason = "not_a_dict"
      else:
        try:
          line = json.dumps(doc, ensure_ascii=False)
        except (TypeError, ValueError):
          reason = "not_serializable"
      source = (doc.get("source") if isinstance(doc, dict) else None)
      source = source if isinstance(source, str) and source else "unknown"
      source = "".join(c if c.isalnum() or c in "-_" else "_" for c in source)
      if reason is not None:
        tally.record("input", source, 0, None)
        tally.removed[("input", reason)] += 1
        continue
      if source not in handles:
        handles[source] = open(dest / f"{source}.jsonl", "w",
                               encoding="utf-8")
      handles[source].write(line + "\n")
  finally:
    for h in handles.values():
      h.close()


_BINARY_CHARS = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


def is_binary(text: str, max_ratio: float) -> bool:
  """NUL anywhere, or too many control / replacement characters."""
  if "\x00" in text:
    return True
  return len(_BINARY_CHARS.findall(text)) > max_ratio * len(text)


def parse_record(raw: bytes, source: str, config: InputConfig
                 ) -> tuple[dict[str, Any] | None, str | None]:
  """Decodes and validates one JSONL line: (doc, None) or (None, reason)."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError:
    return None, "bad_utf8"
  try:
    doc = json.loads(line)
  except json.JSONDecodeError:
    return None, "malformed_json"
  if not isinstance(doc, dict):
    return None, "not_a_dict"
  text = doc.get("text")
  if not isinstance(text, str):
    return None, "missing_text"
  doc_id = doc.get("id")
  if isinstance(doc_id, int) and not isinstance(doc_id, bool):
    doc_id = str(doc_id)
  if not isinstance(doc_id, str) or not doc_id:
    return None, "missing_id"
  if not text.strip():
    return None, "empty"
  if len(text) > config.max_chars:
    return None, "too_large"
  if is_binary(text, config.max_binary_ratio):
    return None, "binary"
  doc["id"] = doc_id
  if not isinstance(doc.get("source"), str) or not doc["source"]:
    doc["source"] = source
  return doc, None


def read_shard(spec: ShardSpec) -> Iterator[tuple[int, bytes]]:
  """(line index within the shard, raw line) for every non-blank line."""
  with _open(spec.path) as f:
    for i, raw in enumerate(f):
      if i < spec.start:
        continue
      if i >= spec.stop:
        break
      if raw.strip():
        yield i - spec.start, raw.rstrip(b"\r\n")


def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
  """The exact bytes every runner writes for a JSONL file."""
  return "".join(encode_line(r) for r in records).encode("utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False, indent=1, sort_keys=True)
  os.replace(tmp, path)
