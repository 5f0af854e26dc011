"""The per-document step chain, shared verbatim by the local and Beam runners.

Phase 1 (per shard): input checks, normalize, langid, boilerplate, quality;
survivors get a content hash and a MinHash signature. Between the phases the
global dedup decides which survivors are duplicates. Phase 2 (per shard):
the dedup verdicts, decontam, pii; then the document is written.

Every document leaves one ledger entry saying what happened to it (removed
by which step and why, lines and PII removed), which is what the report and
the scoring against planted labels read. PII values are stored only as
hashes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from lifejax.curation import boilerplate, decontam, langid, minhash
from lifejax.curation import normalize, pii, quality
from lifejax.curation.config import CurationConfig
from lifejax.curation.dedup import content_hash
from lifejax.curation.shards import ShardSpec, parse_record, read_shard
from lifejax.curation.stats import Tally, word_count

Ledger = dict[str, Any]
Record = dict[str, Any]
# Keep removed-line text in the ledger up to this many lines per document.
_LEDGER_LINES = 200


def value_digest(value: str) -> str:
  """Stable short digest of a PII value (the ledger never stores values)."""
  return hashlib.blake2b(value.encode("utf-8"), digest_size=8).hexdigest()


def _exempt(step_config: Any, source: str) -> bool:
  return (not step_config.enabled) or source in step_config.exempt_sources


def phase1_document(raw: bytes, spec: ShardSpec, idx: int,
                    config: CurationConfig,
                    tally: Tally) -> tuple[Record | None, Ledger]:
  """Runs input checks .. quality on one raw line; survivors become records
  {"idx", "doc", "words", "hash"} (the signature is added per batch)."""
  order = (spec.name, idx)
  doc, bad = parse_record(raw, spec.source, config.input)
  if doc is None:
    tally.remove("input", spec.source, 0, bad, order, "",
                 raw[:200].decode("utf-8", "replace"))
    return None, {"idx": idx, "id": None, "source": spec.source,
                  "removed_by": "input", "reason": bad}
  source, doc_id = doc["source"], doc["id"]
  ledger: Ledger = {"idx": idx, "id": doc_id, "source": source,
                    "removed_by": None, "reason": None}

  def drop(step: str, reason: str, words: int, text: str) -> None:
    tally.remove(step, source, words, reason, order, doc_id, text)
    ledger["removed_by"], ledger["reason"] = step, reason

  text = doc["text"]
  words = word_count(text)
  tally.record("input", source, words, words)

  new = normalize.normalize_text(text, config.normalize)
  if new != text:
    tally.modified["normalize"] += 1
  if not new:
    drop("normalize", "empty_after_normalize", words, text)
    return None, ledger
  tally.record("normalize", source, words, word_count(new))
  text, words = new, word_count(new)

  if not _exempt(config.langid, source):
    reason, lang, prob = langid.language_verdict(text, config.langid)
    ledger["lang"], ledger["lang_prob"] = lang, round(prob, 4)
    tally.counters[("lang", lang)] += 1
    if reason is not None:
      drop("langid", reason, words, text)
      return None, ledger
  tally.record("langid", source, words, words)

  if not _exempt(config.boilerplate, source):
    new, removed = boilerplate.remove_boilerplate(text, config.boilerplate)
    if removed:
      tally.modified["boilerplate"] += 1
      ledger["boilerplate_lines"] = [line for _, line in removed][
          :_LEDGER_LINES]
      for rule, line in removed:
        tally.counters[("boilerplate_lines", rule)] += 1
        tally.example("boilerplate", f"line:{rule}", order, doc_id, line)
    if not new:
      drop("boilerplate", "all_lines_removed", words, text)
      return None, ledger
    text = new
  tally.record("boilerplate", source, words, word_count(text))
  words = word_count(text)

  if not _exempt(config.quality, source):
    reason = quality.quality_verdict(text, config.quality)
    if reason is not None:
      drop("quality", reason, words, text)
      return None, ledger
  tally.record("quality", source, words, words)

  doc["text"] = text
  return {"idx": idx, "doc": doc, "words": words,
          "hash": content_hash(text, config.exact_dedup)}, ledger


def phase1_shard(spec: ShardSpec, config: CurationConfig
                 ) -> tuple[list[Record], np.ndarray, list[Ledger], Tally]:
  """Phase 1 over a whole shard: (survivors, signatures [N, P] uint32,
  ledger entries of removed documents, tally)."""
  tally = Tally(config.examples_per_reason)
  records, removed = [], []
  for idx, raw in read_shard(spec):
    record, ledger = phase1_document(raw, spec, idx, config, tally)
    if record is None:
      removed.append(ledger)
    else:
      record["ledger"] = ledger
      records.append(record)
  sigs = shard_signatures(records, config)
  return records, sigs, removed, tally


def shard_signatures(records: list[Record],
                     config: CurationConfig) -> np.ndarray:
  """MinHash signatures of the records' texts (empty if near dedup is off)."""
  mh = config.near_dedup.minhash
  if not config.near_dedup.enabled or not records:
    return np.zeros((len(records), mh.num_perm), dtype=np.uint32)
  return minhash.signatures([r["doc"]["text"] for r in records], mh)


def phase2_document(record: Record, spec: ShardSpec,
                    verdict: tuple[str, str] | None,
                    index: decontam.ContaminationIndex | None,
                    config: CurationConfig,
                    tally: Tally) -> tuple[dict[str, Any] | None, Ledger]:
  """Applies the dedup verdict (step, kept id) or None, decontam and pii.

  Returns the output document (or None if removed) and its final ledger.
  """
  doc, ledger = record["doc"], dict(record["ledger"])
  source, doc_id, order = doc["source"], doc["id"], (spec.name, record["idx"])
  text, words = doc["text"], record["words"]

  def drop(step: str, reason: str, shown: str | None = None) -> None:
    tally.remove(step, source, words, reason, order, doc_id,
                 text if shown is None else shown)
    ledger["removed_by"], ledger["reason"] = step, reason

  for step in ("exact_dedup", "near_dedup"):
    if verdict is not None and verdict[0] == step:
      ledger["dup_of"] = verdict[1]
      drop(step, "duplicate", f"[duplicate of {verdict[1]}] {text}")
      return None, ledger
    tally.record(step, source, words, words)

  if index is not None and not _exempt(config.decontam, source):
    hits = index.find(text)
    if hits:
      sets = sorted({name for _, _, name in hits})
      ledger["contamination"] = {"sets": sets, "ngrams": len(hits)}
      for name in sets:
        tally.counters[("contaminated_docs", name)] += 1
      for _, _, name in hits:
        tally.counters[("contamination_hits", name)] += 1
      if config.decontam.mode == "drop":
        drop("decontam", "overlap:" + ",".join(sets))
        return None, ledger
      text = decontam.cut_spans(text, hits)
      if word_count(text) < config.decontam.min_words_after_cut:
        drop("decontam", "too_short_after_cut")
        return None, ledger
      tally.modified["decontam"] += 1
      tally.example("decontam", "cut", order, doc_id, text)
  tally.record("decontam", source, words, word_count(text))
  words = word_count(text)

  if not _exempt(config.pii, source):
    new, found = pii.redact_pii(text, config.pii)
    if any(found.values()):
      tally.modified["pii"] += 1
      ledger["pii"] = {k: [value_digest(v) for v in vs]
                       for k, vs in found.items() if vs}
      for kind, values in found.items():
        tally.counters[("pii", kind)] += len(values)
        if values:
          tally.counters[("pii_docs", kind)] += 1
          at = new.find(getattr(config.pii, f"{kind}_placeholder"))
          tally.example("pii", kind, order, doc_id, new[max(0, at - 80):])
      text = new
  tally.record("pii", source, words, word_count(text))

  out = {k: v for k, v in doc.items() if k not in config.input.drop_fields}
  out["text"] = text
  return out, ledger


def phase2_shard(spec: ShardSpec, records: list[Record],
                 verdicts: dict[int, tuple[str, str]],
                 index: decontam.ContaminationIndex | None,
                 config: CurationConfig
                 ) -> tuple[list[dict[str, Any]], list[Ledger], Tally]:
  """Phase 2 over a shard's survivors (any order): (output documents in
  line order, ledger entries, tally)."""
  tally = Tally(config.examples_per_reason)
  outputs, ledgers = [], []
  for record in sorted(records, key=lambda r: r["idx"]):
    out, ledger = phase2_document(record, spec, verdicts.get(record["idx"]),
                                  index, config, tally)
    ledgers.append(ledger)
    if out is not None:
      outputs.append(out)
  return outputs, ledgers, tally
