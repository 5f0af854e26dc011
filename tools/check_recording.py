"""Is a recorded lifecycle run (e.g. experiments/lifecycle_demo) still the
code's? Compares the code fingerprint in its lifecycle.json with this tree.

  python tools/check_recording.py experiments/lifecycle_demo

Exit 0: fresh (no tracked file changed since it was recorded). Exit 1:
stale, with the files added, removed or changed; re-record it
(`make demo`, then copy the run as experiments/lifecycle_demo/README.md
says) before quoting its numbers as this code's.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from lifejax.run import provenance  # noqa: E402


def check(recording_dir: str) -> tuple[bool, str]:
  """(fresh, message) for the lifecycle.json under `recording_dir`."""
  path = os.path.join(recording_dir, "lifecycle.json")
  with open(path, encoding="utf-8") as f:
    ledger = json.load(f)
  code = ledger.get("code")
  try:
    diff = provenance.stale_files(code)
  except ValueError as e:
    return False, f"{path}: stale: {e}"
  n = sum(len(v) for v in diff.values())
  if not n:
    return True, (f"{path}: fresh (code {code['sha256']}, recorded at "
                  f"{code.get('git_commit')})")
  lines = [f"{path}: stale: {n} tracked files differ from the recording "
           f"(recorded at {code.get('git_commit')})"]
  for kind, files in diff.items():
    lines += [f"  {kind}: {f}" for f in files[:20]]
    if len(files) > 20:
      lines.append(f"  ... and {len(files) - 20} more {kind}")
  return False, "\n".join(lines)


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  fresh, message = check(argv[1])
  print(message)
  return 0 if fresh else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
