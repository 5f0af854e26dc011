"""Dynamic sampling (DAPO, Yu et al., 2025): keep only informative groups.

A GRPO group whose samples all scored the same has zero advantage, so it
adds no policy gradient, only the KL term and the normalizer's count. DAPO
drops such groups and samples more prompts until the batch is full again.
Here every extra round is a full rollout of the usual prompt count (so the
sampler and the forwards keep their shapes and compile once), drawn from
the same prompt stream with its own key; a capped number of extra rounds
keeps an iteration's cost bounded, and flat groups fill what the cap left
missing so the batch shape never changes (verl, whose `max_num_gen_batches`
caps the same loop, raises instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lifejax.rl.rollout import Rollout


def select_rows(rollout: Rollout, rows_R: np.ndarray) -> Rollout:
  """The rollout's rows `rows_R` (an int index array), in that order."""
  idx = np.asarray(rows_R, np.int64)

  def take(value: Any) -> Any:
    if value is None:
      return None
    if isinstance(value, list):
      return [value[i] for i in idx]
    if isinstance(value, dict):
      return {k: v[idx] for k, v in value.items()}
    return np.asarray(value)[idx]

  return Rollout(**{f.name: take(getattr(rollout, f.name))
                    for f in dataclasses.fields(Rollout)})


def concat_rollouts(parts: Sequence[Rollout]) -> Rollout:
  """Rows of `parts` one after the other (all filled alike: a field that
  is None in one part must be None in all)."""
  if not parts:
    raise ValueError("concat_rollouts needs at least one rollout")

  def join(name: str) -> Any:
    values = [getattr(p, name) for p in parts]
    if all(v is None for v in values):
      return None
    if any(v is None for v in values):
      raise ValueError(f"rollout field {name!r} is set in some parts only")
    if isinstance(values[0], list):
      return [x for v in values for x in v]
    if isinstance(values[0], dict):
      return {k: np.concatenate([v[k] for v in values]) for k in values[0]}
    return np.concatenate(values)

  return Rollout(**{f.name: join(f.name) for f in dataclasses.fields(Rollout)})


def refill_groups(first: Rollout, more: Callable[[int], Rollout],
                  informative: Callable[[Rollout], np.ndarray],
                  group_size: int, max_extra_rounds: int
                  ) -> tuple[Rollout, dict[str, float]]:
  """A rollout of as many groups as `first`: its informative groups and,
  while some are missing, those of `more(1)`, `more(2)`, ... (at most
  `max_extra_rounds` extra rollouts), in sampling order; after the last
  round, uninformative groups (in sampling order) fill what is still
  missing. `informative(rollout)` -> (num_groups,) bool.

  Metrics: dynamic_sampling/extra_rounds, .../dropped_groups (uninformative
  groups left out), .../flat_groups_kept (uninformative groups that filled
  a shortfall), .../sampled_groups, .../reward (mean score of everything
  sampled: unlike the batch's, not biased by the filter).
  """
  if first.batch_size % group_size:
    raise ValueError(f"a rollout of {first.batch_size} rows is not a whole "
                     f"number of groups of {group_size}")
  need = first.batch_size // group_size
  kept: list[Rollout] = []
  flat: list[Rollout] = []
  n_kept = n_flat = rounds = 0
  scores = []
  rollout = first
  while True:
    keep_N = np.asarray(informative(rollout), bool)
    rows_NxG = np.arange(rollout.batch_size).reshape(-1, group_size)
    kept.append(select_rows(rollout, rows_NxG[keep_N].ravel()))
    flat.append(select_rows(rollout, rows_NxG[~keep_N].ravel()))
    n_kept += int(keep_N.sum())
    n_flat += int((~keep_N).sum())
    if rollout.score_B is not None:
      scores.append(rollout.score_B)
    if n_kept >= need or rounds == max_extra_rounds:
      break
    rounds += 1
    rollout = more(rounds)
  short = max(need - n_kept, 0)
  out = select_rows(concat_rollouts(kept + flat),
                    np.arange(need * group_size))
  metrics = {"dynamic_sampling/extra_rounds": float(rounds),
             "dynamic_sampling/dropped_groups": float(n_flat - short),
             "dynamic_sampling/flat_groups_kept": float(short),
             "dynamic_sampling/sampled_groups": float(n_kept + n_flat)}
  if scores:
    metrics["dynamic_sampling/reward"] = float(np.mean(np.concatenate(
        scores)))
  return out, metrics
