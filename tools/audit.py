r"""Audits a stage audit card: every artifact it references exists and hashes
to the recorded sha256 (checkpoints, data files, configs, the chat template,
the report, ...).

Usage:
  python tools/audit.py runs/lifecycle/dpo/model_card.yaml

Prints one row per artifact and exits 0 when all are intact, 1 when any is
missing or tampered (each named on stderr), 2 when the card cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import yaml  # noqa: E402

from lifejax.eval import card_audit  # noqa: E402


def _table(checks: Sequence[card_audit.Check]) -> str:
  rows = [("status", "sha256", "path", "card field")]
  rows += [(c.status, (c.expected or "-")[:16], c.path, c.where)
           for c in checks]
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  return "\n".join(
      "  ".join(v.ljust(w) for v, w in zip(r[:3], widths)) + "  " + r[3]
      for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("card", help="path to a model_card.yaml")
  args = parser.parse_args(argv)
  try:
    checks = card_audit.check_card(args.card)
    problems = card_audit.audit_card(args.card)
  except (OSError, ValueError, yaml.YAMLError) as e:  # unreadable or not YAML
    print(f"audit: cannot read {args.card}: {e}", file=sys.stderr)
    return 2
  print(_table(checks))
  ok = sum(c.status == "ok" for c in checks)
  print(f"\n{ok}/{len(checks)} artifacts intact")
  for p in problems:
    print(f"AUDIT FAILED: {p}", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
