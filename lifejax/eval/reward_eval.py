"""Reward-model evaluation: pairwise accuracy by flaw kind, calibration of
P(chosen) = sigmoid(r_chosen - r_rejected), reward distributions, and the
normalization statistics PPO uses.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lifejax.data.batching import map_padded
from lifejax.data.preference import response_row
from lifejax.run.layout import RunDir


def pair_rows(records: Sequence[Mapping[str, Any]],
              render: Callable[[Mapping[str, Any]], tuple[list[int], list[int]]],
              seq_len: int) -> tuple[dict[str, np.ndarray],
                                     dict[str, np.ndarray]]:
  """Stacked LM rows (N, T) for every record's chosen and rejected answer."""
  chosen, rejected = [], []
  for rec in records:
    for resp, out in ((rec["chosen"], chosen), (rec["rejected"], rejected)):
      prompt_ids, resp_ids = render({**rec, "response": resp})
      out.append(response_row(prompt_ids, resp_ids, seq_len))
  stack = lambda rows: {k: np.stack([r[k] for r in rows])  # noqa: E731
                        for k in rows[0]}
  return stack(chosen), stack(rejected)


def score_rows(score_fn: Callable[[Any, dict], Any], params: Any,
               rows: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
  """Rewards (N,) for stacked rows (N, T), in fixed-size batches (jit
  once)."""
  jitted = jax.jit(score_fn)
  return map_padded(lambda chunk, _: jitted(params, chunk), rows, batch_size)


def calibration(p_chosen: np.ndarray, bins: int = 10
                ) -> tuple[float, list[dict[str, float]]]:
  """Expected calibration error of P(chosen) and its reliability table.

  Each pair is seen from both sides (p for "chosen wins", 1 - p for
  "rejected wins"), so the bins cover [0, 1] symmetrically.
  """
  p = np.concatenate([p_chosen, 1 - p_chosen])
  y = np.concatenate([np.ones_like(p_chosen), np.zeros_like(p_chosen)])
  edges = np.linspace(0, 1, bins + 1)
  idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
  table, ece = [], 0.0
  for b in range(bins):
    sel = idx == b
    if not sel.any():
      continue
    conf, acc = float(p[sel].mean()), float(y[sel].mean())
    ece += sel.mean() * abs(conf - acc)
    table.append({"bin": b, "confidence": conf, "accuracy": acc,
                  "count": int(sel.sum())})
  return float(ece), table


def evaluate_pairs(records: Sequence[Mapping[str, Any]], r_chosen: np.ndarray,
                   r_rejected: np.ndarray) -> dict[str, Any]:
  """Accuracy overall, per labelled flaw kind and per "flaw/task" (one flaw
  can be easy on one task and copy-bound on another), calibration, stats."""
  diff = r_chosen - r_rejected
  correct = diff > 0
  by_flaw: dict[str, list[bool]] = collections.defaultdict(list)
  by_flaw_task: dict[str, list[bool]] = collections.defaultdict(list)
  for rec, ok in zip(records, correct):
    flaw = str(rec.get("flaw", "unknown"))
    by_flaw[flaw].append(bool(ok))
    by_flaw_task[f"{flaw}/{rec.get('task', 'unknown')}"].append(bool(ok))
  p = 1.0 / (1.0 + np.exp(-diff))
  ece, table = calibration(p)
  all_r = np.concatenate([r_chosen, r_rejected])
  return {
      "accuracy": float(correct.mean()),
      "accuracy_by_flaw": {k: float(np.mean(v)) for k, v in
                           sorted(by_flaw.items())},
      "count_by_flaw": {k: len(v) for k, v in sorted(by_flaw.items())},
      "accuracy_by_flaw_task": {k: float(np.mean(v)) for k, v in
                                sorted(by_flaw_task.items())},
      "count_by_flaw_task": {k: len(v) for k, v in
                             sorted(by_flaw_task.items())},
      "mean_margin": float(diff.mean()),
      "ece": ece,
      "reliability": table,
      "reward_mean": float(all_r.mean()),
      "reward_std": float(all_r.std() + 1e-8),
  }


def plot_rewards(r_chosen: np.ndarray, r_rejected: np.ndarray,
                 table: Sequence[Mapping[str, float]], out_png: str) -> str:
  """Reward histograms (chosen vs rejected) and the reliability diagram."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
  lo = float(min(r_chosen.min(), r_rejected.min()))
  hi = float(max(r_chosen.max(), r_rejected.max()))
  bins = np.linspace(lo, hi + 1e-6, 30)
  a.hist(r_chosen, bins=bins, alpha=0.6, label="chosen")
  a.hist(r_rejected, bins=bins, alpha=0.6, label="rejected")
  a.set_xlabel("reward")
  a.set_title("reward distribution (held-out pairs)")
  a.legend()
  b.plot([0, 1], [0, 1], "k--", lw=1)
  b.plot([t["confidence"] for t in table], [t["accuracy"] for t in table],
         "o-")
  b.set_xlabel("predicted P(chosen)")
  b.set_ylabel("observed frequency")
  b.set_title("calibration")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png


def write_outputs(run_dir: str, last: Mapping[str, Any]) -> None:
  """What a reward run leaves for later stages and reports: the reward
  plot, reward_stats.json (the normalization PPO applies) and
  reward_eval.json, from the last `evaluate_pairs` result plus the scores
  (`r_chosen`, `r_rejected`)."""
  run = RunDir(run_dir)
  plot_rewards(last["r_chosen"], last["r_rejected"], last["reliability"],
               run.reward_eval_png)
  for path, obj in ((run.reward_stats, {"mean": last["reward_mean"],
                                        "std": last["reward_std"]}),
                    (run.reward_eval, {k: v for k, v in last.items()
                                       if k not in ("r_chosen",
                                                    "r_rejected")})):
    with open(path, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, default=str)
