"""Which code a recorded run came from, and whether a recording is stale.

A recording (the committed `make demo`, an experiment's results) is only
evidence about the code it was made with. `code_fingerprint()` digests every
file that can change a run's numbers: the `lifejax` package's sources and
data files (the world's grammars) and the gin configs. The lifecycle writes
it into `lifecycle.json`; `stale_files(recorded)` compares a recorded
fingerprint with the current tree and names every file added, removed or
changed since (`tools/check_recording.py` is the command-line check).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Mapping
from typing import Any

import lifejax

PACKAGE_DIR = os.path.dirname(os.path.abspath(lifejax.__file__))
REPO_DIR = os.path.dirname(PACKAGE_DIR)
# (directory under the repo, file suffixes) whose files change a run.
TRACKED = (("lifejax", (".py", ".json")), ("gin_configs", (".gin",)))


def _digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def file_digests(repo: str = REPO_DIR) -> dict[str, str]:
  """{repo-relative path: sha256_16} of every tracked file."""
  out = {}
  for sub, suffixes in TRACKED:
    top = os.path.join(repo, sub)
    for dirpath, dirnames, filenames in os.walk(top):
      dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
      for name in sorted(filenames):
        if name.endswith(suffixes):
          full = os.path.join(dirpath, name)
          out[os.path.relpath(full, repo).replace(os.sep, "/")] = _digest(
              full)
  return out


def git_commit(repo: str = REPO_DIR) -> str | None:
  """HEAD's commit, with "+dirty" when tracked files differ from it; None
  outside a git checkout."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo,
                          capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain",
                            "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True, check=True,
                           timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty else "")


def code_fingerprint(repo: str = REPO_DIR) -> dict[str, Any]:
  """{"sha256": digest of all tracked files, "files": per-file digests,
  "git_commit": ...}: what a recording stores."""
  files = file_digests(repo)
  whole = hashlib.sha256("\n".join(f"{k} {v}" for k, v in
                                   sorted(files.items())).encode()).hexdigest()
  return {"sha256": whole[:16], "files": files,
          "git_commit": git_commit(repo)}


def stale_files(recorded: Mapping[str, Any], repo: str = REPO_DIR
                ) -> dict[str, list[str]]:
  """{"changed": [...], "added": [...], "removed": [...]} between a
  recorded fingerprint and the tree at `repo` (all empty: fresh)."""
  if not isinstance(recorded, Mapping) or not isinstance(
      recorded.get("files"), Mapping):
    raise ValueError("the recording holds no code fingerprint (recorded "
                     "before lifecycle.json had a 'code' entry): it cannot "
                     "be matched to any code, so treat it as stale")
  now, then = file_digests(repo), recorded["files"]
  return {"changed": sorted(k for k in now.keys() & then.keys()
                            if now[k] != then[k]),
          "added": sorted(now.keys() - then.keys()),
          "removed": sorted(then.keys() - now.keys())}
