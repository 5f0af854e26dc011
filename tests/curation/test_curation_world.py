"""Integration: curate a small embedded world, score against its labels."""

from lifejax.curation import run_curation
from lifejax.curation.config import embedded_world_config
from lifejax.world.generator import generate_world


def test_embedded_world_defects_are_found(tmp_path):
  generate_world(str(tmp_path / "world"), seed=0, scale=0.2)
  report = run_curation(
      tmp_path / "world" / "corpus", tmp_path / "out",
      embedded_world_config(),
      eval_sets={"facts": tmp_path / "world" / "eval" / "fact_questions.jsonl"},
      num_workers=1)
  rows = {r["defect"]: r for r in report["scores"]["rows"]}
  for kind, row in rows.items():
    assert row["recall"] is None or row["recall"] >= 0.9, row
  for kind in ("exact_duplicate", "near_duplicate", "contamination", "pii"):
    assert rows[kind]["precision"] >= 0.95, rows[kind]
  # Every non-English and low-quality page is gone, whichever step took it.
  for kind in ("non_english", "low_quality"):
    assert rows[kind]["removed_any"] == rows[kind]["labeled"] > 0
  items = {r["item"].split()[0]: r for r in report["scores"]["items"]}
  assert items["PII"]["recall"] >= 0.95
  assert items["boilerplate"]["recall"] >= 0.9
  # Structured and curated sources come through whole.
  flows = report["per_source"]
  for source in ("records", "wiki", "support_chat"):
    assert flows[source][0]["docs_in"] > 0
    removed = flows[source][0]["docs_in"] - flows[source][-1]["docs_out"]
    assert removed <= 0.1 * flows[source][0]["docs_in"], source
