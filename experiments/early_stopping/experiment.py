"""Early stopping (issue 19, row 4; seeds 000 row 7 "narrow SFT overwrites
broad skills: ... early stopping" and 5.5 "stop near peak validation").

Arms (each cell: cell.early_stopping_cell, one SFT run + its test split):
  overfit     the small-set SFT run trained to the end, keep-best on dev
              loss; its last and best checkpoints are both measured on test
  early_stop  the same run with patience-based early stopping
              (sft/LoopConfig.early_stop_patience); it reports where it
              stopped and whether its best checkpoint is the overfit run's
Seeds vary the small training set (drawn per task) and the data order; the
pretrained base is one (the demo's pretraining, world seed 0).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.early_stopping.cell, as gin imports it
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.early_stopping import cell as cell_lib  # noqa: E402

PATIENCE = 2
DEV = "eval/sft_validation/loss"
GENERAL = "eval/general_general_holdout/perplexity"

SWEEP = sweep.Sweep(
    arms=[
        sweep.Arm("overfit", labels={"patience": 0}),
        sweep.Arm("early_stop", gin_params=(
            f"sft/LoopConfig.early_stop_patience = {PATIENCE}",
            "early_stopping_cell.evaluate = ()"),
                  labels={"patience": PATIENCE}),
    ],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="early_stopping_cell.root",
    seed_params=("early_stopping_cell.seed",),
)
# The binding of the base's lifecycle root: the test suite points every
# experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "early_stopping_cell.base_root"

# (label, key in a checkpoint's test metrics, higher is better)
TEST_METRICS = (("test loss", "test_loss", False),
                ("test accuracy", "test/accuracy", True),
                ("test judge", "test/judge", True),
                ("test format", "test/format", True))


def _evals(cell: sweep.Cell) -> dict[int, dict[str, float]]:
  """step -> eval metrics of the cell's SFT run."""
  return {int(r["step"]): r for r in cell.jsonl(cell_lib.SFT_DIR,
                                                "metrics.jsonl")
          if DEV in r}


def _tokens_per_step(cell: sweep.Cell) -> float:
  rows = [r["weight"] for r in cell.jsonl(cell_lib.SFT_DIR, "metrics.jsonl")
          if "weight" in r and DEV not in r]
  return sum(rows) / len(rows) if rows else math.nan


def _per_seed(overfit: sweep.Cell, stop: sweep.Cell | None
              ) -> dict[str, Any]:
  te = overfit.json(cell_lib.TEST_EVAL)
  ev = _evals(overfit)
  epochs = _tokens_per_step(overfit) / te["train_assistant_tokens"]
  row: dict[str, Any] = {"seed": overfit.seed, "te": te, "evals": ev,
                         "epochs_per_step": epochs}
  for which in cell_lib.CHECKPOINTS:
    step = te["steps"][which]
    row[which] = {"step": step, "epochs": step * epochs,
                  "dev loss": ev[step][DEV],
                  "general ppl": ev[step].get(GENERAL, math.nan),
                  **{label: te["checkpoints"][which][key]
                     for label, key, _ in TEST_METRICS}}
  if stop is not None:
    st = stop.json(cell_lib.TEST_EVAL)
    row["stop"] = {
        "final_step": st["final_step"], "stopped_early": st["stopped_early"],
        "best_step": st["steps"]["best"],
        "same_best": (st["checkpoints"]["best"]["params_sha256"]
                      == te["checkpoints"]["best"]["params_sha256"]),
        "num_steps": te["final_step"]}
  return row


def _answers(cell: sweep.Cell, which: str) -> list[dict[str, Any]]:
  return cell.jsonl(f"test_answers_{which}.jsonl")


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by = {(c.arm.name, c.seed): c for c in cells}
  seeds = sorted({c.seed for c in cells if c.arm.name == "overfit"})
  rows = [_per_seed(by[("overfit", s)], by.get(("early_stop", s)))
          for s in seeds]
  md = ["# Early stopping: best-on-dev vs last checkpoint of an overfitting "
        "SFT run" + (" (tiny scale)" if tiny else ""), ""]
  te0 = rows[0]["te"]
  md.append(f"SFT from the demo's pretrained model on {te0['train_records']} "
            f"conversations ({te0['train_assistant_tokens']} assistant "
            f"tokens) for {te0['final_step']} steps; dev = the validation "
            f"instructions (loss), test = {te0['test_records']} test "
            f"prompts. Seeds {seeds}: mean ± sd over seeds.")
  md.append("")
  cols = ["checkpoint", "step", "epochs", "dev loss", "general ppl"] + [
      m[0] for m in TEST_METRICS]
  table = []
  for which, name in (("last", "overfit (last)"),
                      ("best", "overfit best-on-dev (keep-best)")):
    t = {"checkpoint": name}
    for col in cols[1:]:
      t[col] = sweep.fmt_mean_sd([r[which][col] for r in rows],
                                 0 if col == "step" else 3)
    table.append(t)
  md.append(sweep.write_table(table, cols))
  md.append("Paired over seeds (best − last; paired t-test):\n")
  paired = []
  for label in ["dev loss", "general ppl"] + [m[0] for m in TEST_METRICS]:
    a = [r["best"][label] for r in rows]
    b = [r["last"][label] for r in rows]
    t = sweep.paired_t(a, b)
    paired.append({"metric": label, "best − last": f"{t['mean_diff']:+.4f}",
                   "95% CI": f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                   "p": t["p"], "seeds": len(a)})
  md.append(sweep.write_table(paired,
                              ["metric", "best − last", "95% CI", "p",
                               "seeds"]))
  s0 = seeds[0]
  best, last = (_answers(by[("overfit", s0)], w) for w in ("best", "last"))
  md.append(f"Per prompt, seed {s0} (best vs last on the same "
            f"{len(best)} test prompts; sign test, 95% bootstrap CI):\n")
  pp = []
  for key in ("judge", "correct", "format"):
    st = paired_stats([r[key] for r in best], [r[key] for r in last])
    pp.append({"score": key, "best wins": int(st["wins"]),
               "last wins": int(st["losses"]), "ties": int(st["ties"]),
               "mean gain": f"{st['judge_gain_vs_ref']:+.4f}",
               "95% CI": f"[{st['judge_gain_ci_lo']:+.4f}, "
                         f"{st['judge_gain_ci_hi']:+.4f}]",
               "sign-test p": st["sign_test_p"]})
  md.append(sweep.write_table(pp, ["score", "best wins", "last wins", "ties",
                                   "mean gain", "95% CI", "sign-test p"]))
  md.append("Per seed:\n")
  ps = []
  for r in rows:
    ps.append({"seed": r["seed"], "best step": r["best"]["step"],
               "last step": r["last"]["step"],
               **{f"{label} best/last": f"{r['best'][label]:.3f} / "
                                        f"{r['last'][label]:.3f}"
                  for label in ("dev loss", "test loss", "test judge",
                                "test accuracy")}})
  md.append(sweep.write_table(ps, list(ps[0])))
  stops = [r for r in rows if "stop" in r]
  if stops:
    md.append(f"early_stop arm (patience {PATIENCE} evals on dev loss):\n")
    es = [{"seed": r["seed"], "stopped at": r["stop"]["final_step"],
           "of": r["stop"]["num_steps"],
           "steps saved": f"{1 - r['stop']['final_step'] / r['stop']['num_steps']:.0%}",
           "its best step": r["stop"]["best_step"],
           "best = overfit's best (params sha256)": r["stop"]["same_best"]}
          for r in stops]
    md.append(sweep.write_table(es, list(es[0])))
  _plot(rows, os.path.join(out_dir, "early_stopping.png"))
  md.append("![dev loss, forgetting and test scores]"
            "(early_stopping.png)\n")
  return "\n".join(md)


def _plot(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
  for i, r in enumerate(rows):
    color = f"C{i}"
    steps = sorted(r["evals"])
    ep = r["epochs_per_step"]
    x = [s * ep for s in steps]
    ax[0].plot(x, [r["evals"][s][DEV] for s in steps], color=color,
               label=f"seed {r['seed']} dev loss")
    for which, marker in (("best", "*"), ("last", "o")):
      ax[0].plot(r[which]["epochs"], r[which]["test loss"], marker,
                 color=color, ms=11 if marker == "*" else 6,
                 markeredgecolor="k")
    if "stop" in r:
      ax[0].axvline(r["stop"]["final_step"] * ep, color=color, ls=":",
                    lw=1)
    ax[1].plot(x, [r["evals"][s].get(GENERAL, math.nan) for s in steps],
               color=color, label=f"seed {r['seed']}")
  lows = [min(r["evals"][s][DEV] for s in r["evals"]) for r in rows]
  tops = [r[w]["test loss"] for r in rows for w in ("best", "last")]
  lo = min(lows + tops)
  ax[0].set_ylim(lo - 0.05, max(tops + [1.5 * lo]) + 0.05)
  ax[0].set(xlabel="epochs of the small training set", ylabel="loss",
            title="dev loss (lines; the base's step-0 loss is off the top);\n"
                  "test loss at best ★ / last ●; early stop (dotted)")
  ax[0].legend(fontsize=8)
  ax[1].set(xlabel="epochs", ylabel="perplexity", yscale="log",
            title="general holdout (broad skill) perplexity")
  labels = ["test judge", "test accuracy", "test format"]
  for k, label in enumerate(labels):
    for j, which in enumerate(("last", "best")):
      vals = [r[which][label] for r in rows]
      ax[2].bar(k * 3 + j, sum(vals) / len(vals), color=f"C{j + 3}",
                label=which if k == 0 else None)
      ax[2].plot([k * 3 + j] * len(vals), vals, "k.", ms=5)
    for r in rows:
      ax[2].plot([k * 3, k * 3 + 1], [r["last"][label], r["best"][label]],
                 "k-", lw=0.6, alpha=0.6)
  ax[2].set_xticks([k * 3 + 0.5 for k in range(len(labels))], labels)
  ax[2].set(ylim=(0, 1), title="test split: last vs best-on-dev\n"
                               "(bars: mean, dots/lines: seeds)")
  ax[2].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
