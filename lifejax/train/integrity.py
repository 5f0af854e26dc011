"""Checkpoint integrity: content checksums written last, verified on restore.

A checkpoint (`checkpoints/<step>/` or `best/<step>/`) is complete only when
its manifest (`run.layout.CHECKPOINT_MANIFEST`: the sha256 and size of every
file) exists. The manifest is written after orbax has finalized the step
and every file is fsync'ed, itself through a temporary file and an atomic
rename. On restore the newest steps are verified first: a step with no
manifest (the save did not complete), an unreadable manifest, or a missing,
resized or changed file is moved aside to `quarantine/` (never deleted)
and the next older step is tried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

from lifejax.run.layout import CHECKPOINT_MANIFEST

VERSION = 1
_CHUNK = 1 << 22


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    os.fsync(f.fileno())  # durable before it is vouched for
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      if rel != CHECKPOINT_MANIFEST:
        out.append(rel)
  return sorted(out)


def seal(step_dir: str) -> None:
  """Writes the manifest of a finalized checkpoint directory (last)."""
  files = {rel: {"sha256": _digest(os.path.join(step_dir, rel)),
                 "bytes": os.path.getsize(os.path.join(step_dir, rel))}
           for rel in _files(step_dir)}
  tmp = os.path.join(step_dir, CHECKPOINT_MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"version": VERSION, "files": files}, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, CHECKPOINT_MANIFEST))
  fd = os.open(step_dir, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def is_sealed(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, CHECKPOINT_MANIFEST))


def problem(step_dir: str) -> str | None:
  """Why `step_dir` is not an intact checkpoint (None: it is)."""
  path = os.path.join(step_dir, CHECKPOINT_MANIFEST)
  if not os.path.exists(path):
    return "incomplete: no checksum manifest (the save did not finish)"
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
    files = manifest["files"]
    if manifest.get("version") != VERSION:
      return f"checksum manifest version {manifest.get('version')!r}"
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"unreadable checksum manifest ({type(e).__name__})"
  for rel, want in files.items():
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f"missing file {rel}"
    size = os.path.getsize(full)
    if size != want["bytes"]:
      return f"{rel} has {size} bytes, {want['bytes']} were written"
    if _digest(full) != want["sha256"]:
      return f"checksum mismatch in {rel}"
  return None


@dataclasses.dataclass(frozen=True)
class Quarantined:
  step: int
  reason: str
  moved_to: str


def quarantine(step_dir: str, to_dir: str, reason: str) -> str:
  """Moves a bad checkpoint aside (with a REASON file); returns where."""
  os.makedirs(to_dir, exist_ok=True)
  dest = os.path.join(to_dir, os.path.basename(step_dir.rstrip("/")))
  if os.path.exists(dest):
    dest += f".{time.strftime('%Y%m%d-%H%M%S')}"
  shutil.move(step_dir, dest)
  with open(os.path.join(dest, "REASON"), "w", encoding="utf-8") as f:
    f.write(reason + "\n")
  return dest


def newest_intact(ckpt_dir: str, quarantine_dir: str
                  ) -> tuple[int | None, list[Quarantined]]:
  """The newest intact step under `ckpt_dir`; newer bad steps are moved to
  `quarantine_dir`. Returns (step or None, what was moved)."""
  if not os.path.isdir(ckpt_dir):
    return None, []
  moved = []
  for step in sorted((int(s) for s in os.listdir(ckpt_dir) if s.isdigit()),
                     reverse=True):
    step_dir = os.path.join(ckpt_dir, str(step))
    why = problem(step_dir)
    if why is None:
      return step, moved
    moved.append(Quarantined(step, why, quarantine(step_dir, quarantine_dir,
                                                   why)))
  return None, moved


def quarantine_all_bad(ckpt_dir: str, quarantine_dir: str
                       ) -> list[Quarantined]:
  """Verifies every step (keep-best: any of them may be restored)."""
  if not os.path.isdir(ckpt_dir):
    return []
  moved = []
  for s in sorted(os.listdir(ckpt_dir)):
    if s.isdigit():
      step_dir = os.path.join(ckpt_dir, s)
      why = problem(step_dir)
      if why is not None:
        moved.append(Quarantined(int(s), why,
                                 quarantine(step_dir, quarantine_dir, why)))
  return moved
