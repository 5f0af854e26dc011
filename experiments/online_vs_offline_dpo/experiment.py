"""Online vs offline DPO (issue 20, "Must show" part 2): does online /
iterative DPO (sample from the current policy, label with a judge, update,
repeat) beat offline DPO on a fixed preference set, from the same SFT model
at the same number of optimizer steps?

Arms (each cell: cell.online_dpo_cell; both the same DPO loss, beta 0.1,
lr, batch of 8 pairs, 16 optimizer steps, reference = the SFT model, the
same 128 seeded preference-train records):
  offline  the `dpo` stage on the records' fixed pairs (chosen = the
           reference answer, rejected = a flawed rewrite), one pass
  online   the `online_dpo` stage: 4 rounds x 4 steps; a round samples 4
           answers to each of 32 of the records' prompts from the current
           policy, the world's programmatic judge keeps best vs worst
Seeds vary the record subset, the data order and (online) the sampling;
the SFT and reward models are one (the demo's, world seed 0).
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
if _REPO not in sys.path:  # experiments.online_vs_offline_dpo.cell, for gin
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.online_vs_offline_dpo import cell as cell_lib  # noqa: E402

ARMS = (
    ("offline", "DPO on the fixed offline pairs (reference answer vs a "
     "flawed rewrite)"),
    ("online", "online DPO: 4 rounds of on-policy samples, judge best vs "
     "worst of 4"),
)

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(name, gin_params=(f"online_dpo_cell.arm = '{name}'",),
                    labels={"setting": desc})
          for name, desc in ARMS],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="online_dpo_cell.root",
    seed_params=("online_dpo_cell.seed",),
    tiny_arms=("offline", "online"),
)
# The binding of the base's lifecycle root: the test suite points every
# experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "online_dpo_cell.base_root"

# Per-round counts and scores of the online arm (key in a round's record).
ROUND_KEYS = (("pairs kept", "pairs"), ("ties", "ties"),
              ("filtered (all reasons)", "filtered"),
              ("truncated", "filtered_truncated"),
              ("identical", "filtered_identical"),
              ("low margin", "filtered_low_margin"),
              ("mean judge of samples", "mean_score"),
              ("mean judge of each prompt's best", "mean_best_score"),
              ("mean kept margin", "mean_margin"))
SCORES = (("judge", "judge (circular for online)"),
          ("rm", "reward model"))


def _per_cell(cell: sweep.Cell) -> dict[str, Any]:
  te = cell.json(cell_lib.TEST_EVAL)
  if te is None:
    raise ValueError(f"{cell.run_dir}: no {cell_lib.TEST_EVAL}")
  return {"seed": cell.seed, "te": te,
          "answers": cell.jsonl(cell_lib.TEST_ANSWERS),
          "wall_s": cell.record.get("wall_s", math.nan)}


def _check_same_budget(per: Mapping[str, Sequence[dict]]) -> dict[str, Any]:
  """Every cell: the same steps, batch, lr, loss, seq_len (else an error)."""
  keys = ("final_step", "batch_size", "seq_len", "learning_rate", "loss")
  seen = {k: {repr(p["te"].get(k)) for ps in per.values() for p in ps}
          for k in keys}
  seen["loss_hparams"] = {repr(p["te"].get("loss_hparams"))
                          for ps in per.values() for p in ps}
  bad = {k: v for k, v in seen.items() if len(v) != 1}
  if bad:
    raise ValueError(f"the arms' budgets differ: {bad}")
  first = next(iter(per.values()))[0]["te"]
  return {k: first.get(k) for k in keys + ("loss_hparams", "budget")}


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  arms = [a for a in SWEEP.arms if any(c.arm.name == a.name for c in cells)]
  per = {a.name: [_per_cell(c) for c in sorted(cells, key=lambda c: c.seed)
                  if c.arm.name == a.name] for a in arms}
  b = _check_same_budget(per)
  first = next(iter(per.values()))[0]
  te0 = first["te"]
  seeds = sorted({c.seed for c in cells})
  n_test = te0["test_records"]
  bud = b["budget"]
  md = ["# Online vs offline DPO from the same SFT model, same optimizer "
        "steps" + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      "Both arms start from the demo's SFT model (runs/demo_base/sft) and "
      f"take {b['final_step']} optimizer steps of {b['batch_size']} pairs "
      f"of the same loss ({b['loss']}, {b['loss_hparams']}), lr "
      f"{b['learning_rate']:g}, reference = the SFT model, on the same "
      f"{bud['train_pairs']} seeded preference-train records per seed. "
      "`offline`: the records' fixed pairs (chosen = reference answer, "
      "rejected = a flawed rewrite), one pass. `online`: "
      f"{bud['rounds']} rounds × {bud['steps_per_round']} steps; each round "
      f"samples answers to {bud['prompts_per_round']} of the records' "
      "prompts from the current policy and the world's programmatic judge "
      "(`default` preset) keeps best vs worst (experiment.gin). Seeds "
      f"{seeds} (record subset, data order, sampling); mean ± sd over "
      "seeds.")
  md.append("")
  md.append(f"## Final policy on the test split ({n_test} prompts, greedy, "
            "paired with the SFT model's greedy answers)\n")
  md.append(
      "Two judges: the programmatic judge (**the online arm's labeller: "
      "circular for `online`**, which was trained on pairs it ranked; not "
      "for `offline`, whose pairs are the world's) and the demo's reward "
      "model (a differently built judge: learned from the preference train "
      "pairs, normalized score; neither arm trained on its scores). Gains "
      "are policy − SFT on the same prompts; CI and p are a paired t over "
      "seeds of the per-seed mean. SFT itself scores judge "
      f"{te0['test']['sft_judge']:.3f}, RM {te0['test']['sft_rm']:+.3f}, "
      f"{te0['test']['sft_words']:.1f} words. Held-out pair accuracy = "
      "implicit-reward accuracy on the first validation offline pairs "
      "(eval/reward_accuracy).\n")
  trows = []
  for a in arms:
    tes = [p["te"]["test"] for p in per[a.name]]
    ev = [p["te"]["eval"] for p in per[a.name]]
    trows.append({
        "arm": a.name, "seeds": len(tes),
        "judge": sweep.fmt_mean_sd([t["judge"] for t in tes]),
        "judge gain vs SFT": sweep.fmt_paired_t(sweep.paired_t(
            [t["judge"] for t in tes], [t["sft_judge"] for t in tes])),
        "judge win rate vs SFT": sweep.fmt_mean_sd(
            [t["paired_judge"]["win_rate_vs_ref"] for t in tes]),
        "RM score": sweep.fmt_mean_sd([t["rm"] for t in tes]),
        "RM gain vs SFT": sweep.fmt_paired_t(sweep.paired_t(
            [t["rm"] for t in tes], [t["sft_rm"] for t in tes])),
        "RM win rate vs SFT": sweep.fmt_mean_sd(
            [t["paired_rm"]["win_rate_vs_ref"] for t in tes]),
        "KL to SFT (nats/answer)": sweep.fmt_mean_sd(
            [t["kl_to_sft"] for t in tes]),
        "answers = SFT's": sweep.fmt_mean_sd(
            [t["same_as_sft"] for t in tes], 1),
        "words": sweep.fmt_mean_sd([t["words"] for t in tes], 1),
        "held-out pair acc.": sweep.fmt_mean_sd(
            [e.get("eval/reward_accuracy", math.nan) for e in ev])})
  md.append(sweep.write_table(trows, list(trows[0])))

  md.append("Per prompt vs SFT, each seed and pooled (pooled: each prompt's "
            "score averaged over the seeds vs SFT's; W/T/L, win rate with "
            "ties half, mean difference with a 95% bootstrap CI over "
            "prompts, exact sign test):\n")
  prow = []
  for a in arms:
    ps = per[a.name]
    for score, label in SCORES:
      for p in ps:
        st = p["te"]["test"][f"paired_{score}"]
        prow.append({"arm": a.name, "score": label, "seed": p["seed"],
                     **sweep.fmt_paired_stats(st, compact=True)})
      pol = np.mean([[r[score] for r in p["answers"]] for p in ps], axis=0)
      sft = [r[f"sft_{score}"] for r in ps[0]["answers"]]
      prow.append({"arm": a.name, "score": label, "seed": "pooled",
                   **sweep.fmt_paired_stats(paired_stats(pol, sft),
                                            compact=True)})
  md.append(sweep.write_table(prow, list(prow[0])))

  if "online" in per and "offline" in per:
    md.append("## online − offline\n")
    md.append("Paired within a seed (the same record subset and test "
              "prompts): a paired t over seeds of the per-seed means, and "
              "prompt by prompt per seed and pooled over seeds × prompts "
              f"({len(seeds)} × {n_test} pairs; wins = online higher; "
              "pooled pairs repeat each prompt once per seed, so its p is "
              "optimistic).\n")
    on = {p["seed"]: p for p in per["online"]}
    off = {p["seed"]: p for p in per["offline"]}
    common = sorted(set(on) & set(off))
    crow = []
    for score, label in SCORES + (("kl_to_sft", "KL to SFT"),):
      t = sweep.paired_t([on[s]["te"]["test"][score] for s in common],
                         [off[s]["te"]["test"][score] for s in common])
      row = {"score": label, "paired t over seeds": sweep.fmt_paired_t(t)}
      if score != "kl_to_sft":
        for s in common:
          st = paired_stats([r[score] for r in on[s]["answers"]],
                            [r[score] for r in off[s]["answers"]])
          row[f"seed {s} W/T/L (p)"] = (
              f"{int(st['wins'])}/{int(st['ties'])}/{int(st['losses'])} "
              f"(p={st['sign_test_p']:.2g})")
        st = paired_stats(
            [r[score] for s in common for r in on[s]["answers"]],
            [r[score] for s in common for r in off[s]["answers"]])
        row.update({f"pooled {k}": v for k, v in
                    sweep.fmt_paired_stats(st, compact=True).items()})
      crow.append(row)
    cols = list(dict.fromkeys(k for r in crow for k in r))
    md.append(sweep.write_table(crow, cols))

  if "online" in per:
    md.append("## The online arm's rounds\n")
    md.append("Per round (mean ± sd over seeds): the prompts' best-vs-worst "
              "pairs kept and the filtered ones by reason (tie: every "
              "non-truncated sample scored alike; truncated: fewer than 2 "
              "samples stopped; identical / low margin < 0.05), the "
              "programmatic judge's mean over all samples and over each "
              "prompt's best sample (the policy's own train-prompt "
              "rollouts: they show whether the judge score of the policy's "
              "samples rises round over round), and the kept pairs' mean "
              "margin.\n")
    rounds = [p["te"]["rounds"] for p in per["online"]]
    n_r = min(len(r) for r in rounds)
    rrow = []
    for i in range(n_r):
      row = {"round": i + 1,
             "prompts": int(rounds[0][i].get("prompts", 0))}
      for label, key in ROUND_KEYS:
        vals = [r[i][key] for r in rounds if key in r[i]]
        row[label] = (sweep.fmt_mean_sd(vals, 1 if key in (
            "pairs", "ties", "filtered") or key.startswith("filtered_")
            else 3) if vals else "–")
      rrow.append(row)
    md.append(sweep.write_table(rrow, list(rrow[0])))

  tasks = sorted({r["task"] for r in first["answers"]})
  md.append("Per task (test split, policy − SFT, mean over prompts and "
            "seeds): judge gain / RM gain / word-count change; the SFT "
            "model's mean words per task in the last row:\n")
  krow = []
  for a in arms:
    k = {"arm": a.name}
    for task in tasks:
      rs = [r for p in per[a.name] for r in p["answers"] if r["task"] == task]
      g = [np.mean([r[key] - r[f"sft_{key}"] for r in rs])
           for key in ("judge", "rm", "words")]
      k[task] = f"{g[0]:+.3f} / {g[1]:+.2f} / {g[2]:+.1f}"
    krow.append(k)
  krow.append({"arm": "SFT words", **{
      task: f"{np.mean([r['sft_words'] for r in first['answers'] if r['task'] == task]):.1f}"  # noqa: E501
      for task in tasks}})
  md.append(sweep.write_table(krow, ["arm"] + tasks))
  walls = {a.name: [p["wall_s"] for p in per[a.name]] for a in arms}
  md.append("Cell wall time (stage + test split, this machine, shared with "
            "other runs): " + "; ".join(
                f"{k} {sweep.fmt_mean_sd(v, 0)} s" for k, v in walls.items())
            + ".\n")
  _plot(arms, per, os.path.join(out_dir, "online_vs_offline_dpo.png"))
  md.append("![DPO training loss per step; the online arm's per-round judge "
            "score of its samples and pair counts; test judge / RM gain vs "
            "SFT and KL per arm](online_vs_offline_dpo.png)\n")
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
    for p in per[a.name]:
      tr = p["te"]["train"]
      flat[0].plot([r["step"] for r in tr], [r["loss"] for r in tr],
                   color=color, alpha=0.6,
                   label=a.name if p is per[a.name][0] else None)
  flat[0].axhline(math.log(2), color="k", lw=0.6, ls="--")
  flat[0].set(title="DPO training loss (each seed; dashed: log 2)",
              xlabel="optimizer step")
  if "online" in per:
    rounds = [p["te"]["rounds"] for p in per["online"]]
    n_r = min(len(r) for r in rounds)
    x = np.arange(1, n_r + 1)
    for key, label, c in (("mean_score", "all samples", "C1"),
                          ("mean_best_score", "best of each prompt", "C3")):
      v = np.array([[r[i].get(key, math.nan) for i in range(n_r)]
                    for r in rounds])
      sd = np.nanstd(v, 0, ddof=1) if len(v) > 1 else np.zeros(n_r)
      flat[1].errorbar(x, np.nanmean(v, 0), yerr=sd, color=c,
                       marker="o", capsize=3, label=label)
    flat[1].set(title="online: judge score of its train samples per round\n"
                "(mean ± sd over seeds)", xlabel="round")
    flat[1].legend(fontsize=8)
    bottom = np.zeros(n_r)
    for key, label, c in (("pairs", "kept", "C2"), ("ties", "tie", "C7"),
                          ("filtered_truncated", "truncated", "C4"),
                          ("filtered_identical", "identical", "C5"),
                          ("filtered_low_margin", "low margin", "C6")):
      v = np.mean([[r[i].get(key, 0.0) for i in range(n_r)]
                   for r in rounds], 0)
      flat[2].bar(x, v, bottom=bottom, color=c, label=label)
      bottom += v
    flat[2].set(title="online: prompts per round by outcome\n(mean over "
                "seeds)", xlabel="round")
    flat[2].set_ylim(0, 1.35 * bottom.max())
    flat[2].legend(fontsize=8, ncol=3, loc="upper center")
  per_arm = (
      (flat[3], "test: judge gain vs SFT\n(circular for online)",
       lambda t: t["judge"] - t["sft_judge"]),
      (flat[4], "test: reward-model gain vs SFT", lambda t: t["rm"] -
       t["sft_rm"]),
      (flat[5], "test: KL to SFT (nats / answer)",
       lambda t: t["kl_to_sft"]))
  for i, a in enumerate(arms):
    for ax, title, value in per_arm:
      v = np.array([value(p["te"]["test"]) for p in per[a.name]])
      ax.bar(i, v.mean(), color=f"C{i}", alpha=0.5,
             yerr=v.std(ddof=1) if len(v) > 1 else 0, capsize=4)
      ax.plot([i] * len(v), v, "k.", alpha=0.7)
      ax.set(title=title + " (mean ± sd; dots: seeds)")
  for ax, _, _ in per_arm:
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(arms)), [a.name for a in arms])
  for ax in flat:
    ax.grid(alpha=0.3)
  flat[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
