"""The report's PNG plots: loss curves, reward vs KL, the forgetting panel."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lifejax.eval.runs import (
    POLICY_KINDS, Stage, forgetting_series, metrics_rows, reward_kl_series)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_loss_curves(stages: Sequence[Stage], path: str) -> str | None:
  """Train (and eval) loss vs step, one subplot per stage."""
  curves = []
  for s in stages:
    rows = metrics_rows(s.run_dir)
    key = "loss" if any("loss" in r for r in rows) else next(
        (k for r in rows for k in r if k.endswith("loss")
         and not k.startswith("eval/")), None)
    if key is None:
      continue
    train = [(r["step"], r[key]) for r in rows if key in r]
    evals = {}
    for r in rows:
      for k, v in r.items():
        if k.startswith("eval/") and k.endswith("loss") and "z_loss" not in k:
          evals.setdefault(k, []).append((r["step"], v))
    curves.append((s, key, train, evals))
  if not curves:
    return None
  plt = _pyplot()
  cols = min(3, len(curves))
  nrows = math.ceil(len(curves) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows),
                           squeeze=False)
  for ax, (s, key, train, evals) in zip(axes.flat, curves):
    ax.plot(*zip(*train), label=f"train {key}")
    for k, pts in sorted(evals.items()):
      ax.plot(*zip(*pts), "o--", label=k)
    ax.set_title(f"{s.name} ({s.kind})")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(curves):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_reward_vs_kl(stages: Sequence[Stage], path: str) -> str | None:
  """Reward (and the judge's score) against KL to the reference."""
  series = [(s, reward_kl_series(s.run_dir)) for s in stages
            if s.kind in POLICY_KINDS]
  series = [(s, d) for s, d in series if d["kl"]]
  if not series:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for s, d in series:
    if not all(math.isnan(v) for v in d["reward"]):
      ax.plot(d["kl"], d["reward"], "o-", label=f"{s.name} reward")
    if not all(math.isnan(v) for v in d["judge"]):
      ax.plot(d["kl"], d["judge"], "s:", label=f"{s.name} judge score")
  ax.set_xlabel("KL to reference (nats per answer)")
  ax.set_ylabel("score")
  ax.set_title("reward vs KL (a widening reward-judge gap = hacking)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_forgetting(stages: Sequence[Stage], path: str) -> str | None:
  """General perplexity and the task metric vs step for every SFT run."""
  panels = [(s, forgetting_series(s.run_dir)) for s in stages
            if s.kind == "sft"]
  panels = [(s, d) for s, d in panels if d["step"]]
  if not panels:
    return None
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6),
                           squeeze=False)
  for ax, (s, d) in zip(axes.flat, panels):
    ax.plot(d["step"], d["general_ppl"], "o-", color="tab:red")
    ax.set_ylabel("general perplexity", color="tab:red")
    ax.set_xlabel("step")
    twin = ax.twinx()
    twin.plot(d["step"], d["task"], "s--", color="tab:blue")
    twin.set_ylabel(d["task_name"][-1], color="tab:blue")
    ax.set_title(f"forgetting panel: {s.name}")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
