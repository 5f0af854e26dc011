"""Curation: raw vs curated pretraining at the same token budget, and the eval
inflation from contamination (issue 19, row 6; seeds 001 "Data curation:
dedup, filtering, mixing, and why the curriculum matters" and 000 on data
quality).

Claims: (1) pretraining on the curated corpus gives better held-out quality
than the raw corpus at the same token budget; (2) without decontamination
the evaluation is inflated on the items whose text leaked into training.

Arms (cell.py, one seed's world, held-out split and tokenizer shared by all
three): raw (the corpus as generated, no curation step), curated (the
embedded world's full pipeline), curated_no_decontam (every step but
decontamination). The same NUM_STEPS x 16 x 128 tokens in each, every
source at its natural word share. Seeds vary the world, the init and the
data order; arms of one seed are paired.

Measured (cell.py): held-out loss per source on clean documents nothing
trains on; the world's held-out fact questions, split into those quoted on a
planted contamination page ("leaked") and the rest ("clean"): answer loss
and 8-way multiple-choice accuracy; the greedy fact probe. Inflation = the
leaked-vs-clean advantage in an arm minus the same in `curated` (where
decontamination removed the leaks), paired over seeds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lifejax import sweep

SOURCES = ("wiki", "support_chat", "records", "mail", "web")
# A second pair at LONG_STEPS (3x the budget, ~1.7 passes over the curated
# web text instead of ~0.6) asks whether the inflation grows with exposure.
LONG_STEPS = 450
ARMS = ("raw", "curated", "curated_no_decontam", "curated_3x",
        "curated_no_decontam_3x")
CORPUS = {"raw": "raw", "curated": "curated",
          "curated_no_decontam": "curated_no_decontam",
          "curated_3x": "curated",
          "curated_no_decontam_3x": "curated_no_decontam"}
# Each arm's paired reference: the curated arm of the same budget.
REFS = {"raw": "curated", "curated_no_decontam": "curated",
        "curated_no_decontam_3x": "curated_3x"}
REFERENCE = "curated"
PLOT = "curation.png"

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(name=a, gin_params=(
        f"curation_cell.corpus={CORPUS[a]!r}",) + (
            (f"NUM_STEPS={LONG_STEPS}",) if a.endswith("_3x") else ()),
                    labels={"corpus": CORPUS[a]}) for a in ARMS],
    base_gin=("experiment.gin",),
    seeds=(0, 1, 2),
    root_param="curation_cell.root",
    seed_params=("curation_cell.seed",),
    # --tiny: raw text and curated shards (curated_no_decontam is the
    # curated path on another directory) and every table of the summary.
    tiny_arms=("raw", "curated"),
)


def cell_metrics(cell: sweep.Cell) -> dict[str, float]:
  """The cell's cell_eval.json plus derived numbers: heldout/all/loss (the
  token-weighted mean over sources) and the leaked-vs-clean advantages
  gap/probe, gap/verbatim (clean answer loss - leaked, nats per token: > 0
  when the leaked answers are easier) and gap/mc (leaked MC accuracy -
  clean)."""
  m = cell.json("cell_eval.json")
  if m is None:
    raise ValueError(f"{cell.run_dir}: no cell_eval.json (the cell did not "
                     "finish)")
  out = dict(m)
  tok = [m[f"heldout/{s}/tokens"] for s in SOURCES]
  out["heldout/all/loss"] = float(np.dot(
      [m[f"heldout/{s}/loss"] for s in SOURCES], tok) / sum(tok))
  for fmt in ("probe", "verbatim"):
    out[f"gap/{fmt}"] = m[f"facts/clean/{fmt}"] - m[f"facts/leaked/{fmt}"]
  out["gap/mc"] = m["facts/leaked/mc_acc"] - m["facts/clean/mc_acc"]
  return out


def by_arm(cells: Sequence[sweep.Cell]
           ) -> dict[str, dict[int, dict[str, float]]]:
  """{arm: {seed: cell_metrics}}."""
  out: dict[str, dict[int, dict[str, float]]] = {}
  for c in cells:
    out.setdefault(c.arm.name, {})[c.seed] = cell_metrics(c)
  return out


def paired(stats: Mapping[str, Mapping[int, Mapping[str, float]]], arm: str,
           ref: str, key: str) -> dict[str, float] | None:
  """paired_t of `key`, arm - ref, over the seeds both have (None if the
  arms share no seed)."""
  seeds = sorted(set(stats.get(arm, {})) & set(stats.get(ref, {})))
  if not seeds:
    return None
  return sweep.paired_t([stats[arm][s][key] for s in seeds],
                        [stats[ref][s][key] for s in seeds])


def col(stats, arm: str, key: str) -> list[float]:
  return [stats[arm][s][key] for s in sorted(stats[arm])]


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  stats = by_arm(cells)
  arms = [a for a in ARMS if a in stats]
  seeds = sorted({c.seed for c in cells})
  steps = {c.arm.name: c.json("pretrain", "summary.json")["final_step"]
           for c in cells}
  md = ["# Curation: results", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  md += [f"Seeds {seeds}; mean ± sd over seeds; pretraining steps "
         "(column `steps`) of the same batch shape, the same number in the "
         "arms compared. Losses in nats per token (one tokenizer per "
         "seed, trained on the curated text, read every arm), on clean "
         "held-out documents of each source that no arm trains on.", ""]
  rows = []
  for a in arms:
    r = {"arm": a, "steps": steps[a], "held-out loss (all)": sweep.fmt_mean_sd(
        col(stats, a, "heldout/all/loss")),
         "perplexity": f"{math.exp(np.mean(col(stats, a, 'heldout/all/loss'))):.1f}"}
    for s in SOURCES:
      r[s] = sweep.fmt_mean_sd(col(stats, a, f"heldout/{s}/loss"))
    r["leak pages in train"] = " / ".join(
        f"{v:.0f}" for v in col(stats, a, "train/contamination_pages"))
    rows.append(r)
  md += ["## Held-out loss", "", sweep.write_table(rows, list(rows[0]))]
  prow = []
  for a in arms:
    if a not in REFS:
      continue
    for key, label in [("heldout/all/loss", "held-out (all)")] + [
        (f"heldout/{s}/loss", s) for s in SOURCES]:
      t = paired(stats, a, REFS[a], key)
      if t is not None:
        prow.append({"comparison": f"{a} - {REFS[a]}", "held-out loss":
                     label, "paired difference [95% CI], p":
                     sweep.fmt_paired_t(t, 4)})
  if prow:
    md += ["Paired over seeds (> 0: the arm is worse than curated at the "
           "same budget):", "",
           sweep.write_table(prow, list(prow[0]))]
  frows = []
  for a in arms:
    r = {"arm": a}
    for g in ("clean", "leaked"):
      r[f"answer loss, {g}"] = sweep.fmt_mean_sd(
          col(stats, a, f"facts/{g}/probe"))
      r[f"MC acc, {g}"] = sweep.fmt_mean_sd(col(stats, a, f"facts/{g}/mc_acc"))
    if all("fact_probe_accuracy" in stats[a][s] for s in stats[a]):
      r["greedy probe acc"] = sweep.fmt_mean_sd(
          col(stats, a, "fact_probe_accuracy"))
    r["leaked questions in train"] = " / ".join(
        f"{v:.0f}" for v in col(stats, a, "train/leaked_questions"))
    frows.append(r)
  s0 = stats[arms[0]][min(stats[arms[0]])]
  md += ["## Fact questions and the eval inflation", "",
         f"{s0['facts/clean/count']:.0f} clean and "
         f"{s0['facts/leaked/count']:.0f} leaked questions (seed "
         f"{min(stats[arms[0]])}); answer loss: nats per answer token given "
         "\"Question: q\\nAnswer:\"; MC: 8-way choice among values of the "
         f"same relation (chance {s0['facts/clean/mc_chance']:.3f} clean, "
         f"{s0['facts/leaked/mc_chance']:.3f} leaked).", "",
         sweep.write_table(frows, list(frows[0]))]
  irows = []
  for a in arms:
    r = {"arm": a}
    for key, label in (("gap/probe", "loss advantage (probe format)"),
                       ("gap/verbatim", "loss advantage (leak's format)"),
                       ("gap/mc", "MC acc advantage")):
      r[label] = sweep.fmt_mean_sd(col(stats, a, key), 4)
      if a in REFS:
        t = paired(stats, a, REFS[a], key)
        if t is not None:
          r[f"inflation: {label}"] = sweep.fmt_paired_t(t, 4)
    irows.append(r)
  cols = list(dict.fromkeys(k for r in irows for k in r))
  md += ["Leaked-vs-clean advantage per arm (clean answer loss - leaked; "
         "leaked MC acc - clean) and the inflation: the arm's advantage "
         "minus that of curated at the same budget, paired over seeds "
         "(> 0: inflated):", "",
         sweep.write_table(irows, cols)]
  qrows = per_question_rows(cells)
  if qrows:
    md += ["Per question, pooled over seeds: the change of the true "
           "answer's log-probability (probe format, summed over its tokens) "
           "from the reference (curated, same budget) to the arm on the "
           "same question and seed, leaked "
           "vs clean questions (Welch t-test; > 0: the arm gained more on "
           "the leaked questions), and multiple-choice flips against "
           "the reference (now right / now wrong; sign-test p):", "",
           sweep.write_table(qrows, list(qrows[0]))]
  _plot(stats, arms, os.path.join(out_dir, PLOT))
  md += ["", f"![held-out loss and inflation]({PLOT})"]
  return "\n".join(md) + "\n"


def question_deltas(cell: sweep.Cell, ref: sweep.Cell
                    ) -> dict[str, list[tuple[float, int]]]:
  """{group: [(true-answer log-prob change, MC flip)]} of `cell` against
  `ref` (the same seed's curated cell), question by question; flip +1: now
  right, -1: now wrong, 0: unchanged."""
  a, b = cell.json("mc_probe.json"), ref.json("mc_probe.json")
  if a is None or b is None:
    raise ValueError(f"{cell.run_dir} or {ref.run_dir}: no mc_probe.json")
  out: dict[str, list[tuple[float, int]]] = {}
  for qid, qa in sorted(a.items()):
    qb = b[qid]
    right_a = qa["logp"][0] > max(qa["logp"][1:], default=math.inf)
    right_b = qb["logp"][0] > max(qb["logp"][1:], default=math.inf)
    out.setdefault(qa["group"], []).append(
        (qa["logp"][0] - qb["logp"][0], int(right_a) - int(right_b)))
  return out


def per_question_rows(cells: Sequence[sweep.Cell]) -> list[dict[str, Any]]:
  """One row per arm other than curated: leaked vs clean per-question
  changes against curated, pooled over the seeds both ran."""
  from scipy import stats as st  # pylint: disable=g-import-not-at-top
  rows = []
  for arm in ARMS:
    if arm not in REFS:
      continue
    ref = {c.seed: c for c in cells if c.arm.name == REFS[arm]}
    pooled: dict[str, list[tuple[float, int]]] = {"leaked": [], "clean": []}
    for c in cells:
      if c.arm.name == arm and c.seed in ref:
        for g, v in question_deltas(c, ref[c.seed]).items():
          pooled[g] += v
    if not pooled["leaked"] or not pooled["clean"]:
      continue
    dl = np.array([d for d, _ in pooled["leaked"]])
    dc = np.array([d for d, _ in pooled["clean"]])
    p = (st.ttest_ind(dl, dc, equal_var=False).pvalue
         if len(dl) > 1 and len(dc) > 1 else math.nan)
    row = {"arm vs reference": f"{arm} vs {REFS[arm]}",
           "questions (leaked / clean)":
           f"{len(dl)} / {len(dc)}",
           "log-prob change, leaked": f"{dl.mean():+.3f}",
           "log-prob change, clean": f"{dc.mean():+.3f}",
           "leaked - clean, Welch p": f"{dl.mean() - dc.mean():+.3f}, "
                                      f"p={p:.2g}"}
    for g in ("leaked", "clean"):
      up = sum(f > 0 for _, f in pooled[g])
      down = sum(f < 0 for _, f in pooled[g])
      sp = (st.binomtest(up, up + down).pvalue if up + down else math.nan)
      row[f"MC flips, {g}"] = f"{up} / {down}, p={sp:.2g}"
    rows.append(row)
  return rows


def _plot(stats: Mapping[str, Any], arms: Sequence[str], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2),
                                 gridspec_kw={"width_ratios": [2, 1]})
  names = ("all",) + SOURCES
  x = np.arange(len(names))
  w = 0.8 / max(len(arms), 1)
  colors = {"raw": "tab:red", "curated": "tab:blue",
            "curated_no_decontam": "tab:orange", "curated_3x": "tab:cyan",
            "curated_no_decontam_3x": "tab:olive"}
  for i, a in enumerate(arms):
    vals = np.array([col(stats, a, f"heldout/{n}/loss") for n in names])
    ax1.bar(x + (i - (len(arms) - 1) / 2) * w, vals.mean(1), w,
            yerr=vals.std(1, ddof=1) if vals.shape[1] > 1 else None,
            color=colors.get(a), label=a, capsize=2)
  ax1.set_xticks(x, names)
  ax1.set_ylabel("held-out loss (nats / token)")
  lo = min(np.mean(col(stats, a, f"heldout/{n}/loss"))
           for a in arms for n in names)
  ax1.set_ylim(bottom=max(0.0, lo - 0.5))
  ax1.legend(fontsize=8)
  ax1.set_title("Held-out loss by source (mean ± sd over seeds)")
  infl = [a for a in arms if a in REFS and REFS[a] in stats]
  for i, a in enumerate(infl):
    seeds = sorted(set(stats[a]) & set(stats[REFS[a]]))
    for j, key in enumerate(("gap/probe", "gap/verbatim")):
      v = [stats[a][s][key] - stats[REFS[a]][s][key] for s in seeds]
      ax2.scatter(np.full(len(v), i + (j - 0.5) * 0.25), v,
                  color=colors.get(a), marker="o" if j == 0 else "s",
                  label=("probe format" if j == 0 else "leak's format")
                  if i == 0 else None)
  ax2.axhline(0, color="k", lw=0.8)
  ax2.set_xticks(range(len(infl)), [f"{a}\n- {REFS[a]}" for a in infl],
                 fontsize=7)
  ax2.set_ylabel("inflation (nats / answer token)")
  ax2.set_title("Leaked-vs-clean advantage minus the reference's,\n"
                "one point per seed", fontsize=10)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
