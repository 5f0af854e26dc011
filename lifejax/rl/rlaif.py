"""AI feedback (RLAIF): on-policy preference pairs labelled by a judge.

For each prompt the current policy samples two responses; a judge (the
programmatic judge or a reward model, any `rollout.Scorer`) scores both, and
the pair becomes a preference record in the world's format

  {"id", "task", "prompt": messages, "chosen", "rejected",
   "flaw": "ai_judged", "reference", "margin"}

that the DPO stage reads (on-policy / iterative DPO). Pairs that carry no
reliable preference are filtered, each for one reason, checked in this
order: "empty" (a response with no text), "truncated" (a response that hit
max_new_tokens without a stop token, if drop_truncated), "identical" (same
text), "tie" (|margin| <= tie_tolerance), "low_margin"
(|margin| < min_margin).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from lifejax.rl import rollout as rollout_lib

FILTER_REASONS = ("empty", "truncated", "identical", "tie", "low_margin")


@dataclasses.dataclass(frozen=True)
class RLAIFConfig:
  """Filtering thresholds (in the scorer's units) and the sampling batch."""

  min_margin: float = 0.05
  tie_tolerance: float = 1e-6
  drop_truncated: bool = True
  prompts_per_batch: int = 16

  def __post_init__(self):
    if self.min_margin < 0 or self.tie_tolerance < 0:
      raise ValueError("RLAIFConfig: min_margin and tie_tolerance must be "
                       ">= 0")


def verdict(text_a: str, text_b: str, score_a: float, score_b: float,
            stopped_a: bool, stopped_b: bool, cfg: RLAIFConfig) -> str | None:
  """The filter reason of a pair, or None if it is kept."""
  margin = abs(score_a - score_b)
  if not text_a.strip() or not text_b.strip():
    return "empty"
  if cfg.drop_truncated and not (stopped_a and stopped_b):
    return "truncated"
  if text_a.strip() == text_b.strip():
    return "identical"
  if margin <= cfg.tie_tolerance:
    return "tie"
  if margin < cfg.min_margin:
    return "low_margin"
  return None


def preference_record(record: rollout_lib.Record, chosen: str, rejected: str,
                      margin: float, pair_id: str) -> dict[str, Any]:
  """A preference record in the world's format (+ the judge's margin)."""
  return {"id": pair_id, "task": record.get("task"),
          "prompt": rollout_lib.prompt_messages(record),
          "chosen": chosen, "rejected": rejected, "flaw": "ai_judged",
          "reference": record.get("reference"), "margin": float(margin)}


def label_pairs(rollout: rollout_lib.Rollout, cfg: RLAIFConfig,
                id_prefix: str = "rlaif", start: int = 0
                ) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Pairs rows (2i, 2i + 1) of a scored group-of-2 rollout; returns the
  kept preference records and the count of each filter reason."""
  if rollout.texts is None or rollout.score_B is None:
    raise ValueError("labelling needs decoded responses and scores")
  if rollout.batch_size % 2:
    raise ValueError("a pair rollout has an even number of rows")
  kept, counts = [], {r: 0 for r in FILTER_REASONS}
  for i in range(0, rollout.batch_size, 2):
    a, b = rollout.texts[i], rollout.texts[i + 1]
    sa, sb = float(rollout.score_B[i]), float(rollout.score_B[i + 1])
    reason = verdict(a, b, sa, sb, bool(rollout.stopped_B[i]),
                     bool(rollout.stopped_B[i + 1]), cfg)
    if reason is not None:
      counts[reason] += 1
      continue
    chosen, rejected = (a, b) if sa > sb else (b, a)
    kept.append(preference_record(
        rollout.records[i], chosen, rejected, abs(sa - sb),
        f"{id_prefix}-{start + i // 2:06d}"))
  return kept, counts


def generate_preferences(
    records: Sequence[rollout_lib.Record],
    *,
    codec: rollout_lib.Codec,
    rollout_cfg: rollout_lib.RolloutConfig,
    sample: Callable[[np.ndarray, np.ndarray, jax.Array], Any],
    scorer: rollout_lib.Scorer,
    cfg: RLAIFConfig,
    seed: int = 0,
    id_prefix: str = "rlaif",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Samples a pair per record in batches of cfg.prompts_per_batch (the
  last batch is filled with repeats of its first record, which are not
  labelled) and labels them. Returns (kept records, report) where the
  report counts prompts, kept pairs and each filter reason."""
  b = cfg.prompts_per_batch
  kept: list[dict[str, Any]] = []
  counts = {r: 0 for r in FILTER_REASONS}
  margins: list[float] = []
  for n, s in enumerate(range(0, len(records), b)):
    chunk = list(records[s:s + b])
    real = len(chunk)
    chunk += [chunk[0]] * (b - real)
    rollout = rollout_lib.collect(
        chunk, codec=codec, cfg=rollout_cfg, sample=sample,
        rng=jax.random.fold_in(jax.random.PRNGKey(seed), n), group_size=2,
        scorer=scorer)
    rollout = _first_rows(rollout, 2 * real)
    pairs, c = label_pairs(rollout, cfg, id_prefix, start=s)
    kept += pairs
    margins += [p["margin"] for p in pairs]
    for k, v in c.items():
      counts[k] += v
  report = {"prompts": len(records), "kept": len(kept),
            "filtered": sum(counts.values()), "filtered_by_reason": counts,
            "mean_margin": float(np.mean(margins)) if margins else None,
            "min_margin": cfg.min_margin, "tie_tolerance": cfg.tie_tolerance,
            "drop_truncated": cfg.drop_truncated}
  return kept, report


def _first_rows(rollout: rollout_lib.Rollout, n: int) -> rollout_lib.Rollout:
  cut = lambda x: None if x is None else x[:n]  # noqa: E731
  return dataclasses.replace(
      rollout, records=rollout.records[:n],
      rows={k: v[:n] for k, v in rollout.rows.items()},
      response_BxN=rollout.response_BxN[:n], lengths_B=rollout.lengths_B[:n],
      stopped_B=rollout.stopped_B[:n],
      texts=None if rollout.texts is None else rollout.texts[:n],
      old_logp=cut(rollout.old_logp), ref_logp=cut(rollout.ref_logp),
      values=cut(rollout.values), score_B=cut(rollout.score_B))


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> int:
  """Writes one JSON object per line; returns the number written."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      n += 1
  return n
