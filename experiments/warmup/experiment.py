"""Warmup then cosine decay (issue 19, row 1; seeds 000, 5.1: "no warmup ->
loss spikes early, NaNs, unstable attention").

Claim: at the demo's learning rate, starting at the peak learning rate (no
warmup) diverges or trains worse than ramping up to it; warmup fixes it.

Arms: peak learning rate {3e-3 (the demo's), 1e-2, 3e-2} x warmup {0, 20
steps (the demo's)}, each a 100-step pretraining run (base.gin) with a cosine
decay to 0.1 x peak at step 100. Seeds vary the world (its text, tokenizer
and held-out split), the init and the data order; the arms of one seed share
all three, so warmup 0 vs 20 is a paired comparison.

Measured per run: the held-out loss at the end (every 20th document, never
trained on; nothing is selected on it), loss spikes (a step whose training
loss is more than SPIKE_NATS above the lowest of the previous
SPIKE_WINDOW steps), steps the non-finite guard skipped, and the peak
(pre-clipping) gradient norm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lifejax import sweep

LEARNING_RATES = (3e-3, 1e-2, 3e-2)
WARMUPS = (0, 20)
DEMO_LR, DEMO_WARMUP = 3e-3, 20
# A spike: a step's training loss more than SPIKE_NATS above the minimum of
# the SPIKE_WINDOW steps before it. Step-to-step noise of the training loss
# at this batch size is ~0.2 nats (different documents per batch), so 0.5 is
# a rise the noise alone does not make.
SPIKE_NATS = 0.5
SPIKE_WINDOW = 10
PLOT = "warmup_curves.png"

SWEEP = sweep.Sweep(
    arms=sweep.grid("", {"OptimizerConfig.learning_rate": LEARNING_RATES,
                         "OptimizerConfig.warmup_steps": WARMUPS},
                    names={"OptimizerConfig.learning_rate": "lr",
                           "OptimizerConfig.warmup_steps": "warmup"}),
    base_gin=("base.gin",),
    seeds=(0, 1, 2),
    root_param="RUN_DIR",
    seed_params=("world_corpus_files.seed", "pretrain.seed"),
    # --tiny: the demo's learning rate with and without warmup (every code
    # path of the summary, the paired table included); one compile per arm.
    tiny_arms=("lr0.003_warmup0", "lr0.003_warmup20"),
)


def _float(v: Any) -> float:
  """A metrics value: numbers, or the strings "nan"/"inf" the writer uses
  for non-finite ones."""
  return float(v)


def train_curve(cell: sweep.Cell) -> dict[str, np.ndarray]:
  """Per-step training rows (metrics.jsonl; eval rows are left out)."""
  rows = [r for r in cell.jsonl("metrics.jsonl")
          if "loss" in r and "grad_norm" in r]
  if not rows:
    raise ValueError(f"{cell.run_dir}: metrics.jsonl has no training rows")
  return {k: np.asarray([_float(r[k]) for r in rows])
          for k in ("step", "loss", "grad_norm", "skipped")}


def count_spikes(loss: Sequence[float], nats: float = SPIKE_NATS,
                 window: int = SPIKE_WINDOW) -> int:
  """Steps whose loss exceeds the minimum of the previous `window` finite
  losses by more than `nats`; a non-finite loss counts as a spike."""
  loss = np.asarray(loss, np.float64)
  n = 0
  for t in range(1, len(loss)):
    if not np.isfinite(loss[t]):
      n += 1
      continue
    prev = loss[max(0, t - window):t]
    prev = prev[np.isfinite(prev)]
    if prev.size and loss[t] > prev.min() + nats:
      n += 1
  return n


def cell_stats(cell: sweep.Cell) -> dict[str, float]:
  summary = cell.json("summary.json")
  if summary is None:
    raise ValueError(f"{cell.run_dir}: no summary.json (the run did not "
                     "finish)")
  c = train_curve(cell)
  ev = (summary.get("eval") or {}).get("eval/loss")
  return {"eval_loss": math.nan if ev is None else float(ev),
          "final_train_loss": float(np.mean(c["loss"][-10:])),
          "spikes": float(count_spikes(c["loss"])),
          "skipped": float(summary.get("skipped_steps", 0)),
          "peak_grad_norm": float(np.nanmax(c["grad_norm"]))}


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by_arm: dict[str, list[sweep.Cell]] = {}
  for c in cells:
    by_arm.setdefault(c.arm.name, []).append(c)
  stats = {c.run_dir: cell_stats(c) for c in cells}
  seeds = sorted({c.seed for c in cells})
  rows = []
  for arm in SWEEP.arms:
    cs = by_arm.get(arm.name, [])
    if not cs:
      continue
    st = [stats[c.run_dir] for c in cs]
    col = lambda k: [s[k] for s in st]  # noqa: E731
    rows.append({
        "arm": arm.name, "peak lr": f"{arm.labels['lr']:g}",
        "warmup": arm.labels["warmup"],
        "held-out loss": sweep.fmt_mean_sd(col("eval_loss")),
        "train loss (last 10 steps)": sweep.fmt_mean_sd(
            col("final_train_loss")),
        "spikes per seed": " / ".join(f"{v:.0f}" for v in col("spikes")),
        "skipped steps": f"{sum(col('skipped')):.0f}",
        "peak grad norm": sweep.fmt_mean_sd(col("peak_grad_norm"), 1)})
  md = ["# Warmup then cosine decay: results", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  md += [f"Seeds {seeds}; mean ± sd over seeds. Held-out loss: the final "
         "model on the held-out 5% of documents (nats per token). Spikes: "
         f"steps whose training loss is > {SPIKE_NATS} nats above the "
         f"minimum of the previous {SPIKE_WINDOW} steps. Skipped: steps the "
         "non-finite guard skipped (summed over seeds).", "",
         sweep.write_table(rows, list(rows[0]) if rows else ["arm"])]
  md += ["## Warmup 0 vs 20, paired over seeds (held-out loss)", ""]
  prow = []
  for lr in LEARNING_RATES:
    a = _arm_values(by_arm, stats, lr, 0)
    b = _arm_values(by_arm, stats, lr, DEMO_WARMUP)
    if a is None or b is None:
      continue
    t = sweep.paired_t(a, b)
    prow.append({"peak lr": f"{lr:g}", "n": int(t["n"]),
                 "no warmup - warmup": f"{t['mean_diff']:+.4f}",
                 "95% CI": f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                 "p": t["p"]})
  if prow:
    md.append(sweep.write_table(prow, list(prow[0])))
  _plot(by_arm, os.path.join(out_dir, PLOT))
  md += ["", f"![loss curves]({PLOT})"]
  return "\n".join(md) + "\n"


def _arm_values(by_arm, stats, lr: float, warmup: int
                ) -> list[float] | None:
  for arm in SWEEP.arms:
    if arm.labels["lr"] == lr and arm.labels["warmup"] == warmup:
      cs = sorted(by_arm.get(arm.name, []), key=lambda c: c.seed)
      return [stats[c.run_dir]["eval_loss"] for c in cs] or None
  return None


def _plot(by_arm: dict[str, list[sweep.Cell]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, len(LEARNING_RATES),
                           figsize=(4.2 * len(LEARNING_RATES), 6.5),
                           sharex=True, squeeze=False)
  colors = {0: "tab:red", DEMO_WARMUP: "tab:blue"}
  for j, lr in enumerate(LEARNING_RATES):
    for arm in SWEEP.arms:
      if arm.labels["lr"] != lr:
        continue
      w = arm.labels["warmup"]
      for k, cell in enumerate(sorted(by_arm.get(arm.name, []),
                                      key=lambda c: c.seed)):
        c = train_curve(cell)
        label = f"warmup {w}" if k == 0 else None
        axes[0, j].plot(c["step"], c["loss"], color=colors.get(w, "k"),
                        alpha=0.7, lw=1, label=label)
        axes[1, j].plot(c["step"], c["grad_norm"], color=colors.get(w, "k"),
                        alpha=0.7, lw=1, label=label)
        bad = c["skipped"] > 0
        if bad.any():
          axes[0, j].plot(c["step"][bad], np.full(bad.sum(), 9.0), "x",
                          color=colors.get(w, "k"))
    demo = " (demo)" if lr == DEMO_LR else ""
    axes[0, j].set_title(f"peak lr {lr:g}{demo}")
    axes[0, j].set_ylabel("training loss")
    axes[1, j].set_ylabel("grad norm (before clipping)")
    axes[1, j].set_yscale("log")
    axes[1, j].set_xlabel("step")
    for ax in axes[:, j]:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.suptitle("Warmup 0 vs 20 steps, one line per seed (x: a skipped step)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
