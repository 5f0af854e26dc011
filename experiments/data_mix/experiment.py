"""Data mix: source weights against per-source held-out loss and a downstream
measure (issue 19, row 7; seed 000: "many crucial training choices are still
empirical recipes. Data mix, LR range, KL weight, epoch count — these are
tuned").

Expected reading: up-weighting a source lowers its own held-out loss and
raises the others'; the downstream measure favours the mix closest to the
task's domain.

Arms (experiments/curation/cell.py on the curated corpus, one seed's world,
held-out split and tokenizer shared by all): default (each source at its
natural word share, the lifecycle's default), uniform (equal token shares),
and wiki, support_chat, mail each up-weighted 4x. The same NUM_STEPS x 16 x
128 tokens in each; seeds vary the world, the init and the data order, and
arms of one seed are paired.

Measured: held-out loss per source (clean documents nothing trains on);
downstream, right after pretraining: the answer loss of the world's test
instructions per task given the prompt, and the held-out fact questions
(answer loss, 8-way multiple-choice accuracy). Nothing is selected, so the
held-out documents and the test split only report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lifejax import sweep

SOURCES = ("wiki", "support_chat", "records", "mail", "web")
TASKS = ("fact_qa", "summarize", "action_items", "reply", "refuse_pii")
UPWEIGHT = 4.0
REFERENCE = "default"
PLOT = "data_mix.png"


def _arms() -> list[sweep.Arm]:
  arms = [sweep.Arm(name="default", labels={"up": None}),
          sweep.Arm(name="uniform",
                    gin_params=("curation_cell.equal_shares=True",),
                    labels={"up": None})]
  for s in ("wiki", "support_chat", "mail"):
    arms.append(sweep.Arm(
        name=f"{s}_x{UPWEIGHT:g}",
        gin_params=(f"curation_cell.source_weights={{{s!r}: {UPWEIGHT}}}",),
        labels={"up": s}))
  return arms


SWEEP = sweep.Sweep(
    arms=_arms(),
    base_gin=("experiment.gin",),
    seeds=(0, 1, 2),
    root_param="curation_cell.root",
    seed_params=("curation_cell.seed",),
    # --tiny: the reference and the equal-share path (each arm compiles its
    # own train step; source_weights is the unit tests' business).
    tiny_arms=("default", "uniform"),
)


def cell_metrics(cell: sweep.Cell) -> dict[str, float]:
  """cell_eval.json plus heldout/all/loss (token-weighted over sources),
  facts/all/probe (answer loss over every fact question, token-weighted)
  and facts/all/mc_acc (question-weighted)."""
  m = cell.json("cell_eval.json")
  if m is None:
    raise ValueError(f"{cell.run_dir}: no cell_eval.json (the cell did not "
                     "finish)")
  out = dict(m)
  tok = np.array([m[f"heldout/{s}/tokens"] for s in SOURCES])
  out["heldout/all/loss"] = float(np.dot(
      [m[f"heldout/{s}/loss"] for s in SOURCES], tok) / tok.sum())
  groups = [g for g in ("clean", "leaked") if f"facts/{g}/probe" in m]
  ft = np.array([m[f"facts/{g}/probe_tokens"] for g in groups])
  out["facts/all/probe"] = float(np.dot(
      [m[f"facts/{g}/probe"] for g in groups], ft) / ft.sum())
  n = np.array([m[f"facts/{g}/count"] for g in groups])
  out["facts/all/mc_acc"] = float(np.dot(
      [m[f"facts/{g}/mc_acc"] for g in groups], n) / n.sum())
  out["facts/all/mc_chance"] = float(np.dot(
      [m[f"facts/{g}/mc_chance"] for g in groups], n) / n.sum())
  return out


def by_arm(cells: Sequence[sweep.Cell]
           ) -> dict[str, dict[int, dict[str, float]]]:
  out: dict[str, dict[int, dict[str, float]]] = {}
  for c in cells:
    out.setdefault(c.arm.name, {})[c.seed] = cell_metrics(c)
  return out


def col(stats, arm: str, key: str) -> list[float]:
  return [stats[arm][s][key] for s in sorted(stats[arm])]


def diffs(stats: Mapping[str, Mapping[int, Mapping[str, float]]], arm: str,
          ref: str, key: str) -> dict[str, float] | None:
  """paired_t of `key`, arm - ref, over the seeds both ran."""
  seeds = sorted(set(stats.get(arm, {})) & set(stats.get(ref, {})))
  if not seeds:
    return None
  return sweep.paired_t([stats[arm][s][key] for s in seeds],
                        [stats[ref][s][key] for s in seeds])


def own_vs_others(stats, arm: str, source: str, ref: str = REFERENCE
                  ) -> dict[str, Any]:
  """For an arm that up-weights `source`: the paired change of its own
  held-out loss and of the mean held-out loss of the other sources (equal
  weight per source), arm - ref."""
  seeds = sorted(set(stats[arm]) & set(stats[ref]))
  others = [s for s in SOURCES if s != source]

  def other_mean(a: str, seed: int) -> float:
    return float(np.mean([stats[a][seed][f"heldout/{s}/loss"]
                          for s in others]))

  own = sweep.paired_t([stats[arm][s][f"heldout/{source}/loss"]
                        for s in seeds],
                       [stats[ref][s][f"heldout/{source}/loss"]
                        for s in seeds])
  oth = sweep.paired_t([other_mean(arm, s) for s in seeds],
                       [other_mean(ref, s) for s in seeds])
  return {"own": own, "others": oth}


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  stats = by_arm(cells)
  arms = [a.name for a in SWEEP.arms if a.name in stats]
  labels = {a.name: a.labels for a in SWEEP.arms}
  seeds = sorted({c.seed for c in cells})
  steps = cells[0].json("pretrain", "summary.json")["final_step"]
  md = ["# Data mix: results", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  md += [f"Seeds {seeds}; mean ± sd over seeds; {steps} pretraining steps "
         "of the same batch shape in every arm, on the curated corpus. "
         "Losses in nats per token (one tokenizer per seed, shared by the "
         "arms).", ""]
  srow = []
  for a in arms:
    r = {"arm": a}
    for s in SOURCES:
      r[s] = f"{np.mean(col(stats, a, f'share/{s}')):.3f}"
    srow.append(r)
  md += ["## Token shares of the mixes (mean over seeds)", "",
         sweep.write_table(srow, list(srow[0]))]
  rows = []
  for a in arms:
    r = {"arm": a}
    for s in SOURCES + ("all",):
      r[s] = sweep.fmt_mean_sd(col(stats, a, f"heldout/{s}/loss"))
    rows.append(r)
  md += ["## Held-out loss, arm x source", "",
         sweep.write_table(rows, list(rows[0]))]
  drows = []
  for a in arms:
    if a == REFERENCE:
      continue
    r = {"arm - default": a}
    for s in SOURCES + ("all",):
      t = diffs(stats, a, REFERENCE, f"heldout/{s}/loss")
      r[s] = sweep.fmt_paired_t(t, 3) if t else ""
    drows.append(r)
  if drows:
    md += ["Paired over seeds, arm - default (< 0: the arm is better; "
           "mean [95% CI], p):", "", sweep.write_table(drows, list(drows[0]))]
  orows = []
  for a in arms:
    up = labels[a].get("up")
    if up and REFERENCE in stats:
      ov = own_vs_others(stats, a, up)
      orows.append({"arm": a, "own source": up,
                    "own held-out loss, arm - default":
                    sweep.fmt_paired_t(ov["own"], 3),
                    "other sources (mean), arm - default":
                    sweep.fmt_paired_t(ov["others"], 3)})
  if orows:
    md += ["Up-weighting a source: its own held-out loss vs the others' "
           "(the expected reading: own < 0, others > 0):", "",
           sweep.write_table(orows, list(orows[0]))]
  keys = [("facts/all/mc_acc", "fact MC acc"),
          ("facts/all/probe", "fact answer loss")] + [
              (f"task/{t}/loss", f"{t} answer loss") for t in TASKS]
  trows = []
  for a in arms:
    r = {"arm": a}
    for k, lab in keys:
      r[lab] = sweep.fmt_mean_sd(col(stats, a, k))
    trows.append(r)
  s0 = stats[arms[0]][min(stats[arms[0]])]
  md += ["## Downstream, right after pretraining", "",
         "Fact questions: every held-out fact question of the world "
         f"({s0['facts/clean/count'] + s0['facts/leaked/count']:.0f}); "
         "MC = 8-way choice among values of the same relation (chance "
         f"{s0['facts/all/mc_chance']:.3f}); answer loss given \"Question: "
         "q\\nAnswer:\". Tasks: the answer's loss given the prompt (lifejax "
         "chat template) on the world's test instructions, per task.", "",
         sweep.write_table(trows, list(trows[0]))]
  prow = []
  for a in arms:
    if a == REFERENCE:
      continue
    r = {"arm - default": a}
    for k, lab in keys:
      t = diffs(stats, a, REFERENCE, k)
      r[lab] = sweep.fmt_paired_t(t, 3) if t else ""
    prow.append(r)
  if prow:
    md += ["Paired over seeds, arm - default (losses: < 0 better; MC: > 0 "
           "better):", "", sweep.write_table(prow, list(prow[0]))]
  _plot(stats, arms, keys, os.path.join(out_dir, PLOT))
  md += ["", f"![arm x source matrix]({PLOT})"]
  return "\n".join(md) + "\n"


def _plot(stats, arms: Sequence[str], keys, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = [(f"heldout/{s}/loss", s) for s in SOURCES + ("all",)]
  cols += [(k, lab.replace(" answer loss", "\nanswer loss").replace(
      "fact MC", "fact\nMC")) for k, lab in keys]
  mat = np.array([[np.mean(col(stats, a, k)) - np.mean(
      col(stats, REFERENCE, k)) if REFERENCE in stats else np.nan
      for k, _ in cols] for a in arms])
  # MC accuracy: higher is better; flip its sign so that blue is better
  # everywhere.
  flip = np.array([-1.0 if "mc_acc" in k else 1.0 for k, _ in cols])
  shown = mat * flip
  fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2, 0.6 * len(arms) + 2))
  lim = np.nanmax(np.abs(shown)) or 1.0
  im = ax.imshow(shown, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
  for i in range(len(arms)):
    for j in range(len(cols)):
      ax.text(j, i, f"{mat[i, j]:+.3f}", ha="center", va="center",
              fontsize=7)
  ax.set_xticks(range(len(cols)), [c[1] for c in cols], rotation=45,
                ha="right", fontsize=8)
  ax.set_yticks(range(len(arms)), arms, fontsize=8)
  ax.axvline(len(SOURCES) + 0.5, color="k", lw=1)
  ax.set_title("Arm - default, mean over seeds: held-out loss by source | "
               "downstream (blue = better)", fontsize=9)
  fig.colorbar(im, ax=ax, shrink=0.8, label="change (sign: blue better)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
