"""The curation report: `curation_report.json` and `curation_report.md`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lifejax.curation import mix
from lifejax.curation.config import CurationConfig
from lifejax.curation.shards import write_json_atomic
from lifejax.curation.stats import STEPS, Tally

UNIT = "words (whitespace-separated tokens)"


def _flow(rows: list[list[int]]) -> dict[str, int]:
  docs_in, words_in, docs_out, words_out = (sum(r[i] for r in rows)
                                            for i in range(4))
  return {"docs_in": docs_in, "words_in": words_in, "docs_out": docs_out,
          "words_out": words_out, "docs_removed": docs_in - docs_out,
          "words_removed": words_in - words_out}


def _counter(tally: Tally, name: str) -> dict[str, int]:
  return {b: n for (a, b), n in sorted(tally.counters.items()) if a == name}


def build_report(tally: Tally, config: CurationConfig,
                 eval_items: Mapping[str, int],
                 extra: Mapping[str, Any]) -> dict[str, Any]:
  """Plain-JSON report of a run (deterministic given the tally)."""
  sources = sorted({src for _, src in tally.flow})
  steps = []
  for step in STEPS:
    rows = [row for (s, _), row in tally.flow.items() if s == step]
    entry = {"step": step, **_flow(rows),
             "modified_docs": tally.modified.get(step, 0)}
    entry["removed_by_reason"] = {
        r: n for (s, r), n in sorted(tally.removed.items()) if s == step}
    entry["examples"] = {
        r: [{"id": i, "text": t} for _, i, t in items]
        for (s, r), items in sorted(tally.examples.items()) if s == step}
    steps.append(entry)
  per_source = {
      src: [{"step": step,
             **_flow([tally.flow[(step, src)]] if (step, src) in tally.flow
                     else [])} for step in STEPS] for src in sources}
  cleaned = {src: {"docs": rows[-1]["docs_out"], "words": rows[-1]["words_out"]}
             for src, rows in per_source.items()}
  first = steps[0]
  last = steps[-1]
  pii_counts = _counter(tally, "pii")
  pii_docs = _counter(tally, "pii_docs")
  hits = _counter(tally, "contamination_hits")
  dirty = _counter(tally, "contaminated_docs")
  return {
      "unit": UNIT,
      "totals": {"docs_in": first["docs_in"], "words_in": first["words_in"],
                 "docs_out": last["docs_out"], "words_out": last["words_out"]},
      "steps": steps,
      "per_source": per_source,
      "boilerplate_lines_removed": _counter(tally, "boilerplate_lines"),
      "duplicate_clusters": {
          kind: {s: n for s, n in sorted(
              _counter(tally, f"{kind}_cluster_size").items(),
              key=lambda kv: int(kv[0]))} for kind in ("exact", "near")},
      "pii": {k: {"redactions": pii_counts.get(k, 0),
                  "docs": pii_docs.get(k, 0)}
              for k in sorted(set(pii_counts) | set(pii_docs))},
      "contamination": {name: {"eval_items": eval_items[name],
                               "ngram_hits": hits.get(name, 0),
                               "docs": dirty.get(name, 0)}
                        for name in sorted(eval_items)},
      "languages": _counter(tally, "lang"),
      "mix": mix.mix_table(cleaned, config.mix),
      "config_fingerprint": config.fingerprint(),
      "config": config.to_dict(),
      **extra,
  }


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |",
         "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    out.append("| " + " | ".join(
        f"{c:.3f}" if isinstance(c, float) else str(c) for c in row) + " |")
  return out


def _escape(text: str) -> str:
  return text.replace("|", "\\|").replace("`", "'")


def render_markdown(report: Mapping[str, Any]) -> str:
  """Human-readable version of `build_report`'s output."""
  t = report["totals"]
  md = ["# Curation report", "",
        f"Sizes are in {report['unit']}. In: {t['docs_in']} docs / "
        f"{t['words_in']} words; out: {t['docs_out']} docs / "
        f"{t['words_out']} words.", "", "## Steps", ""]
  md += _table(["step", "docs in", "docs out", "removed", "modified",
                "words in", "words out"],
               [[s["step"], s["docs_in"], s["docs_out"], s["docs_removed"],
                 s["modified_docs"], s["words_in"], s["words_out"]]
                for s in report["steps"]])
  md += ["", "## Per source (docs in -> out, words in -> out)", ""]
  md += _table(["source"] + [s["step"] for s in report["steps"]],
               [[src] + [f"{r['docs_in']}->{r['docs_out']}" for r in rows]
                for src, rows in report["per_source"].items()])
  md += [""]
  md += _table(["source", "words in", "words out"],
               [[src, rows[0]["words_in"], rows[-1]["words_out"]]
                for src, rows in report["per_source"].items()])
  md += ["", "## What each rule removed", ""]
  for s in report["steps"]:
    if not s["removed_by_reason"] and not s["examples"]:
      continue
    md += [f"### {s['step']}", ""]
    for reason, n in s["removed_by_reason"].items():
      md.append(f"- `{reason}`: {n} docs")
    for reason, items in s["examples"].items():
      md.append(f"- examples of `{reason}`:")
      md += [f"    - `{e['id']}`: {_escape(e['text'])}" for e in items]
    md.append("")
  if report["boilerplate_lines_removed"]:
    md += ["## Boilerplate lines removed", ""]
    md += _table(["rule", "lines"],
                 [[k, v] for k, v in report["boilerplate_lines_removed"].items()])
    md.append("")
  md += ["## Duplicate clusters (size: count; size counts the kept doc)", ""]
  for kind, sizes in report["duplicate_clusters"].items():
    shown = ", ".join(f"{s}: {n}" for s, n in sizes.items()) or "none"
    md.append(f"- {kind}: {shown}")
  md += ["", "## PII", ""]
  md += _table(["kind", "redactions", "docs"],
               [[k, v["redactions"], v["docs"]]
                for k, v in report["pii"].items()])
  md += ["", "## Contamination", ""]
  md += _table(["eval set", "items", "n-gram hits", "docs"],
               [[k, v["eval_items"], v["ngram_hits"], v["docs"]]
                for k, v in report["contamination"].items()])
  md += ["", "## Effective mix", ""]
  md += _table(["source", "docs", "words", "weight", "share", "natural share"],
               [[r["source"], r["docs"], r["words"], r["weight"], r["share"],
                 r["natural_share"]] for r in report["mix"]])
  if report.get("scores"):
    md += ["", "## Scored against planted defect labels", ""]
    md += report["scores"]["markdown"].splitlines()
  md.append("")
  return "\n".join(md)


def write_report(report: Mapping[str, Any], out_dir: Path) -> None:
  write_json_atomic(out_dir / "curation_report.json", report)
  (out_dir / "curation_report.md").write_text(render_markdown(report),
                                              encoding="utf-8")
