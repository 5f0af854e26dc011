"""SFT forgetting, unconfounded (issue 19, row 10; seeds 000 row 7 "narrow
SFT overwrites broad skills -> small LR, data mixing, ...").

A 2x2 of the SFT learning rate {the demo's 1e-3, 10x: 1e-2} and the share of
retained general web text in the SFT mix {0, the demo's 0.2}; each cell
(cell.forgetting_cell) fine-tunes the demo's pretrained model and measures
domain skill (dev/test instruction loss, judged test answers) and general
text (perplexity of the frozen general holdout). Seeds vary the data order
and the mix draws; the base is one (the demo's pretraining, world seed 0).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.sft_forgetting.cell, as gin imports it
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.sft_forgetting import cell as cell_lib  # noqa: E402

LR = "forgetting_cell.learning_rate"
MIX = "forgetting_cell.general_share"
LRS = (1e-3, 1e-2)      # the demo's SFT lr; 10x (chosen a priori, README)
MIXES = (0.0, 0.2)      # none; the demo's share

SWEEP = sweep.Sweep(
    arms=sweep.grid("", {LR: LRS, MIX: MIXES}, names={LR: "lr", MIX: "mix"}),
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="forgetting_cell.root",
    seed_params=("forgetting_cell.seed",),
    # one arm covers every code path (the lr replacement, the general mix,
    # the base and cell measurements); the suite is over its time budget
    tiny_arms=("lr0.01_mix0.2",),
)
BASE_ROOT_PARAM = "forgetting_cell.base_root"



# (label, key in a cell's metrics, digits, higher is better)
METRICS = (("dev loss", "dev_loss", 3, False),
           ("test loss", "test_loss", 3, False),
           ("test judge", "test/judge", 3, True),
           ("test accuracy", "test/accuracy", 3, True),
           ("test format", "test/format", 3, True),
           ("general ppl", "general_ppl", 1, False),
           ("general loss", "general_loss", 3, False))
# The effects' metrics (general loss = log general ppl: effects on it are
# log perplexity ratios).
EFFECT_METRICS = ("test loss", "dev loss", "test judge", "test accuracy",
                  "general loss")


def _arm(lr: float, mix: float) -> str:
  return sweep.grid("", {LR: [lr], MIX: [mix]},
                    names={LR: "lr", MIX: "mix"})[0].name


def _value(ev: Mapping[str, Any], key: str) -> float:
  return float(ev.get(key, math.nan))


def _effects(vals: Mapping[tuple[float, float], Sequence[float]]
             ) -> dict[str, list[float]]:
  """Per-seed contrasts of the 2x2 (lo/hi learning rate x no/with mix):
  main effects (averaged over the other factor), simple effects and the
  interaction (the mix's effect at the high lr minus at the low lr)."""
  lo, hi = LRS
  m0, m1 = MIXES
  a, b, c, d = (vals[(lo, m0)], vals[(lo, m1)], vals[(hi, m0)],
                vals[(hi, m1)])
  n = min(len(x) for x in (a, b, c, d))
  rng = range(n)
  return {
      f"lr {hi:g} − {lo:g} (main)": [((c[i] - a[i]) + (d[i] - b[i])) / 2
                                     for i in rng],
      f"mix {m1:g} − {m0:g} (main)": [((b[i] - a[i]) + (d[i] - c[i])) / 2
                                      for i in rng],
      f"mix effect at lr {lo:g}": [b[i] - a[i] for i in rng],
      f"mix effect at lr {hi:g}": [d[i] - c[i] for i in rng],
      f"lr effect at mix {m0:g}": [c[i] - a[i] for i in rng],
      f"lr effect at mix {m1:g}": [d[i] - b[i] for i in rng],
      "interaction (lr × mix)": [(d[i] - c[i]) - (b[i] - a[i]) for i in rng],
  }


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  evals = {(c.arm.name, c.seed): c.json(cell_lib.CELL_EVAL) for c in cells}
  missing = [k for k, v in evals.items() if v is None]
  if missing:
    raise FileNotFoundError(f"cells without {cell_lib.CELL_EVAL}: {missing}")
  arms = [a for a in SWEEP.arms if any(c.arm.name == a.name for c in cells)]
  seeds = sorted({c.seed for c in cells})
  first = next(iter(evals.values()))
  base = first["base"]
  dj = first["disjointness"]
  md = ["# SFT forgetting, unconfounded: learning rate × general-mix share"
        + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      f"Each cell: SFT of the demo's pretrained model for "
      f"{first['final_step']} steps on the world's train instructions at "
      f"one learning rate and one general-mix share; measured on the full "
      f"dev split (validation instructions, loss), the test split (loss; "
      f"judged greedy answers to {base['test_prompts']} test prompts) and "
      f"the frozen general holdout ({dj['holdout_pages']} pages, "
      f"perplexity). Seeds {seeds} (data order and mix draws): mean ± sd "
      f"over seeds.")
  md.append("")
  md.append(f"General holdout vs the text SFT mixes in ({dj['mix_documents']}"
            f" curated web documents): {dj['verbatim_pages']} pages "
            f"verbatim, {dj['pages_sharing_13gram']} sharing a word 13-gram,"
            f" {dj['pages_sharing_8gram']} sharing an 8-gram.\n")
  cols = ["arm", "lr", "mix", "seeds"] + [m[0] for m in METRICS] + [
      "general ppl / base"]
  rows = [{"arm": "base (pretrained)", "lr": "—", "mix": "—", "seeds": "—",
           **{label: f"{_value(base, key):.{dg}f}"
              for label, key, dg, _ in METRICS},
           "general ppl / base": "1"}]
  by_arm: dict[str, list[dict[str, Any]]] = {}
  for arm in arms:
    evs = [evals[(arm.name, s)] for s in seeds if (arm.name, s) in evals]
    by_arm[arm.name] = evs
    row = {"arm": arm.name, "lr": f"{arm.labels['lr']:g}",
           "mix": f"{arm.labels['mix']:g}", "seeds": len(evs)}
    for label, key, dg, _ in METRICS:
      row[label] = sweep.fmt_mean_sd([_value(e["cell"], key) for e in evs],
                                     dg)
    row["general ppl / base"] = sweep.fmt_mean_sd(
        [e["cell"]["general_ppl"] / base["general_ppl"] for e in evs], 2)
    rows.append(row)
  md.append(sweep.write_table(rows, cols))

  md.append("Domain gain and general loss of each arm against the base "
            "(per seed; paired t-test over seeds, cell − base):\n")
  gains = []
  for arm in arms:
    evs = by_arm[arm.name]
    for label, key in (("test loss", "test_loss"),
                       ("test judge", "test/judge"),
                       ("general loss", "general_loss")):
      t = sweep.paired_t([_value(e["cell"], key) for e in evs],
                         [_value(base, key) for _ in evs])
      gains.append({"arm": arm.name, "metric": label,
                    "cell − base": f"{t['mean_diff']:+.3f}",
                    "95% CI": f"[{t['ci_lo']:+.3f}, {t['ci_hi']:+.3f}]",
                    "p": t["p"], "seeds": len(evs)})
  md.append(sweep.write_table(gains, ["arm", "metric", "cell − base",
                                      "95% CI", "p", "seeds"]))

  # seeds with all four cells: the 2x2 contrasts are paired within a seed
  complete = [s for s in seeds
              if all((a.name, s) in evals for a in SWEEP.arms)]
  effect_rows = []
  if complete:
    md.append(f"Effects of the 2×2 on the seeds with all four cells "
              f"({complete}), per seed then paired over seeds (a "
              "one-sample t-test of the per-seed contrast; general loss is "
              "log perplexity, so its effects are log perplexity ratios; "
              "interaction = the mix's effect at the high lr minus at the "
              "low lr):\n")
    for label in EFFECT_METRICS:
      key = next(k for lb, k, _, _ in METRICS if lb == label)
      vals = {}
      for arm in SWEEP.arms:
        vals[(arm.labels["lr"], arm.labels["mix"])] = [
            _value(evals[(arm.name, s)]["cell"], key) for s in complete]
      for name, per_seed in _effects(vals).items():
        t = sweep.paired_t(per_seed, [0.0] * len(per_seed))
        effect_rows.append({
            "metric": label, "contrast": name,
            "effect": f"{t['mean_diff']:+.3f}",
            "95% CI": f"[{t['ci_lo']:+.3f}, {t['ci_hi']:+.3f}]",
            "p": t["p"], "per seed": ", ".join(f"{v:+.3f}"
                                               for v in per_seed)})
    md.append(sweep.write_table(effect_rows, ["metric", "contrast", "effect",
                                              "95% CI", "p", "per seed"]))
  else:
    md.append(f"(Effects need a seed with all four arms; this run has "
              f"{[a.name for a in arms]}.)\n")

  base_rows = _answers(cells[0], cell_lib.BASE_ANSWERS, up=2)
  s0 = seeds[0]
  if base_rows:
    md.append(f"Per prompt, seed {s0}: each arm's judged test answers vs "
              f"the base's on the same {len(base_rows)} prompts (sign test, "
              f"95% bootstrap CI of the mean judge gain):\n")
    pp = []
    for arm in arms:
      c = next(c for c in cells if c.arm.name == arm.name and c.seed == s0)
      rows_c = _answers(c, cell_lib.ANSWERS)
      st = paired_stats([r["judge"] for r in rows_c],
                        [r["judge"] for r in base_rows])
      pp.append({"arm": arm.name, "wins": int(st["wins"]),
                 "losses": int(st["losses"]), "ties": int(st["ties"]),
                 "mean judge gain": f"{st['judge_gain_vs_ref']:+.3f}",
                 "95% CI": f"[{st['judge_gain_ci_lo']:+.3f}, "
                           f"{st['judge_gain_ci_hi']:+.3f}]",
                 "sign-test p": st["sign_test_p"]})
    md.append(sweep.write_table(pp, ["arm", "wins", "losses", "ties",
                                     "mean judge gain", "95% CI",
                                     "sign-test p"]))

  md.append("Per cell (wall time under the shared machine's load):\n")
  pc = []
  for arm in arms:
    for s in seeds:
      if (arm.name, s) not in evals:
        continue
      e = evals[(arm.name, s)]["cell"]
      c = next(c for c in cells if c.arm.name == arm.name and c.seed == s)
      pc.append({"arm": arm.name, "seed": s,
                 "dev loss": f"{e['dev_loss']:.3f}",
                 "test loss": f"{e['test_loss']:.3f}",
                 "test judge": f"{_value(e, 'test/judge'):.3f}",
                 "general ppl": f"{e['general_ppl']:.1f}",
                 "wall s": f"{c.record.get('wall_s', math.nan):.0f}"})
  md.append(sweep.write_table(pc, list(pc[0])))
  _plot(arms, by_arm, base, os.path.join(out_dir, "forgetting.png"))
  md.append("![domain skill vs general text](forgetting.png)\n")
  return "\n".join(md)


def _answers(cell: sweep.Cell, name: str, up: int = 0
             ) -> list[dict[str, Any]]:
  d = cell.run_dir
  for _ in range(up):
    d = os.path.dirname(d)
  return sweep.Cell(cell.arm, cell.seed, d, {}).jsonl(name)


def _plot(arms: Sequence[sweep.Arm],
          by_arm: Mapping[str, Sequence[Mapping[str, Any]]],
          base: Mapping[str, float], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 3, figsize=(15, 4.3))
  for i, arm in enumerate(arms):
    evs = by_arm[arm.name]
    gp = [e["cell"]["general_ppl"] for e in evs]
    tl = [e["cell"]["test_loss"] for e in evs]
    ax[0].scatter(gp, tl, color=f"C{i}", label=arm.name, s=30)
  ax[0].scatter([base["general_ppl"]], [base["test_loss"]], marker="*",
                s=200, color="k", label="base (pretrained)")
  ax[0].set(xscale="log", yscale="log", xlabel="general holdout perplexity "
            "(lower = kept)", ylabel="test instruction loss (lower = "
            "learned)", title="each cell (dots: seeds) and the base")
  ax[0].legend(fontsize=8)
  for j, (key, title, log) in enumerate((
      ("general_ppl", "general holdout perplexity (base dashed)", True),
      ("test_loss", f"test instruction loss (base {base['test_loss']:.2f}, "
                    "off the plot)", False))):
    a = ax[j + 1]
    for k, lr in enumerate(LRS):
      xs, ms, sds = [], [], []
      for mix in MIXES:
        evs = by_arm.get(_arm(lr, mix))
        if not evs:
          continue
        m, s = sweep.mean_sd([e["cell"][key] for e in evs])
        xs.append(mix)
        ms.append(m)
        sds.append(s)
        a.plot([mix] * len(evs), [e["cell"][key] for e in evs], ".",
               color=f"C{k}", alpha=0.5)
      a.errorbar(xs, ms, yerr=sds, marker="o", color=f"C{k}", capsize=4,
                 label=f"lr {lr:g}")
    if log:
      a.axhline(base[key], color="k", ls="--", lw=1)
    a.set(xlabel="general-mix share", xticks=list(MIXES), title=title)
    if log:
      a.set_yscale("log")
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
