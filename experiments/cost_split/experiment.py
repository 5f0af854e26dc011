"""The cost split (issue 19, row 16; seeds 002 "Cost Breakdown": pretraining
~98% of compute, SFT ~1%, RLHF ~1%).

One cell: the training FLOPs (cost.py) and wall seconds of every stage of
`make demo`'s lifecycle run, set against the same counting applied to a
real recipe (Llama 2 70B) and to that recipe's post-training on the
Chinchilla-optimal model of GPT-3's pretraining budget. FLOPs are counted,
not sampled, so one run decides them; wall seconds are one run's on this
machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.cost_split.cell, as gin imports it
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402

from experiments.cost_split import cell as cell_lib  # noqa: E402

PLOT = "cost_split.png"
GROUPS = ("pretrain", "sft", "reward", "dpo", "ppo", "release")

SWEEP = sweep.Sweep(
    arms=[sweep.Arm("demo", labels={"root": "make demo"})],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0,),
    root_param="cost_split_cell.root",
)
# The test suite points this at the shared tiny lifecycle base.
BASE_ROOT_PARAM = "cost_split_cell.base_root"


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.2g}%"


def _plot(stages: Sequence[dict], real: Sequence[dict], explained: dict,
          path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  wall = sum(s["seconds"] for s in stages) or 1.0
  fl = sum(s["total"] for s in stages) or 1.0
  bars = [("demo: training FLOPs", {s["name"]: s["total"] / fl
                                    for s in stages})]
  if not any(s["status"] == "skipped" for s in stages):
    bars.insert(0, ("demo: wall seconds", {s["name"]: s["seconds"] / wall
                                           for s in stages}))
  share = explained.get("pretrain_share_at_20_tokens_per_param")
  if share is not None:
    rest = sum(s["total"] for s in stages if s["name"] != "pretrain") or 1.0
    bars.append(("demo, pretraining at 20 tokens/param: FLOPs", {
        s["name"]: share if s["name"] == "pretrain" else
        (1 - share) * s["total"] / rest for s in stages}))
  for r in real:
    bars.append((f"{r['recipe']}: FLOPs", r["shares"]))
  fig, ax = plt.subplots(figsize=(10, 1.2 + 0.7 * len(bars)))
  colors = dict(zip(GROUPS, ("#4c72b0", "#dd8452", "#55a868", "#c44e52",
                             "#8172b3", "#937860")))
  for i, (label, sh) in enumerate(bars[::-1]):
    left = 0.0
    for name in GROUPS:
      v = sh.get(name, 0.0)
      if v <= 0:
        continue
      ax.barh(i, v, left=left, color=colors[name],
              label=name if i == len(bars) - 1 else None)
      if v > 0.06:
        ax.text(left + v / 2, i, f"{100 * v:.0f}%" if v < 0.99 else
                f"{100 * v:.1f}%", ha="center",
                va="center", color="white", fontsize=8)
      left += v
  ax.set_yticks(range(len(bars)), [b[0] for b in bars[::-1]], fontsize=8)
  ax.set_xlim(0, 1)
  ax.set_xlabel("share of the lifecycle")
  ax.legend(ncol=len(GROUPS), fontsize=7, loc="upper center",
            bbox_to_anchor=(0.5, 1.25))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  c = next(x for x in cells if x.arm.name == "demo")
  data = c.json(cell_lib.COST_FILE)
  stages = data["stages"]
  from experiments.cost_split import cost  # pylint: disable=g-import-not-at-top
  rows = cost.as_table([cost.StageCost(**{
      k: v for k, v in s.items() if k != "total"}) for s in stages])
  md = ["# The cost split: training FLOPs and wall time per stage"
        + (" (tiny scale: the numbers mean nothing)" if tiny else ""), ""]
  md.append(f"Arm `{c.arm.name}`: lifecycle root "
            f"`{os.path.basename(data['lifecycle_root'])}`; "
            "FLOPs are model FLOPs of the training work each stage did "
            "(cost.py: 6 N per trained token plus causal attention, 2 N per "
            "frozen or sampled token); wall seconds are the ledger's and "
            "include each stage's evaluation.")
  md.append("")
  md.append(sweep.write_table(rows, list(rows[0])))
  if not cost.wall_known([cost.StageCost(**{
      k: v for k, v in s.items() if k != "total"}) for s in stages]):
    md.append("A stage was skipped on a rerun of this root (its time was "
              "spent by an earlier run the ledger no longer holds), so "
              "there is no wall-time split here.\n")
  ex = data["explained"]
  if ex:
    md.append(
        f"Pretraining saw {ex.get('pretrain_tokens', 0):,.0f} tokens: "
        f"{ex.get('pretrain_tokens_per_param', 0):.3f} per matmul "
        "parameter (Chinchilla's compute-optimal ~20). The stages after it "
        f"trained on {ex.get('post_over_pretrain_tokens', 0):.2f}x "
        "pretraining's tokens. Pretraining the same model at 20 tokens per "
        "matmul parameter "
        f"({ex.get('pretrain_scale_to_20_tokens_per_param', 0):.0f}x the "
        "tokens) would make it "
        f"{_pct(ex.get('pretrain_share_at_20_tokens_per_param', 0))} of "
        "the lifecycle's training FLOPs.")
    md.append("")
  md.append("The same counting on real recipes (README.md states the "
            "sources and assumptions):\n")
  real = data["real_scale"]
  table = []
  for r in real:
    row = {"recipe": r["recipe"], "N": f"{r['params']:.3g}",
           "pretrain tokens": f"{r['pretrain_tokens']:.3g}"}
    for k, v in r["flops"].items():
      row[k] = f"{v:.2e} ({_pct(r['shares'][k])})"
    table.append(row)
  md.append(sweep.write_table(table, list(table[0])))
  _plot(stages, real, ex, os.path.join(out_dir, PLOT))
  md.append(f"![cost split]({PLOT})")
  return "\n".join(md) + "\n"
