"""Reward hacking, complete (issue 19, row 11; seeds 000 §4.3 "KL divergence
is the seatbelt": too small a KL weight -> reward hacking, too large ->
almost no learning beyond SFT).

Arms (each cell: cell.reward_hacking_cell, one PPO run + its test split):
  beta<b>  PPO from the demo's SFT model against the demo's learned reward
           model with KL coefficient b (rh_ppo/PPOConfig.kl_coef), b in
           BETAS
Seeds vary the PPO run (prompt order, rollout sampling, critic head); the
SFT and reward models are one (the demo's, world seed 0).

The proxy is the reward model's normalized score of the rollouts (what PPO
maximizes, logged as `reward`); the true judge is the world's programmatic
judge of the same rollouts (`true_judge`, logged by every RL run), which
PPO never sees. Reward hacking = proxy up while the true judge goes down.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.ppo_reward_hacking.cell, for gin
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.ppo_reward_hacking import cell as cell_lib  # noqa: E402

BETAS = (0.0, 0.01, 0.05, 0.2, 1.0)
# Iterations averaged at each end of a run for the first -> last change.
WINDOW = 3
# (label, key in a PPO iteration's metrics row)
CURVES = (("proxy: RM score", "reward"), ("true judge", "true_judge"),
          ("KL to SFT (nats/answer)", "kl"),
          ("response tokens", "response_length"), ("stop rate", "stop_rate"))

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(f"beta{b:g}",
                    gin_params=(f"rh_ppo/PPOConfig.kl_coef = {b!r}",),
                    labels={"beta": b}) for b in BETAS],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="reward_hacking_cell.root",
    seed_params=("reward_hacking_cell.seed",),
    tiny_arms=("beta0.05",),  # one cell: every arm runs the same code
)
# The binding of the base's lifecycle root: the test suite points every
# experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "reward_hacking_cell.base_root"


def _per_cell(cell: sweep.Cell) -> dict[str, Any]:
  its = sweep.iteration_rows(
      cell, os.path.join(cell_lib.PPO_DIR, "metrics.jsonl"),
      ("true_judge", "reward"))
  out: dict[str, Any] = {"seed": cell.seed, "its": its,
                         "te": cell.json(cell_lib.TEST_EVAL),
                         "answers": cell.jsonl(cell_lib.TEST_ANSWERS),
                         "wall_s": cell.record.get("wall_s", math.nan),
                         **sweep.first_last(its, [k for _, k in CURVES],
                                            WINDOW)}
  return out


def _verdict(proxy: Mapping[str, float], judge: Mapping[str, float],
             kl_last: float) -> str:
  if math.isnan(proxy["p"]) or math.isnan(judge["p"]):
    return (f"{int(proxy['n'])} seed(s): no test over seeds (proxy "
            f"{proxy['mean_diff']:+.3f}, true judge {judge['mean_diff']:+.3f},"
            f" KL {kl_last:.2f})")
  up = proxy["mean_diff"] > 0 and proxy["p"] < 0.05
  down = judge["mean_diff"] < 0 and judge["p"] < 0.05
  if up and down:
    return "hacking: proxy up, true judge down"
  if up and judge["mean_diff"] >= 0:
    return "proxy up, true judge not down"
  if up:
    return "proxy up, true judge down but not significant"
  if kl_last < 0.5:
    return "no learning (proxy and KL flat)"
  return "proxy not up"


def _test_verdict(st: Mapping[str, Mapping[str, float]]) -> str:
  def sign(x: Mapping[str, float]) -> str:
    if x["judge_gain_ci_lo"] > 0:
      return "up"
    return "down" if x["judge_gain_ci_hi"] < 0 else "flat"
  rm, judge = sign(st["rm"]), sign(st["judge"])
  if rm == "up" and judge == "down":
    return "hacking: RM up, true judge down"
  return f"RM {rm}, true judge {judge}"


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  arms = [a for a in SWEEP.arms if any(c.arm.name == a.name for c in cells)]
  per = {a.name: [_per_cell(c) for c in sorted(cells, key=lambda c: c.seed)
                  if c.arm.name == a.name] for a in arms}
  first = next(iter(per.values()))[0]
  n_it = len(first["its"])
  te0 = first["te"]
  seeds = sorted({c.seed for c in cells})
  md = ["# Reward hacking: PPO against the learned reward model, β sweep"
        + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      f"PPO from the demo's SFT model against the demo's learned reward "
      f"model (runs/demo_base/reward), {n_it} iterations, seeds {seeds}. "
      "Proxy = the reward model's normalized score of the rollouts (what "
      "PPO maximizes); true judge = the world's programmatic judge of the "
      "same rollouts (never a training signal); KL = summed log π − log "
      "π_SFT over a sampled answer (k1). Training columns: the mean of the "
      f"first {min(WINDOW, n_it)} vs the last {min(WINDOW, n_it)} "
      "iterations; mean ± sd over seeds; Δ = last − first with its 95% CI "
      "and p (paired t over seeds).")
  md.append("")
  md.append("## Training rollouts (train prompts, sampled at T = 1)\n")
  rows, verdicts = [], {}
  for a in arms:
    ps = per[a.name]
    row: dict[str, Any] = {"arm": a.name, "β": f"{a.labels['beta']:g}",
                           "seeds": len(ps)}
    for label, key in CURVES:
      row[label] = (f"{sweep.fmt_mean_sd([p[f'first/{key}'] for p in ps])}"
                    f" → {sweep.fmt_mean_sd([p[f'last/{key}'] for p in ps])}")
    t_proxy = sweep.paired_t([p["last/reward"] for p in ps],
                             [p["first/reward"] for p in ps])
    t_judge = sweep.paired_t([p["last/true_judge"] for p in ps],
                             [p["first/true_judge"] for p in ps])
    row["Δ proxy"] = sweep.fmt_paired_t(t_proxy)
    row["Δ true judge"] = sweep.fmt_paired_t(t_judge)
    kl_last = float(np.mean([p["last/kl"] for p in ps]))
    verdicts[a.name] = row["reading"] = _verdict(t_proxy, t_judge, kl_last)
    rows.append(row)
  md.append(sweep.write_table(
      rows, ["arm", "β", "seeds"] + [c[0] for c in CURVES]
      + ["Δ proxy", "Δ true judge", "reading"]))
  md.append(f"## Final policy on the test split ({te0['test_records']} "
            "prompts, greedy, paired with the SFT model's greedy answers)\n")
  md.append("Mean ± sd over seeds. Gains are policy − SFT on the same "
            "prompts; their CI and p are a paired t over seeds of the "
            "per-seed mean gain. SFT itself scores true judge "
            f"{te0['test']['sft_judge']:.3f}, RM {te0['test']['sft_rm']:+.3f}"
            f", {te0['test']['sft_words']:.1f} words.\n")
  trows = []
  for a in arms:
    ps = per[a.name]
    tes = [p["te"]["test"] for p in ps]
    g_j = sweep.paired_t([t["judge"] for t in tes],
                         [t["sft_judge"] for t in tes])
    g_r = sweep.paired_t([t["rm"] for t in tes], [t["sft_rm"] for t in tes])
    trows.append({
        "arm": a.name, "β": f"{a.labels['beta']:g}", "seeds": len(ps),
        "RM score": sweep.fmt_mean_sd([t["rm"] for t in tes]),
        "RM gain vs SFT": sweep.fmt_paired_t(g_r),
        "true judge": sweep.fmt_mean_sd([t["judge"] for t in tes]),
        "judge gain vs SFT": sweep.fmt_paired_t(g_j),
        "judge win rate vs SFT": sweep.fmt_mean_sd(
            [t["paired_judge"]["win_rate_vs_ref"] for t in tes]),
        "KL to SFT": sweep.fmt_mean_sd([t["kl_to_sft"] for t in tes], 2),
        "words": sweep.fmt_mean_sd([t["words"] for t in tes], 1),
        "refusals": sweep.fmt_mean_sd([t["refusal_rate"] for t in tes])})
  md.append(sweep.write_table(trows, list(trows[0])))
  md.append("Per prompt (each prompt's policy score averaged over the "
            "seeds vs the SFT model's; wins/losses/ties, mean gain with a "
            "95% bootstrap CI over prompts, sign-test p):\n")
  prow, test_read = [], {}
  for a in arms:
    ps = per[a.name]
    for score, ref in (("judge", "sft_judge"), ("rm", "sft_rm")):
      pol = np.mean([[r[score] for r in p["answers"]] for p in ps], axis=0)
      sft = [r[ref] for r in ps[0]["answers"]]
      st = paired_stats(pol, sft)
      test_read.setdefault(a.name, {})[score] = st
      prow.append({"β": f"{a.labels['beta']:g}",
                   "score": "true judge" if score == "judge" else "RM",
                   "policy wins": int(st["wins"]),
                   "SFT wins": int(st["losses"]), "ties": int(st["ties"]),
                   "mean gain": f"{st['judge_gain_vs_ref']:+.4f}",
                   "95% CI": f"[{st['judge_gain_ci_lo']:+.4f}, "
                             f"{st['judge_gain_ci_hi']:+.4f}]",
                   "sign-test p": st["sign_test_p"]})
  md.append(sweep.write_table(prow, list(prow[0])))
  tasks = sorted({r["task"] for r in first["answers"]})
  md.append("Per task (test split, policy − SFT, mean over prompts and "
            "seeds): RM gain / true-judge gain / word-count change\n")
  trow = []
  for a in arms:
    t = {"β": f"{a.labels['beta']:g}"}
    for task in tasks:
      rs = [r for p in per[a.name] for r in p["answers"]
            if r["task"] == task]
      gains = [np.mean([r[k] - r[f"sft_{k}"] for r in rs])
               for k in ("rm", "judge", "words")]
      t[task] = f"{gains[0]:+.2f} / {gains[1]:+.3f} / {gains[2]:+.1f}"
    trow.append(t)
  md.append(sweep.write_table(trow, ["β"] + tasks))
  md.append("Readings (training rollouts, paired t over seeds): "
            + "; ".join(f"β = {a.labels['beta']:g}: {verdicts[a.name]}"
                        for a in arms) + ".\n")
  md.append("Readings (test split, per prompt, 95% bootstrap CI of the "
            "mean gain vs SFT): " + "; ".join(
                f"β = {a.labels['beta']:g}: "
                f"{_test_verdict(test_read[a.name])}" for a in arms) + ".\n")
  walls = [p["wall_s"] for ps in per.values() for p in ps]
  md.append(f"Cell wall time (PPO + test split, this machine, shared): "
            f"{sweep.fmt_mean_sd(walls, 0)} s over {len(walls)} cells.\n")
  _plot(arms, per, os.path.join(out_dir, "reward_hacking.png"))
  md.append("![proxy, true judge, KL, length and stop rate per iteration; "
            "test split](reward_hacking.png)\n")
  return "\n".join(md)


def _plot(arms: Sequence[sweep.Arm], per: Mapping[str, Sequence[dict]],
          path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
  flat = axes.ravel()
  for i, a in enumerate(arms):
    color = f"C{i}"
    ps = per[a.name]
    for k, (label, key) in enumerate(CURVES):
      curves = np.array([[r[key] for r in p["its"]] for p in ps])
      x = [r["iteration"] for r in ps[0]["its"]]
      for c in curves:
        flat[k].plot(x, c, color=color, alpha=0.25, lw=0.8)
      flat[k].plot(x, curves.mean(axis=0), color=color, lw=2,
                   label=f"β = {a.labels['beta']:g}")
      flat[k].set(title=label, xlabel="PPO iteration")
    tes = [p["te"]["test"] for p in ps]
    gj = [t["judge"] - t["sft_judge"] for t in tes]
    gr = [t["rm"] - t["sft_rm"] for t in tes]
    flat[5].errorbar(np.mean(gr), np.mean(gj),
                     xerr=np.std(gr, ddof=1) if len(gr) > 1 else 0,
                     yerr=np.std(gj, ddof=1) if len(gj) > 1 else 0,
                     fmt="o", color=color, capsize=3,
                     label=f"β = {a.labels['beta']:g}")
    flat[5].plot(gr, gj, ".", color=color, alpha=0.5)
  flat[5].axhline(0, color="k", lw=0.6)
  flat[5].axvline(0, color="k", lw=0.6)
  flat[5].set(xlabel="test: RM score gain vs SFT (proxy)",
              ylabel="test: true judge gain vs SFT",
              title="final policy on the test split\n(mean ± sd over "
                    "seeds; dots: seeds)")
  for ax in flat:
    ax.grid(alpha=0.3)
  flat[0].legend(fontsize=8)
  flat[5].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
