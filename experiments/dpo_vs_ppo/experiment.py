"""DPO vs PPO (issue 19, row 12; seeds 000 "4.4 DPO - the shorter path" and
002 "Alternative alignment: DPO"): PPO-based RLHF holds a policy, a
reference, a reward model and a critic and generates rollouts; DPO holds a
policy and a reference and generates nothing. Cost and result, from the
demo's SFT model, on the same prompts and the same optimizer-step budget
(README.md).

Arms (each cell: cell.dpo_vs_ppo_cell, one stage run + a test evaluation):
  dpo  the demo's DPO stage (beta 0.1) on the first 128 preference pairs
  ppo  the demo's PPO stage (reward model, separate critic) rolling out on
       the same 128 pairs' prompts
Seeds vary the data order (and PPO's sampling); the SFT model, the reward
model and the prompts are one (the demo's, world seed 0). Each final policy
is judged against the SFT model on the test prompts (nothing is selected:
the final step is reported).
"""

from __future__ import annotations

import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.dpo_vs_ppo.cell, as gin imports it
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

ARMS = ("dpo", "ppo")
RESULT = "result.json"
MIB = 2.0 ** 20

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(a, gin_params=(f"dpo_vs_ppo_cell.arm={a!r}",),
                    labels={"arm": a}) for a in ARMS],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="dpo_vs_ppo_cell.root",
    seed_params=("dpo_vs_ppo_cell.seed",))
# The binding of the base lifecycle root (SFT + reward model): the test
# suite points every experiment that starts from the tiny lifecycle at one
# shared root.
BASE_ROOT_PARAM = "dpo_vs_ppo_cell.base_root"


def _result(cell: sweep.Cell) -> dict:
  r = cell.json(RESULT)
  if not r:
    raise ValueError(f"{cell.run_dir}: no {RESULT} (did the cell finish?)")
  return r


def flops_estimate(r: dict) -> dict[str, float]:
  """Matmul FLOPs of a cell's stage on its padded shapes (the stages log
  none): TransformerConfig.flops_per_token (forward + backward = 3 x
  forward) per trained token, a third of it per forward token. DPO: the
  reference's forward pass over every train and validation pair (chosen
  and rejected) and the training steps (the final held-out pair
  evaluation, 4 forward batches, left out).
  PPO, per iteration: generation (one forward per prompt position and new
  token), the old-policy, reference, critic and reward-model forwards over
  the rollout rows, then the policy and critic training steps (the critic
  and reward model counted at the policy's size: same backbone)."""
  b, f = r["budget"], r["flops_per_token_train"]
  fwd = f / 3
  seq = r["tokens_per_step"] // (2 * b["dpo_batch"] if r["arm"] == "dpo"
                                 else b["ppo_minibatch"])
  train = b["dpo_steps"] * r["tokens_per_step"] * f
  if r["arm"] == "dpo":
    n_eval = r["validation_pairs"]
    ref = (r["train_pairs"] + n_eval) * 2 * seq * fwd
    return {"train": train, "reference": ref, "generation": 0.0,
            "total": train + ref}
  rows = b["ppo_prompts_seen"] * seq
  gen = rows * fwd
  scoring = 4 * rows * fwd
  train *= 2  # policy + critic
  return {"train": train, "reference": scoring, "generation": gen,
          "total": train + scoring + gen}


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  res = {a: {c.seed: (c, _result(c)) for c in cells if c.arm.name == a}
         for a in ARMS}
  seeds = sorted(set(res["dpo"]) & set(res["ppo"]))
  budget = next(iter(res["dpo"].values()))[1]["budget"] if res["dpo"] \
      else next(iter(res["ppo"].values()))[1]["budget"]

  cost_rows, result_rows, seed_rows = [], [], []
  for arm in ARMS:
    rs = [r for _, r in res[arm].values()]
    cs = [c for c, _ in res[arm].values()]
    if not rs:
      continue
    held = [sum(x["bytes"] for x in r["copies"]) for r in rs]
    trained = [sum(x["bytes"] for x in r["copies"] if x["trained"])
               for r in rs]
    rss = [c.record.get("peak_rss_mib") for c in cs]
    rss = [x for x in rss if x is not None]
    srss = [r["stage_peak_rss_mib"] for r in rs if "stage_peak_rss_mib" in r]
    fl = [flops_estimate(r) for r in rs]
    cost_rows.append({
        "arm": arm, "seeds": len(rs),
        "cell wall s": sweep.fmt_mean_sd([c.record["wall_s"] for c in cs], 0),
        "stage s": sweep.fmt_mean_sd([r["stage_s"] for r in rs], 0),
        "s / optimizer step": sweep.fmt_mean_sd(
            [r["step_s_steady"] for r in rs], 2),
        "test eval s": sweep.fmt_mean_sd([r["eval_s"] for r in rs], 0),
        "peak RSS MiB (cell)": (sweep.fmt_mean_sd(rss, 0) if rss
                                else "n/a (in-process)"),
        "peak RSS MiB (to stage end)": (
            f"{sweep.fmt_mean_sd(srss, 0)} (n={len(srss)})" if srss
            else "n/a"),
        "model copies": len(rs[0]["copies"]),
        "param MiB held": f"{np.mean(held) / MIB:.1f}",
        "trained param MiB": f"{np.mean(trained) / MIB:.1f}",
        "tokens generated": sweep.fmt_mean_sd(
            [r["rollout_tokens"] for r in rs], 0),
        "est. GFLOPs": sweep.fmt_mean_sd([x["total"] / 1e9 for x in fl], 0)})
    t = [r["test"] for r in rs]
    result_rows.append({
        "arm": arm, "seeds": len(rs),
        "win rate vs SFT": sweep.fmt_mean_sd(
            [x["win_rate_vs_ref"] for x in t]),
        "W/T/L (summed)": "/".join(str(int(sum(x[k] for x in t)))
                                   for k in ("wins", "ties", "losses")),
        "judge gain": sweep.fmt_mean_sd([x["judge_gain_vs_ref"] for x in t]),
        "judge score": sweep.fmt_mean_sd([x["judge_score"] for x in t]),
        "KL to SFT (nats/answer)": sweep.fmt_mean_sd(
            [x["kl_to_ref"] for x in t]),
        "reward-model gain": sweep.fmt_mean_sd(
            [x["reward_gain_vs_ref"] for x in t]),
        "answer words": sweep.fmt_mean_sd([x["response_words"] for x in t],
                                          1)})
    for s in sorted(res[arm]):
      x = res[arm][s][1]["test"]
      seed_rows.append({
          "arm": arm, "seed": s,
          "W/T/L": f"{int(x['wins'])}/{int(x['ties'])}/{int(x['losses'])}",
          "win rate [95% CI]": f"{x['win_rate_vs_ref']:.3f} "
                               f"[{x['win_rate_ci_lo']:.3f}, "
                               f"{x['win_rate_ci_hi']:.3f}]",
          "sign-test p": f"{x['sign_test_p']:.3g}",
          "judge gain [95% CI]": f"{x['judge_gain_vs_ref']:+.4f} "
                                 f"[{x['judge_gain_ci_lo']:+.4f}, "
                                 f"{x['judge_gain_ci_hi']:+.4f}]",
          "KL to SFT": f"{x['kl_to_ref']:.3f}"})

  # dpo vs ppo, paired per test prompt within a seed, and over seeds.
  head_rows, sums = [], {"wins": 0, "ties": 0, "losses": 0}
  for s in seeds:
    st = paired_stats(res["dpo"][s][1]["judge_policy"],
                      res["ppo"][s][1]["judge_policy"])
    for k in sums:
      sums[k] += int(st[k])
    head_rows.append({
        "seed": s,
        "DPO W/T/L vs PPO": f"{int(st['wins'])}/{int(st['ties'])}/"
                            f"{int(st['losses'])}",
        "DPO win rate [95% CI]": f"{st['win_rate_vs_ref']:.3f} "
                                 f"[{st['win_rate_ci_lo']:.3f}, "
                                 f"{st['win_rate_ci_hi']:.3f}]",
        "sign-test p": f"{st['sign_test_p']:.3g}",
        "judge DPO - PPO [95% CI]": f"{st['judge_gain_vs_ref']:+.4f} "
                                    f"[{st['judge_gain_ci_lo']:+.4f}, "
                                    f"{st['judge_gain_ci_hi']:+.4f}]"})
  pooled = None
  if seeds:
    pooled = paired_stats(
        np.concatenate([res["dpo"][s][1]["judge_policy"] for s in seeds]),
        np.concatenate([res["ppo"][s][1]["judge_policy"] for s in seeds]))
  win_t = sweep.paired_t(
      [res["dpo"][s][1]["test"]["win_rate_vs_ref"] for s in seeds],
      [res["ppo"][s][1]["test"]["win_rate_vs_ref"] for s in seeds])
  kl_t = sweep.paired_t(
      [res["dpo"][s][1]["test"]["kl_to_ref"] for s in seeds],
      [res["ppo"][s][1]["test"]["kl_to_ref"] for s in seeds])

  def ratio(key):
    a = [res["ppo"][s][1][key] for s in seeds]
    b = [res["dpo"][s][1][key] for s in seeds]
    return np.mean(a) / np.mean(b) if seeds and np.mean(b) else math.nan

  def rss_ratio():
    a = [res["ppo"][s][0].record.get("peak_rss_mib") for s in seeds]
    b = [res["dpo"][s][0].record.get("peak_rss_mib") for s in seeds]
    if not seeds or None in a + b:
      return math.nan
    return np.mean(a) / np.mean(b)

  r0 = next(iter(next(iter(v.values()))[1] for v in res.values() if v))
  md = ["# DPO vs PPO: results" + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      f"Both arms start from the demo's SFT model (`{r0['base']}/sft`; "
      f"PPO's reward model and critic init: `{r0['base']}/reward`), "
      f"{r0['num_params'] / 1e6:.2f}M parameters per "
      f"LM copy. Budget: {budget['dpo_steps']} optimizer steps of "
      f"{budget['dpo_batch']} for both; DPO over the first "
      f"{r0['train_pairs']} preference train pairs once, PPO over the same "
      f"pairs' prompts once ({budget['ppo_iterations']} iterations x "
      f"{budget['ppo_prompts_per_iteration']} prompts, "
      f"{budget['ppo_epochs']} epoch). Test: the first "
      f"{r0['test_records']} test prompts, greedy answers, the world's "
      "default judge against the SFT model's greedy answers.")
  md.append("")
  md.append("## Cost")
  md.append("")
  md.append(sweep.write_table(cost_rows, [
      "arm", "seeds", "cell wall s", "stage s", "s / optimizer step",
      "test eval s", "peak RSS MiB (cell)", "peak RSS MiB (to stage end)",
      "model copies", "param MiB held",
      "trained param MiB", "tokens generated", "est. GFLOPs"]))
  md.append(
      f"PPO / DPO over seeds {seeds}: stage wall time x{ratio('stage_s'):.2f}"
      f", time per optimizer step x{ratio('step_s_steady'):.2f}, peak RSS "
      f"x{rss_ratio():.2f}, estimated FLOPs x"
      + (f"{np.mean([flops_estimate(res['ppo'][s][1])['total'] for s in seeds]) / np.mean([flops_estimate(res['dpo'][s][1])['total'] for s in seeds]):.2f}"  # noqa: E501
         if seeds else "nan") + ".")
  md.append("")
  md.append(
      "Cell wall s = the whole subprocess (imports, loading, compilation, "
      "the stage, the test evaluation; sweep.json); stage s = the DPO or "
      "PPO stage call alone (DPO: including the reference log-prob pass "
      "over the train and validation pairs and the final held-out pair "
      "eval; PPO: including every rollout); s / optimizer step = the median "
      "over the stage's logged rows after the first (which holds "
      "compilation) of the logged tokens/s turned into seconds per step: "
      "for PPO a row is one iteration, so its steps carry that iteration's "
      "rollout generation and scoring. Peak RSS (cell) = the cell "
      "process's maximum resident memory (sweep.json; it includes the test "
      "evaluation, the same in both arms: policy, SFT and reward model, "
      "greedy generation, KL); peak RSS (to stage end) = the same process's "
      "high-water mark read right after the stage returned, before the test "
      "evaluation (recorded from seed 1 on: seed 0's cells ran before the "
      "cell recorded it; n = cells with it). Param MiB held = the f32 parameters of the model "
      "copies the stage holds (DPO: policy + reference; PPO: policy, "
      "reference, reward model, critic); AdamW adds 2 x the trained MiB. "
      "Tokens generated = PPO's rollout response tokens (mean response "
      "length x prompts, summed over iterations). Est. GFLOPs: matmul "
      "FLOPs on the padded shapes (experiment.py: flops_estimate; the "
      "stages log none).")
  md.append("")
  md.append("## Result: each final policy vs the SFT model (test prompts)")
  md.append("")
  md.append(sweep.write_table(result_rows, [
      "arm", "seeds", "win rate vs SFT", "W/T/L (summed)", "judge gain",
      "judge score", "KL to SFT (nats/answer)", "reward-model gain",
      "answer words"]))
  md.append(sweep.write_table(seed_rows, [
      "arm", "seed", "W/T/L", "win rate [95% CI]", "sign-test p",
      "judge gain [95% CI]", "KL to SFT"]))
  md.append("## DPO vs PPO, paired")
  md.append("")
  md.append(sweep.write_table(head_rows, [
      "seed", "DPO W/T/L vs PPO", "DPO win rate [95% CI]", "sign-test p",
      "judge DPO - PPO [95% CI]"]))
  if pooled is not None:
    md.append(
        f"Pooled over seeds ({len(seeds)} x {r0['test_records']} "
        f"prompt pairs; the seeds share prompts, so the pooled CI is "
        f"optimistic): DPO vs PPO W/T/L {sums['wins']}/{sums['ties']}/"
        f"{sums['losses']}, judge DPO - PPO "
        f"{pooled['judge_gain_vs_ref']:+.4f} (95% CI "
        f"{pooled['judge_gain_ci_lo']:+.4f} .. "
        f"{pooled['judge_gain_ci_hi']:+.4f}), sign test p = "
        f"{pooled['sign_test_p']:.3g}. Over seeds (paired t): win rate vs "
        f"SFT DPO - PPO = {win_t['mean_diff']:+.3f} (95% CI "
        f"{win_t['ci_lo']:+.3f} .. {win_t['ci_hi']:+.3f}, p = "
        f"{win_t['p']:.2g}); KL to SFT DPO - PPO = {kl_t['mean_diff']:+.3f} "
        f"(95% CI {kl_t['ci_lo']:+.3f} .. {kl_t['ci_hi']:+.3f}, p = "
        f"{kl_t['p']:.2g}).")
    md.append("")
  md.append(
      "Win rate: ties count half; W/T/L per prompt at judge-total "
      "resolution; sign test: exact, two-sided, ties dropped; CIs: "
      "percentile bootstrap over prompts (lifejax.eval.policy_eval."
      "paired_stats). KL to SFT: exact per-token KL summed over the "
      "policy's own greedy answer, mean over prompts. Reward-model gain: "
      "the demo reward model's normalized score of the policy's answers "
      "minus the SFT answers' (PPO's training signal; DPO never sees it). "
      "Mean ± sample sd over seeds. Plot: `dpo_vs_ppo.png`.")
  _plot(res, os.path.join(out_dir, "dpo_vs_ppo.png"))
  return "\n".join(md) + "\n"


def _plot(res, path):
  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
  colors = {"dpo": "tab:blue", "ppo": "tab:orange"}
  for j, arm in enumerate(ARMS):
    items = [res[arm][s] for s in sorted(res[arm])]
    if not items:
      continue
    stage = [r["stage_s"] for _, r in items]
    evs = [r["eval_s"] for _, r in items]
    other = [max(c.record["wall_s"] - r["stage_s"] - r["eval_s"], 0.0)
             for c, r in items]
    ax1.bar(j, np.mean(stage), color=colors[arm], label="stage"
            if j == 0 else None)
    ax1.bar(j, np.mean(evs), bottom=np.mean(stage), color="lightgray",
            label="test eval" if j == 0 else None)
    ax1.bar(j, np.mean(other), bottom=np.mean(stage) + np.mean(evs),
            color="whitesmoke", edgecolor="gray",
            label="startup" if j == 0 else None)
    held = sum(x["bytes"] for x in items[0][1]["copies"]) / MIB
    trained = sum(x["bytes"] for x in items[0][1]["copies"]
                  if x["trained"]) / MIB
    rss = [c.record.get("peak_rss_mib") for c, _ in items]
    srss = [r["stage_peak_rss_mib"] for _, r in items
            if "stage_peak_rss_mib" in r]
    ax2.bar(j - 0.27, held + 2 * trained, 0.27, color=colors[arm],
            label="params + AdamW state" if j == 0 else None)
    if srss:
      ax2.bar(j, np.mean(srss), 0.27, color=colors[arm], alpha=0.6,
              hatch="..", label="peak RSS to stage end" if j == 0 else None)
    if None not in rss:
      ax2.bar(j + 0.27, np.mean(rss), 0.27, color=colors[arm], alpha=0.3,
              hatch="//", label="peak RSS (cell)" if j == 0 else None)
    kl = [r["test"]["kl_to_ref"] for _, r in items]
    wr = [r["test"]["win_rate_vs_ref"] for _, r in items]
    ax3.scatter(kl, wr, color=colors[arm], label=arm, zorder=3)
  for ax in (ax1, ax2):
    ax.set_xticks(range(len(ARMS)), ARMS)
    ax.legend(fontsize=8, loc="upper left")
  ax2.set_ylim(top=ax2.get_ylim()[1] * 1.35)
  ax1.set_ylabel("seconds (mean over seeds)")
  ax1.set_title("wall time per cell")
  ax2.set_ylabel("MiB")
  ax2.set_title("memory: model copies vs process peak")
  ax3.axhline(0.5, color="gray", ls="--", lw=1)
  ax3.set_xlabel("KL to SFT on test answers (nats/answer)")
  ax3.set_ylabel("judge win rate vs SFT (ties half)")
  ax3.set_title("result per seed (test prompts)")
  ax3.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
