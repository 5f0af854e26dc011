"""Auditing a stage audit card: re-hash every artifact it references.

`audit_card(card)` reports each artifact (a mapping with `path` and `sha256`
anywhere in the card) that is missing, unhashed, tampered with or changed
since its stage read it, plus missing card sections; `tools/audit.py` is its
CLI. The hashes (`sha256_path`) are also what `card.py` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

SECTIONS = ("base_model", "continued_pretraining_data", "sft_dataset",
            "preference_dataset", "chat_template", "eval_report",
            "safety_report", "rollback_artifacts", "lineage")


# ------------------------------------------------------------------ hashing


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def sha256_dir(path: str) -> str:
  """Hash of a directory: over its files' sorted relative paths ('/'
  separated) and contents, so renaming, adding, removing or editing any file
  changes it, and the same tree hashes the same anywhere."""
  files = []
  for dirpath, _, names in os.walk(path):
    for n in names:
      full = os.path.join(dirpath, n)
      files.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
  h = hashlib.sha256()
  for rel, full in sorted(files):
    h.update(f"{rel}\0{sha256_file(full)}\n".encode())
  return h.hexdigest()


def sha256_path(path: str) -> str:
  return sha256_dir(path) if os.path.isdir(path) else sha256_file(path)


# ---------------------------------------------------------------- the audit


@dataclasses.dataclass(frozen=True)
class Check:
  """One referenced artifact and what the audit found."""
  where: str      # location in the card, e.g. "lineage[1].config"
  path: str       # as written in the card
  resolved: str   # absolute path checked
  expected: str | None
  actual: str | None
  status: str     # ok | missing | tampered | unhashed | changed_since_training

  def __str__(self) -> str:
    return f"{self.status}: {self.path} ({self.where})"


Problem = Check


def _artifacts(node: Any, where: str = "") -> Iterator[tuple[str, dict]]:
  if isinstance(node, Mapping):
    if "path" in node:
      yield where, dict(node)
    for k, v in node.items():
      if k != "template":  # the chat template's own content, not a file
        yield from _artifacts(v, f"{where}.{k}" if where else str(k))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      yield from _artifacts(v, f"{where}[{i}]")


def check_card(card_path: str) -> list[Check]:
  """Re-hashes every artifact the card references (mappings with `path`)."""
  with open(card_path, encoding="utf-8") as f:
    card = yaml.safe_load(f)
  base = os.path.dirname(os.path.abspath(card_path))
  checks = []
  for where, a in _artifacts(card):
    path = str(a["path"])
    resolved = os.path.normpath(os.path.join(base, path))
    expected = a.get("sha256")
    actual = sha256_path(resolved) if os.path.exists(resolved) else None
    if actual is None:
      status = "missing"
    elif not expected:
      status = "unhashed"
    elif actual != expected:
      status = "tampered"
    elif a.get("recorded_sha256_16") and not actual.startswith(
        str(a["recorded_sha256_16"])):
      status = "changed_since_training"
    else:
      status = "ok"
    checks.append(Check(where, path, resolved, expected, actual, status))
  return checks


def audit_card(card_path: str) -> list[Problem]:
  """Problems with a card: each referenced artifact that is missing, whose
  hash differs from the card's, that the card lists without a hash, or whose
  content differs from what its stage read; plus missing card sections."""
  with open(card_path, encoding="utf-8") as f:
    card = yaml.safe_load(f) or {}
  problems = [Check(s, "", "", None, None, "missing_section")
              for s in SECTIONS if s not in card]
  return problems + [c for c in check_card(card_path) if c.status != "ok"]
