"""AI feedback (RLAIF): on-policy preference pairs labelled by a judge.

For each prompt the current policy samples `samples_per_prompt` responses
(two by default); a judge (the programmatic judge or a reward model, any
`rollout.Scorer`) scores them, and the best against the worst becomes a
preference record in the world's format (with more than two samples this is
best-of-n versus worst-of-n, as in rejection-sampling / iterative DPO;
with `include_greedy` the policy's greedy answer is one more candidate)

  {"id", "task", "prompt": messages, "chosen", "rejected",
   "flaw": "ai_judged", "reference", "margin"}

that the DPO stage reads (on-policy / iterative DPO). Pairs that carry no
reliable preference are filtered, each for one reason, checked in this
order: "empty" (fewer than two responses with text), "truncated" (fewer than
two of those stopped before max_new_tokens, if drop_truncated), "identical"
(every candidate has the same text), "tie" (|margin| <= tie_tolerance),
"low_margin" (|margin| < min_margin). Empty and truncated samples are never
chosen or rejected; the rejected response is the lowest-scored candidate
whose text differs from the chosen one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from lifejax import checks
from lifejax.data import prompts
from lifejax.rl import rollout as rollout_lib
from lifejax.train.metrics import progress_desc

FILTER_REASONS = ("empty", "truncated", "identical", "tie", "low_margin")


@dataclasses.dataclass(frozen=True)
class RLAIFConfig:
  """Filtering thresholds (in the scorer's units) and the sampling batch."""

  min_margin: float = 0.05
  tie_tolerance: float = 1e-6
  drop_truncated: bool = True
  prompts_per_batch: int = 16
  samples_per_prompt: int = 2
  # Also decode each prompt greedily and let that answer compete with the
  # samples: a pair whose rejected side is the greedy answer moves the
  # policy's mode, which temperature samples alone rarely touch.
  include_greedy: bool = False

  def __post_init__(self):
    if self.min_margin < 0 or self.tie_tolerance < 0:
      raise ValueError("RLAIFConfig: min_margin and tie_tolerance must be "
                       ">= 0")
    if self.samples_per_prompt < 2:
      raise ValueError("RLAIFConfig.samples_per_prompt must be >= 2, got "
                       f"{self.samples_per_prompt}")
    checks.at_least("RLAIFConfig.prompts_per_batch", self.prompts_per_batch,
                    1)


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
          "prompt": prompts.prompt_messages(record),
          "chosen": chosen, "rejected": rejected, "flaw": "ai_judged",
          "reference": record.get("reference"), "margin": float(margin)}


def best_and_worst(texts: Sequence[str], scores: Sequence[float],
                   stopped: Sequence[bool], cfg: RLAIFConfig
                   ) -> tuple[int, int, str | None]:
  """(chosen index, rejected index, filter reason or None) for one prompt's
  samples: the best-scored candidate against the worst-scored one with a
  different text. With two samples this is `verdict` on the pair."""
  if len(texts) < 2:
    raise ValueError(f"a group needs >= 2 samples, got {len(texts)}")
  cand = [i for i, t in enumerate(texts) if t.strip()]
  if len(cand) < 2:
    return -1, -1, "empty"
  if cfg.drop_truncated:
    cand = [i for i in cand if stopped[i]]
    if len(cand) < 2:
      return -1, -1, "truncated"
  # Stable: among equal scores the earliest sample wins / loses.
  best = max(cand, key=lambda i: (scores[i], -i))
  others = [i for i in cand if texts[i].strip() != texts[best].strip()]
  if not others:
    return best, -1, "identical"
  worst = min(others, key=lambda i: (scores[i], i))
  reason = verdict(texts[best], texts[worst], scores[best], scores[worst],
                   True, True, cfg)
  return best, worst, reason


def label_pairs(rollout: rollout_lib.Rollout, cfg: RLAIFConfig,
                id_prefix: str = "rlaif", start: int = 0,
                group_size: int = 2
                ) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Labels each group of `group_size` consecutive rows (one prompt's
  samples) of a scored rollout: best against worst (`best_and_worst`).
  Returns the kept preference records and the count of each filter
  reason."""
  kept, counts, _ = _label(rollout, cfg, id_prefix, start, group_size)
  return kept, counts


def _label(rollout: rollout_lib.Rollout, cfg: RLAIFConfig, id_prefix: str,
           start: int, group_size: int
           ) -> tuple[list[dict[str, Any]], dict[str, int],
                      list[tuple[int, int]]]:
  """label_pairs plus, for each kept pair, the (chosen, rejected) positions
  within its group."""
  if rollout.texts is None or rollout.score_B is None:
    raise ValueError("labelling needs decoded responses and scores")
  g = group_size
  if g < 2 or rollout.batch_size % g:
    raise ValueError(f"a rollout of groups of {g} needs a multiple of {g} "
                     f"rows (>= 2 per group), got {rollout.batch_size}")
  kept, counts, picks = [], {r: 0 for r in FILTER_REASONS}, []
  for i in range(0, rollout.batch_size, g):
    texts = rollout.texts[i:i + g]
    scores = [float(x) for x in rollout.score_B[i:i + g]]
    best, worst, reason = best_and_worst(
        texts, scores, [bool(x) for x in rollout.stopped_B[i:i + g]], cfg)
    if reason is not None:
      counts[reason] += 1
      continue
    kept.append(preference_record(
        rollout.records[i], texts[best], texts[worst],
        scores[best] - scores[worst], f"{id_prefix}-{start + i // g:06d}"))
    picks.append((best, worst))
  return kept, counts, picks


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
    greedy: Callable[[np.ndarray, np.ndarray, jax.Array], Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Samples cfg.samples_per_prompt responses per record in batches of
  cfg.prompts_per_batch records (the last batch is filled with repeats of
  its first record, which are not labelled) and labels them. Returns (kept
  records, report) where the report counts prompts, kept pairs and each
  filter reason, and gives the judge's mean score over all samples and over
  each prompt's best sample (the best-of-n headroom over sampling once).
  With cfg.include_greedy, `greedy` (a temperature-0 sampler) adds each
  prompt's greedy answer as one more candidate, listed first."""
  if cfg.include_greedy and greedy is None:
    raise ValueError("RLAIFConfig.include_greedy needs a greedy sampler")
  b, g = cfg.prompts_per_batch, cfg.samples_per_prompt
  per = g + int(cfg.include_greedy)
  kept: list[dict[str, Any]] = []
  counts = {r: 0 for r in FILTER_REASONS}
  margins: list[float] = []
  all_scores: list[float] = []
  best_scores: list[float] = []
  greedy_role = {"chosen": 0, "rejected": 0}
  bar = tqdm(total=len(records), desc=progress_desc("rlaif"), unit="prompt",
             dynamic_ncols=True)
  for n, s in enumerate(range(0, len(records), b)):
    chunk = list(records[s:s + b])
    real = len(chunk)
    chunk += [chunk[0]] * (b - real)
    rollout = rollout_lib.collect(
        chunk, codec=codec, cfg=rollout_cfg, sample=sample,
        rng=jax.random.fold_in(jax.random.PRNGKey(seed), n), group_size=g,
        scorer=scorer)
    rollout = _first_rows(rollout, g * real)
    if cfg.include_greedy:
      first = rollout_lib.collect(
          chunk, codec=codec, cfg=rollout_cfg, sample=greedy,
          rng=jax.random.PRNGKey(0), scorer=scorer)
      rollout = interleave(_first_rows(first, real), rollout, g)
    pairs, c, picks = _label(rollout, cfg, id_prefix, s, per)
    if cfg.include_greedy:  # each group's first row is its greedy answer
      greedy_role["chosen"] += sum(best == 0 for best, _ in picks)
      greedy_role["rejected"] += sum(worst == 0 for _, worst in picks)
    scores = np.asarray(rollout.score_B, np.float64)
    all_scores += scores.tolist()
    best_scores += scores.reshape(real, per).max(axis=1).tolist()
    kept += pairs
    margins += [p["margin"] for p in pairs]
    for k, v in c.items():
      counts[k] += v
    bar.update(real)
    bar.set_postfix(kept=len(kept), best=f"{np.mean(best_scores):.3f}",
                    mean=f"{np.mean(all_scores):.3f}")
  bar.close()
  mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
  report = {"prompts": len(records), "samples_per_prompt": g,
            "include_greedy": cfg.include_greedy,
            "greedy_answer_in_pairs": (greedy_role if cfg.include_greedy
                                       else None),
            "kept": len(kept),
            "filtered": sum(counts.values()), "filtered_by_reason": counts,
            "mean_margin": mean(margins),
            "mean_score": mean(all_scores),
            "mean_best_score": mean(best_scores),
            "min_margin": cfg.min_margin, "tie_tolerance": cfg.tie_tolerance,
            "drop_truncated": cfg.drop_truncated}
  return kept, report


def interleave(first: rollout_lib.Rollout, groups: rollout_lib.Rollout,
               g: int) -> rollout_lib.Rollout:
  """One row per prompt from `first` placed before that prompt's `g` rows
  of `groups` (host fields only: what labelling reads)."""
  n = first.batch_size
  if groups.batch_size != n * g:
    raise ValueError(f"{groups.batch_size} rows are not {n} groups of {g}")
  order = [(0, i) if j == 0 else (1, i * g + j - 1)
           for i in range(n) for j in range(g + 1)]
  pick = lambda a, b: [(a, b)[k][i] for k, i in order]  # noqa: E731
  return rollout_lib.Rollout(
      records=pick(first.records, groups.records), rows={},
      response_BxN=np.zeros((len(order), 1), np.int32),
      lengths_B=np.asarray(pick(first.lengths_B, groups.lengths_B)),
      stopped_B=np.asarray(pick(first.stopped_B, groups.stopped_B)),
      texts=pick(first.texts, groups.texts),
      score_B=np.asarray(pick(first.score_B, groups.score_B), np.float32))


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
