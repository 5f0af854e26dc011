"""Template mismatch (issue 19, row 9; seeds 000 3.3 "Chat templates": "if
training used <|user|>...<|assistant|> but serving uses User:...Assistant:,
the actor misses cues"; "check template parity first").

Arms: one per prompt variant (cell.VARIANTS): the trained template, two
other templates, and four one-bug versions of the trained template. Every
cell serves the same model (the demo's SFT run) with the same decoding;
only the prompt ids differ (an inference-only variant, so the cell is a
gin-configured evaluation entry, cell.template_mismatch_cell, rather than
a training run). Seeds are sampling seeds (temperature 0.7); the seed-0
cell of each variant also decodes greedily, the lifecycle's protocol, which
the per-prompt paired statistics use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.template_mismatch.cell, as gin does
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.template_mismatch import cell as cell_lib  # noqa: E402

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(v, gin_params=(f"template_mismatch_cell.variant = '{v}'",),
                    labels={"bug": bug})
          for v, bug in cell_lib.VARIANTS.items()],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="template_mismatch_cell.root",
    seed_params=("template_mismatch_cell.seed",),
)
# The binding of the base's lifecycle root: the test suite points every
# experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "template_mismatch_cell.base_root"
REF = "own"
METRICS = (("accuracy", "accuracy"), ("judge", "judge"), ("format", "format"),
           ("stop rate", "stop_rate"))


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by = {(c.arm.name, c.seed): c for c in cells}
  res = {k: c.json(cell_lib.RESULT) for k, c in by.items()}
  variants = [a.name for a in SWEEP.arms if any(k[0] == a.name for k in by)]
  seeds = sorted({s for _, s in by})
  # the cell of each variant that also decoded greedily (seed greedy_seed)
  greedy_cells = {v: by[(v, s)] for v in variants for s in seeds
                  if "greedy" in res[(v, s)]["decodes"]}
  greedy = {v: res[(c.arm.name, c.seed)] for v, c in greedy_cells.items()}
  answers = {v: c.jsonl("answers_greedy.jsonl")
             for v, c in greedy_cells.items()}
  sampled_key = next(k for k in res[(variants[0], seeds[0])]["decodes"]
                     if k.startswith("sampled"))
  first = res[(variants[0], seeds[0])]
  n = first["test_records"]
  md = [f"# Template mismatch: one SFT model, its test prompts rendered "
        f"{len(variants)} ways" + (" (tiny scale)" if tiny else ""), "",
        f"The demo's SFT model (trained with the lifejax template), {n} test "
        f"prompts, {first['max_new_tokens']} new tokens, stops = the trained "
        "end-of-turn and EOS for "
        "every variant. Checker = lifejax.data.chat_parity on the exact ids "
        "(and tools/check_template.py, exit 1 = findings).", ""]
  md.append("## Greedy decoding (per-prompt paired vs `own`: sign test, "
            "95% bootstrap CI)\n")
  rows = []
  for v in greedy:
    g = greedy[v]
    m = g["decodes"]["greedy"]
    row = {"variant": v,
           "checker findings": ", ".join(f"{k} ×{c}" for k, c in
                                         sorted(g["findings"].items()))
           or "none",
           "flagged": f"{g['prompts_flagged']}/{n}",
           "CLI exit": g["cli_exit"],
           **{label: _pct(m[key]) if key != "judge" else f"{m[key]:.3f}"
              for label, key in METRICS}}
    if v != REF and REF in answers:
      for key, label in (("judge", "judge Δ"), ("correct", "accuracy Δ")):
        st = paired_stats([r[key] for r in answers[v]],
                          [r[key] for r in answers[REF]])
        row[label] = (f"{st['judge_gain_vs_ref']:+.3f} "
                      f"[{st['judge_gain_ci_lo']:+.3f}, "
                      f"{st['judge_gain_ci_hi']:+.3f}]")
        if key == "judge":
          row["W/L/T"] = (f"{int(st['wins'])}/{int(st['losses'])}/"
                          f"{int(st['ties'])}")
          row["sign p"] = f"{st['sign_test_p']:.2g}"
    rows.append(row)
  md.append(sweep.write_table(rows, ["variant", "checker findings", "flagged",
                                     "CLI exit", "accuracy", "judge",
                                     "format", "stop rate", "judge Δ",
                                     "W/L/T", "sign p", "accuracy Δ"]))
  temp = sampled_key.split("_t")[-1]
  md.append(f"## Sampled at temperature {temp} (seeds {seeds}: "
            "mean ± sd; paired t-test vs `own` over seeds)\n")
  srows = []
  for v in variants:
    vals = {key: [res[(v, s)]["decodes"][sampled_key][key] for s in seeds]
            for _, key in METRICS}
    row = {"variant": v, **{label: sweep.fmt_mean_sd(vals[key])
                            for label, key in METRICS}}
    if v != REF:
      for label, key in METRICS[:2]:
        ref = [res[(REF, s)]["decodes"][sampled_key][key] for s in seeds]
        t = sweep.paired_t(vals[key], ref)
        row[f"{label} Δ (p)"] = f"{t['mean_diff']:+.3f} ({t['p']:.2g})"
    srows.append(row)
  md.append(sweep.write_table(srows, ["variant"] + [m[0] for m in METRICS]
                              + ["accuracy Δ (p)", "judge Δ (p)"]))
  md.append("Variants: " + "; ".join(
      f"`{v}`: {cell_lib.VARIANTS[v] or 'the trained template'}"
      for v in variants) + ".\n")
  _plot(variants, greedy, res, seeds, sampled_key,
        os.path.join(out_dir, "template_mismatch.png"))
  md.append("![scores per variant](template_mismatch.png)\n")
  return "\n".join(md)


def _plot(variants, greedy, res, seeds, sampled_key, path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
  x = np.arange(len(variants))
  for k, (label, key) in enumerate(METRICS[:3]):
    g = [greedy[v]["decodes"]["greedy"][key] if v in greedy else np.nan
         for v in variants]
    ax[0].bar(x + (k - 1) * 0.27, g, 0.27, label=label, color=f"C{k}")
    vals = np.array([[res[(v, s)]["decodes"][sampled_key][key]
                      for s in seeds] for v in variants])
    ax[1].bar(x + (k - 1) * 0.27, vals.mean(1), 0.27, color=f"C{k}",
              yerr=vals.std(1, ddof=1) if len(seeds) > 1 else None,
              capsize=2, label=label)
  for a, title in ((ax[0], "greedy"),
                   (ax[1], f"sampled at temperature "
                           f"{sampled_key.split('_t')[-1]}, mean ± sd over "
                           f"{len(seeds)} seeds")):
    a.set_xticks(x, [v + ("" if v == REF or not greedy.get(v, {}).get(
        "findings") else "\n(flagged)") for v in variants], rotation=30,
                 ha="right", fontsize=8)
    a.set_title(title)
    a.set_ylim(0, 1)
  ax[0].set_ylabel("share / judge score")
  ax[0].legend(fontsize=8)
  fig.suptitle("The same SFT model, test prompts rendered by each variant")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
