"""SFT quality vs quantity (issue 19, row 8; seeds 000/001: "a few thousand
high-quality demonstrations beat many noisy ones", LIMA).

A 2x2 of demonstration quality x quantity (each cell: cell.sft_qq_cell, one
SFT run from the demo's pretrained model + its test split):
  clean_few   20 per task (100), flawed demonstrations filtered out
  clean_many  100 per task (500), flawed ones filtered out
  noisy_few   20 per task (100), 40% of each task's flawed
  noisy_many  100 per task (500), 40% of each task's flawed
Every arm: the same optimizer steps, learning rate and schedule (the demo's
SFT recipe, fewer steps). Seeds vary the draw from the pool (nested across
arms within a seed) and the data order; the pretrained base is one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.sft_quality_quantity.cell
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.sft_quality_quantity import cell as cell_lib  # noqa: E402

ARMS = ("clean_few", "noisy_many", "clean_many", "noisy_few")

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(name, gin_params=(
        f"sft_qq_cell.quality = '{name.split('_')[0]}'",
        f"sft_qq_cell.quantity = '{name.split('_')[1]}'"),
                    labels={"quality": name.split("_")[0],
                            "quantity": name.split("_")[1]})
          for name in ARMS],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="sft_qq_cell.root",
    seed_params=("sft_qq_cell.seed",),
    # the claim's two arms: both qualities, both quantities
    tiny_arms=("clean_few", "noisy_many"),
)
# The binding of the base's lifecycle root: the test suite points every
# experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "sft_qq_cell.base_root"


DEV = "eval/sft_validation/loss"
FLAWS = ("verbose", "wrong_format", "wrong_fact", "unsafe_compliance",
         "rude", "vague")
# (label, key in test_eval.json, digits)
METRICS = (("learnable acc", "test/accuracy_learnable", 3),
           ("refusal", "test/refusal", 3),
           ("format", "test/format", 3),
           ("judge", "test/judge", 3),
           ("accuracy (all)", "test/accuracy", 3),
           ("test loss", "test_loss", 3),
           ("dev loss", DEV, 3))
# (a, b): a − b, what it isolates
CONTRASTS = (("clean_few", "noisy_many", "the claim: few clean vs many noisy"),
             ("clean_few", "noisy_few", "quality, at few"),
             ("clean_many", "noisy_many", "quality, at many"),
             ("clean_many", "clean_few", "quantity, clean"),
             ("noisy_many", "noisy_few", "quantity, noisy"))
# per-prompt scores of test_answers.jsonl: (label, key, tasks or None: all)
PROMPT_SCORES = (("judge", "judge", None),
                 ("correct (learnable)", "correct", ("fact_qa", "refuse_pii")),
                 ("format", "format", None))


def _tokens_per_step(cell: sweep.Cell) -> float:
  rows = [r["weight"] for r in cell.jsonl(cell_lib.SFT_DIR, "metrics.jsonl")
          if "weight" in r and DEV not in r]
  return sum(rows) / len(rows) if rows else float("nan")


def _row(cell: sweep.Cell) -> dict[str, Any]:
  te = cell.json(cell_lib.TEST_EVAL)
  vals = {label: (te["dev"].get(key, float("nan")) if key == DEV
                  else te.get(key, float("nan")))
          for label, key, _ in METRICS}
  vals.update({f"flaw/{k}": te.get(f"test/flaw/{k}", float("nan"))
               for k in FLAWS})
  return {"te": te, "vals": vals,
          "epochs": te["final_step"] * _tokens_per_step(cell)
                    / te["train_assistant_tokens"],
          "answers": cell.jsonl(cell_lib.ANSWERS)}


def _contrast_rows(by: Mapping[tuple[str, int], Mapping[str, Any]],
                   seeds: Sequence[int], keys: Sequence[str]
                   ) -> list[dict[str, Any]]:
  out = []
  for a, b, what in CONTRASTS:
    pair = [s for s in seeds if (a, s) in by and (b, s) in by]
    if not pair:
      continue
    for key in keys:
      t = sweep.paired_t([by[(a, s)]["vals"][key] for s in pair],
                         [by[(b, s)]["vals"][key] for s in pair])
      out.append({"contrast": f"{a} − {b}", "isolates": what,
                  "metric": key, "mean diff": f"{t['mean_diff']:+.4f}",
                  "95% CI": f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                  "p": t["p"], "seeds": len(pair)})
  return out


def _prompt_rows(by: Mapping[tuple[str, int], Mapping[str, Any]],
                 seeds: Sequence[int]) -> list[dict[str, Any]]:
  out = []
  for a, b, what in CONTRASTS:
    pair = [s for s in seeds if (a, s) in by and (b, s) in by]
    if not pair:
      continue
    for label, key, tasks in PROMPT_SCORES:
      xa, xb = [], []
      for s in pair:
        ra, rb = by[(a, s)]["answers"], by[(b, s)]["answers"]
        if [r["id"] for r in ra] != [r["id"] for r in rb]:
          raise ValueError(f"{a}/{b} seed {s}: different test prompts")
        keep = [i for i, r in enumerate(ra) if tasks is None
                or r["task"] in tasks]
        xa += [ra[i][key] for i in keep]
        xb += [rb[i][key] for i in keep]
      if not xa:
        continue
      st = paired_stats(xa, xb)
      out.append({"contrast": f"{a} − {b}", "score": label,
                  "pairs": len(xa), "a wins": int(st["wins"]),
                  "b wins": int(st["losses"]), "ties": int(st["ties"]),
                  "mean diff": f"{st['judge_gain_vs_ref']:+.4f}",
                  "95% CI": f"[{st['judge_gain_ci_lo']:+.4f}, "
                            f"{st['judge_gain_ci_hi']:+.4f}]",
                  "sign-test p": st["sign_test_p"]})
  return out


def _pct_pair(rs: Sequence[Mapping[str, Any]], kind: str) -> str:
  """'<demonstrations %> → <answers % mean ± sd>' of one flaw kind."""
  demo = [r["te"]["train_pool_flaws"].get(f"flaw/{kind}", 0.0) for r in rs]
  m, sd = sweep.mean_sd([r["vals"][f"flaw/{kind}"] for r in rs])
  return (f"{100 * sum(demo) / len(demo):.1f}% → {100 * m:.1f}%"
          + (f" ± {100 * sd:.1f}" if len(rs) > 1 else ""))


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by = {(c.arm.name, c.seed): _row(c) for c in cells}
  arms = [a for a in ARMS if any(k[0] == a for k in by)]
  seeds = sorted({s for _, s in by})
  te0 = next(iter(by.values()))["te"]
  md = ["# SFT quality vs quantity: few clean demonstrations vs many noisy "
        "ones" + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      f"SFT from the demo's pretrained model, {te0['final_step']} optimizer "
      f"steps in every arm (the demo's SFT learning rate and schedule), on "
      f"demonstrations drawn from the world's mixed-quality SFT pool; test "
      f"= {te0['test_records']} test prompts (greedy answers, the world's "
      f"judge), last checkpoint, nothing selected. Seeds {seeds}: mean ± sd "
      f"over seeds.")
  md.append("")
  setup = []
  for a in arms:
    rs = [by[(a, s)] for s in seeds if (a, s) in by]
    setup.append({
        "arm": a, "demos": rs[0]["te"]["train_records"],
        "flawed": sweep.fmt_mean_sd([r["te"]["train_flawed"] for r in rs], 0),
        "assistant tokens": sweep.fmt_mean_sd(
            [r["te"]["train_assistant_tokens"] for r in rs], 0),
        "epochs": sweep.fmt_mean_sd([r["epochs"] for r in rs], 2),
        "seeds": len(rs)})
  md.append("Training sets (flawed: demonstrations labelled with a flaw; "
            "epochs: passes over the set in the step budget):\n")
  md.append(sweep.write_table(setup, list(setup[0])))
  md.append("Test split (learnable acc: fact_qa + refuse_pii correct and "
            "safe; refusal: refuse_pii answered with a safe refusal; format, "
            "judge: all 5 tasks; test loss: assistant tokens of the clean "
            "test references; dev loss: the validation references at the "
            "last step):\n")
  table = []
  for a in arms:
    rs = [by[(a, s)] for s in seeds if (a, s) in by]
    table.append({"arm": a, **{label: sweep.fmt_mean_sd(
        [r["vals"][label] for r in rs], d) for label, _, d in METRICS}})
  md.append(sweep.write_table(table, ["arm"] + [m[0] for m in METRICS]))
  md.append("Flaw rates: in the training demonstrations (by the same "
            "detector, lifejax.eval.instruct.flaws) → in the model's test "
            "answers (unsafe_compliance over the PII requests, wrong_fact "
            "over the others):\n")
  flaws = []
  for a in arms:
    rs = [by[(a, s)] for s in seeds if (a, s) in by]
    flaws.append({"arm": a, **{k: _pct_pair(rs, k) for k in FLAWS}})
  md.append(sweep.write_table(flaws, ["arm", *FLAWS]))
  md.append("Paired over seeds (a − b, matched seeds; paired t-test):\n")
  md.append(sweep.write_table(
      _contrast_rows(by, seeds, ["learnable acc", "refusal", "format",
                                 "judge", "test loss"]),
      ["contrast", "isolates", "metric", "mean diff", "95% CI", "p",
       "seeds"]))
  md.append("Flaw rates in the answers, paired over seeds (a − b):\n")
  md.append(sweep.write_table(
      _contrast_rows(by, seeds, [f"flaw/{k}" for k in FLAWS]),
      ["contrast", "metric", "mean diff", "95% CI", "p", "seeds"]))
  md.append("Per prompt, pooled over seeds (the same test prompts answered "
            "by a and b; sign test, 95% bootstrap CI of the mean "
            "difference):\n")
  md.append(sweep.write_table(
      _prompt_rows(by, seeds),
      ["contrast", "score", "pairs", "a wins", "b wins", "ties",
       "mean diff", "95% CI", "sign-test p"]))
  ps = [{"arm": a, "seed": s,
         **{label: f"{by[(a, s)]['vals'][label]:.3f}"
            for label in ("learnable acc", "format", "judge", "test loss")},
         "flawed demos": by[(a, s)]["te"]["train_flawed"]}
        for s in seeds for a in arms if (a, s) in by]
  md.append("Per cell:\n")
  md.append(sweep.write_table(ps, list(ps[0])))
  _plot(by, arms, seeds, os.path.join(out_dir, "sft_quality_quantity.png"))
  md.append("![test scores and answer flaw rates per arm]"
            "(sft_quality_quantity.png)\n")
  return "\n".join(md)


def _plot(by: Mapping[tuple[str, int], Mapping[str, Any]],
          arms: Sequence[str], seeds: Sequence[int], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 3, figsize=(16, 4.4))
  w = 0.8 / len(arms)
  panels = ((ax[0], ("learnable acc", "refusal", "format", "judge"),
             "test split (bars: mean, dots: seeds)", (0, 1.05)),
            (ax[1], tuple(f"flaw/{k}" for k in FLAWS),
             "flaw rates in the test answers", (0, 1.05)),
            (ax[2], ("test loss", "dev loss"),
             "loss on the clean references", None))
  for axis, labels, title, ylim in panels:
    for j, a in enumerate(arms):
      for k, label in enumerate(labels):
        vals = [by[(a, s)]["vals"][label] for s in seeds if (a, s) in by]
        x = k + (j - (len(arms) - 1) / 2) * w
        axis.bar(x, sum(vals) / len(vals), w, color=f"C{j}",
                 label=a if k == 0 else None)
        axis.plot([x] * len(vals), vals, "k.", ms=4)
    axis.set_xticks(range(len(labels)),
                    [lab.replace("flaw/", "") for lab in labels],
                    rotation=20 if len(labels) > 4 else 0, fontsize=8)
    axis.set(title=title)
    if ylim:
      axis.set_ylim(*ylim)
  ax[1].legend(fontsize=8)  # the flaw panel's top is empty
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
