"""Scores a curation run against planted defect labels (the embedded world).

The world labels each document with `defects` kinds. Each kind has the one
step meant to catch it; a document counts for a kind's precision/recall only
if it reached that step (a near-duplicate already dropped by the quality
filter is "pre-empted", reported separately, and is neither a hit nor a
miss). Document level: flagged = the step removed or changed the document.
Item level, where the world says which items were planted: PII values and
boilerplate lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from lifejax.curation.shards import ShardSpec, read_shard
from lifejax.curation.stats import STEPS
from lifejax.curation.steps import value_digest
from lifejax.data.jsonl import iter_jsonl

# defect kind -> (step that should catch it, predicate on the ledger entry)
KINDS = {
    "non_english": ("langid", lambda e: e["removed_by"] == "langid"),
    "boilerplate": ("boilerplate",
                    lambda e: bool(e.get("boilerplate_lines"))
                    or e["removed_by"] == "boilerplate"),
    "low_quality": ("quality", lambda e: e["removed_by"] == "quality"),
    "exact_duplicate": ("exact_dedup",
                        lambda e: e["removed_by"] == "exact_dedup"),
    "near_duplicate": ("near_dedup", lambda e: e["removed_by"] == "near_dedup"),
    "contamination": ("decontam", lambda e: "contamination" in e),
    "pii": ("pii", lambda e: "pii" in e),
}
_DEDUP = ("exact_duplicate", "near_duplicate")


def _reached(entry: dict[str, Any], step: str) -> bool:
  removed_by = entry["removed_by"]
  return removed_by is None or STEPS.index(removed_by) >= STEPS.index(step)


def _ratio(a: int, b: int) -> float | None:
  return a / b if b else None


def _labeled_docs(specs: Sequence[ShardSpec], work_dir: Path):
  """(input doc, its ledger entry) for every labeled input document."""
  for spec in specs:
    ledger = {e["idx"]: e for e in iter_jsonl(work_dir / "ledger" /
                                              f"{spec.name}.jsonl")}
    for idx, raw in read_shard(spec):
      try:
        doc = json.loads(raw)
      except (json.JSONDecodeError, UnicodeDecodeError):
        continue
      if isinstance(doc, dict) and isinstance(doc.get("defects"), list):
        yield doc, ledger[idx]


def score_run(specs: Sequence[ShardSpec], work_dir: Path) -> dict[str, Any]:
  """Precision/recall per defect kind from input labels and run ledgers.

  Document-level kinds: a document that reached the kind's step is a true
  positive if labeled and flagged, a false positive if flagged but not
  labeled with that kind ("fp_other" counts those carrying another defect
  label, e.g. junk that the language filter dropped).

  Duplicates are scored per labeled pair (copy, `dup_of` original), because
  which member of a pair is kept is a convention: a pair is caught if the
  dedup step removed either member; precision is the share of the step's
  removals that belong to some labeled duplicate pair.

  Returns {"rows", "items", "markdown", "labeled_docs"}, or {} if no input
  document carries a `defects` field.
  """
  docs = list(_labeled_docs(specs, work_dir))
  if not docs:
    return {}
  by_id = {doc.get("id"): entry for doc, entry in docs}
  counts = {k: {"tp": 0, "fp": 0, "fp_other": 0, "fn": 0, "preempted": 0,
                "labeled": 0, "removed_any": 0} for k in KINDS}
  pii_items = {"planted": 0, "found_planted": 0, "found": 0}
  line_items = {"planted": 0, "removed_planted": 0, "removed": 0}
  in_pairs: set[str] = set()
  for doc, _ in docs:
    if doc.get("dup_of") in by_id:
      in_pairs.update((doc["id"], doc["dup_of"]))
  for doc, entry in docs:
    kinds = set(doc["defects"])
    for kind, (step, flagged) in KINDS.items():
      c = counts[kind]
      if kind in kinds:
        c["labeled"] += 1
        c["removed_any"] += entry["removed_by"] is not None
      if kind in _DEDUP:
        if flagged(entry):
          if doc["id"] in in_pairs:
            c["tp_removals"] = c.get("tp_removals", 0) + 1
          else:
            c["fp"] += 1
            c["fp_other"] += bool(kinds)
        if kind in kinds and doc.get("dup_of") in by_id:
          other = by_id[doc["dup_of"]]
          if not (_reached(entry, step) and _reached(other, step)):
            c["preempted"] += 1
          elif flagged(entry) or flagged(other):
            c["tp"] += 1
          else:
            c["fn"] += 1
        continue
      if not _reached(entry, step):
        c["preempted"] += kind in kinds
        continue
      hit = flagged(entry)
      if kind in kinds:
        c["tp" if hit else "fn"] += 1
      elif hit:
        c["fp"] += 1
        c["fp_other"] += bool(kinds)
    if _reached(entry, "pii"):
      planted = {value_digest(p["value"]) for p in doc.get("pii", [])
                 if isinstance(p, dict) and isinstance(p.get("value"), str)}
      found = {d for ds in entry.get("pii", {}).values() for d in ds}
      pii_items["planted"] += len(planted)
      pii_items["found"] += len(found)
      pii_items["found_planted"] += len(planted & found)
    if _reached(entry, "boilerplate"):
      planted_lines = {str(x).strip()
                       for x in doc.get("boilerplate_lines", [])}
      removed = {x.strip() for x in entry.get("boilerplate_lines", [])}
      line_items["planted"] += len(planted_lines)
      line_items["removed"] += len(removed)
      line_items["removed_planted"] += len(planted_lines & removed)
  rows = []
  for kind, (step, _) in KINDS.items():
    c = counts[kind]
    if kind in _DEDUP:
      good = c.pop("tp_removals", 0)
      precision = _ratio(good, good + c["fp"])
    else:
      precision = _ratio(c["tp"], c["tp"] + c["fp"])
    rows.append({"defect": kind, "step": step,
                 "unit": "pair" if kind in _DEDUP else "doc", **c,
                 "precision": precision,
                 "recall": _ratio(c["tp"], c["tp"] + c["fn"])})
  items = [
      {"item": "PII values (distinct per doc)", "planted": pii_items["planted"],
       "flagged": pii_items["found"],
       "precision": _ratio(pii_items["found_planted"], pii_items["found"]),
       "recall": _ratio(pii_items["found_planted"], pii_items["planted"])},
      {"item": "boilerplate lines (distinct per doc)",
       "planted": line_items["planted"], "flagged": line_items["removed"],
       "precision": _ratio(line_items["removed_planted"],
                           line_items["removed"]),
       "recall": _ratio(line_items["removed_planted"],
                        line_items["planted"])},
  ]
  return {"labeled_docs": len(docs), "rows": rows, "items": items,
          "markdown": render_scores(rows, items)}


def _fmt(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def render_scores(rows: list[dict[str, Any]],
                  items: list[dict[str, Any]]) -> str:
  """Markdown tables of `score_run`'s rows and item-level rows."""
  lines = ["| defect | caught by | unit | labeled | TP | FP (other defect) "
           "| FN | pre-empted | precision | recall | labeled docs removed "
           "by any step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['defect']} | {r['step']} | {r['unit']} | {r['labeled']} | "
        f"{r['tp']} | {r['fp']} ({r['fp_other']}) | {r['fn']} | "
        f"{r['preempted']} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | "
        f"{r['removed_any']}/{r['labeled']} |")
  lines += ["", "| item level | planted | flagged | precision | recall |",
            "|---|---|---|---|---|"]
  for r in items:
    lines.append(f"| {r['item']} | {r['planted']} | {r['flagged']} | "
                 f"{_fmt(r['precision'])} | {_fmt(r['recall'])} |")
  return "\n".join(lines)
