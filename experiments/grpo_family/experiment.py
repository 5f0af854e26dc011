"""The GRPO family (issue 20, "Must show" part 1): which loss aggregation
and clipping settings keep the policy's entropy up, and which win?

Arms (each cell: cell.grpo_family_cell, one GRPO run on the world's
programmatic judge + its test split; every arm has the same lr, group size,
iterations, prompts, 2 epochs per rollout and k3 KL 0.04 to the SFT model):
  grpo         seq-mean-token-mean, clip 0.2 (the GRPO paper, TRL "grpo")
  token_mean   token-mean, clip 0.2 (DAPO's token-level loss)
  dr_grpo      seq-mean-token-sum-norm, norm_length = max_new_tokens, no
               division by the group std (Dr. GRPO: both of its fixes)
  clip_higher  token-mean, clip [1 - 0.2, 1 + 0.28] (DAPO clip-higher)
  gspo         sequence-level importance ratio, seq-mean-token-mean, clip
               [1 - 3e-4, 1 + 4e-4] (the GSPO paper's range)
Seeds vary the GRPO run (prompt order, rollout sampling); the SFT and
reward models are one (the demo's, world seed 0).
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
if _REPO not in sys.path:  # experiments.grpo_family.cell, for gin
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval.policy_eval import paired_stats  # noqa: E402

from experiments.grpo_family import cell as cell_lib  # noqa: E402

_P = "gf_grpo/GRPOConfig."
ARMS = (
    ("grpo", "seq-mean-token-mean, clip 0.2",
     (f"{_P}aggregation = 'seq-mean-token-mean'",)),
    ("token_mean", "token-mean, clip 0.2",
     (f"{_P}aggregation = 'token-mean'",)),
    ("dr_grpo", "seq-mean-token-sum-norm (L = max_new_tokens), no std",
     (f"{_P}aggregation = 'seq-mean-token-sum-norm'",
      f"{_P}norm_length = %GF_MAX_NEW_TOKENS",
      f"{_P}scale_rewards = False")),
    ("clip_higher", "token-mean, clip 0.2 / 0.28",
     (f"{_P}aggregation = 'token-mean'", f"{_P}clip_eps_low = 0.2",
      f"{_P}clip_eps_high = 0.28")),
    ("gspo", "sequence ratio, seq-mean-token-mean, clip 3e-4 / 4e-4",
     (f"{_P}aggregation = 'seq-mean-token-mean'",
      f"{_P}importance_sampling_level = 'sequence'",
      f"{_P}clip_eps_low = 3e-4", f"{_P}clip_eps_high = 4e-4")),
)

SWEEP = sweep.Sweep(
    arms=[sweep.Arm(name, gin_params=params, labels={"setting": desc})
          for name, desc, params in ARMS],
    base_gin=("lifecycle/default.gin", "experiment.gin"),
    seeds=(0, 1, 2),
    root_param="grpo_family_cell.root",
    seed_params=("grpo_family_cell.seed",),
    # sequence- and token-level aggregation, symmetric and asymmetric clip
    tiny_arms=("grpo", "clip_higher"),
)
# The binding of the base's lifecycle root: the test suite points every
# experiment that starts from the tiny lifecycle at one shared root.
BASE_ROOT_PARAM = "grpo_family_cell.base_root"


# Iterations averaged at each end of a run for the first -> last change
# (1: entropy at the first vs the last iteration, the brief's measure).
WINDOW = 1
# (label, key in a GRPO iteration's metrics row)
CURVES = (("policy entropy (nats/token)", "policy_entropy"),
          ("reward = judge", "reward"),
          ("KL to SFT (nats/answer)", "kl"),
          ("clip fraction", "clip_fraction"),
          ("response tokens", "response_length"))
# A second, less noisy entropy measure: the mean over the last TAIL
# iterations over the first iteration's.
TAIL = 3
# Pairwise arm comparisons of interest: (arm, baseline arm).
PAIRS = (("token_mean", "grpo"), ("clip_higher", "token_mean"),
         ("clip_higher", "grpo"), ("dr_grpo", "grpo"), ("gspo", "grpo"))


def _per_cell(cell: sweep.Cell) -> dict[str, Any]:
  its = sweep.iteration_rows(
      cell, os.path.join(cell_lib.GRPO_DIR, "metrics.jsonl"),
      ("policy_entropy", "reward"))
  out: dict[str, Any] = {"seed": cell.seed, "its": its,
                         "te": cell.json(cell_lib.TEST_EVAL),
                         "answers": cell.jsonl(cell_lib.TEST_ANSWERS),
                         "wall_s": cell.record.get("wall_s", math.nan),
                         **sweep.first_last(its, [k for _, k in CURVES],
                                            WINDOW)}
  out["entropy_ratio"] = (out["last/policy_entropy"]
                          / out["first/policy_entropy"])
  # Less noisy: the mean of the last TAIL iterations over the first.
  out["entropy_ratio_tail"] = (
      float(np.mean([r["policy_entropy"] for r in its[-TAIL:]]))
      / out["first/policy_entropy"])
  return out


def _flat(per: Sequence[dict], key: str) -> list[float]:
  """Per-(seed, prompt) scores of one arm, seeds in order, prompts in the
  test file's order."""
  return [r[key] for p in per for r in p["answers"]]


def summarize(cells: Sequence[sweep.Cell], out_dir: str, tiny: bool) -> str:
  arms = [a for a in SWEEP.arms if any(c.arm.name == a.name for c in cells)]
  per = {a.name: [_per_cell(c) for c in sorted(cells, key=lambda c: c.seed)
                  if c.arm.name == a.name] for a in arms}
  first = next(iter(per.values()))[0]
  n_it = len(first["its"])
  te0 = first["te"]
  seeds = sorted({c.seed for c in cells})
  n_test = te0["test_records"]
  md = ["# The GRPO family: loss aggregation and clipping vs entropy and "
        "test reward" + (" (tiny scale)" if tiny else ""), ""]
  md.append(
      "GRPO from the demo's SFT model (runs/demo_base/sft) on the world's "
      "train instruction split, rewarded by the world's programmatic judge "
      f"(`default` preset), {n_it} iterations, seeds {seeds}; every arm has "
      "the same lr, group size, prompts, epochs and KL coefficient "
      "(experiment.gin). policy_entropy = mean entropy (nats) of the "
      "sampling policy over the rollout's response tokens; KL = summed log "
      "π − log π_SFT over a sampled answer (k1); clip fraction = share of "
      "the loss's weight at a clipped ratio. First / last = iteration 1 / "
      f"iteration {n_it}; mean ± sd over seeds.")
  md.append("")
  md.append("## Entropy and training rollouts (train prompts, sampled at "
            "T = 1)\n")
  rows = []
  for a in arms:
    ps = per[a.name]
    row: dict[str, Any] = {"arm": a.name, "setting": a.labels["setting"],
                           "seeds": len(ps)}
    row["entropy last / first"] = sweep.fmt_mean_sd(
        [p["entropy_ratio"] for p in ps])
    row[f"entropy last {TAIL} / first"] = sweep.fmt_mean_sd(
        [p["entropy_ratio_tail"] for p in ps])
    for label, key in CURVES:
      row[label] = (f"{sweep.fmt_mean_sd([p[f'first/{key}'] for p in ps])}"
                    f" → {sweep.fmt_mean_sd([p[f'last/{key}'] for p in ps])}")
    rows.append(row)
  md.append(sweep.write_table(
      rows, ["arm", "setting", "seeds", "entropy last / first",
             f"entropy last {TAIL} / first"]
      + [c[0] for c in CURVES]))
  md.append("Entropy ratio, arm vs arm, paired t over seeds (a seed fixes "
            "the prompt order, so both arms' iteration k samples the same "
            "prompts, and iteration 1's rollout is the same SFT model's):"
            "\n")
  erows = []
  for x, y in PAIRS:
    if x in per and y in per:
      row = {"comparison": f"{x} − {y}"}
      for key, label in (("entropy_ratio", "Δ entropy last / first"),
                         ("entropy_ratio_tail",
                          f"Δ entropy last {TAIL} / first")):
        row[label] = sweep.fmt_paired_t(sweep.paired_t(
            [p[key] for p in per[x]], [p[key] for p in per[y]]))
      erows.append(row)
  if erows:
    md.append(sweep.write_table(erows, list(erows[0])))

  md.append(f"## Final policy on the test split ({n_test} prompts, greedy, "
            "paired with the SFT model's greedy answers)\n")
  md.append(
      "Two judges: the programmatic judge (**the training reward: "
      "circular**, GRPO optimized exactly this function on train prompts) "
      "and the demo's reward model (a differently built judge: learned "
      "from preference pairs, never a GRPO signal; normalized score). "
      "Gains are policy − SFT on the same prompts; their CI and p are a "
      "paired t over seeds of the per-seed mean gain. SFT itself scores "
      f"judge {te0['test']['sft_judge']:.3f}, RM "
      f"{te0['test']['sft_rm']:+.3f}, {te0['test']['sft_words']:.1f} "
      "words.\n")
  trows = []
  for a in arms:
    ps = per[a.name]
    tes = [p["te"]["test"] for p in ps]
    g_j = sweep.paired_t([t["judge"] for t in tes],
                         [t["sft_judge"] for t in tes])
    g_r = sweep.paired_t([t["rm"] for t in tes], [t["sft_rm"] for t in tes])
    trows.append({
        "arm": a.name, "seeds": len(ps),
        "judge (circular)": sweep.fmt_mean_sd([t["judge"] for t in tes]),
        "judge gain vs SFT": sweep.fmt_paired_t(g_j),
        "judge win rate vs SFT": sweep.fmt_mean_sd(
            [t["paired_judge"]["win_rate_vs_ref"] for t in tes]),
        "RM score": sweep.fmt_mean_sd([t["rm"] for t in tes]),
        "RM gain vs SFT": sweep.fmt_paired_t(g_r),
        "KL to SFT": sweep.fmt_mean_sd([t["kl_to_sft"] for t in tes], 2),
        "words": sweep.fmt_mean_sd([t["words"] for t in tes], 1)})
  md.append(sweep.write_table(trows, list(trows[0])))
  md.append("Per prompt vs SFT (each prompt's policy score averaged over "
            "the seeds vs the SFT model's; wins/losses/ties, mean gain "
            "with a 95% bootstrap CI over prompts, sign-test p):\n")
  prow, gains = [], {}
  for a in arms:
    ps = per[a.name]
    for score, ref, label in (("judge", "sft_judge", "judge (circular)"),
                              ("rm", "sft_rm", "reward model")):
      pol = np.mean([[r[score] for r in p["answers"]] for p in ps], axis=0)
      sft = [r[ref] for r in ps[0]["answers"]]
      st = paired_stats(pol, sft)
      gains.setdefault(a.name, {})[score] = st
      prow.append({"arm": a.name, "score": label,
                   **sweep.fmt_paired_stats(st)})
  md.append(sweep.write_table(prow, list(prow[0])))
  md.append("Arm vs arm on the test split, paired over seeds × prompts "
            "(the same seed and the same prompt in both arms; "
            f"{len(seeds)} × {n_test} pairs; wins = the first arm scores "
            "higher; mean difference with a 95% bootstrap CI, sign-test p); "
            "the last column is a paired t over seeds of the per-seed mean "
            "judge:\n")
  crow = []
  for x, y in PAIRS:
    if x not in per or y not in per:
      continue
    sx = {p["seed"] for p in per[x]} & {p["seed"] for p in per[y]}
    px = [p for p in per[x] if p["seed"] in sx]
    py = [p for p in per[y] if p["seed"] in sx]
    for score, label in (("judge", "judge (circular)"),
                         ("rm", "reward model")):
      st = paired_stats(_flat(px, score), _flat(py, score))
      t = sweep.paired_t([p["te"]["test"][score] for p in px],
                         [p["te"]["test"][score] for p in py])
      crow.append({"comparison": f"{x} − {y}", "score": label,
                   **sweep.fmt_paired_stats(st),
                   "paired t over seeds": sweep.fmt_paired_t(t)})
  if crow:
    md.append(sweep.write_table(crow, list(crow[0])))
  tasks = sorted({r["task"] for r in first["answers"]})
  md.append("Per task (test split, policy − SFT, mean over prompts and "
            "seeds): judge gain / RM gain / word-count change; the SFT "
            "model's mean words per task in the last row:\n")
  krow = []
  for a in arms:
    k = {"arm": a.name}
    for task in tasks:
      rs = [r for p in per[a.name] for r in p["answers"]
            if r["task"] == task]
      g = [np.mean([r[key] - r[f"sft_{key}"] for r in rs])
           for key in ("judge", "rm", "words")]
      k[task] = f"{g[0]:+.3f} / {g[1]:+.2f} / {g[2]:+.1f}"
    krow.append(k)
  sft_words = {task: np.mean([r["sft_words"] for r in first["answers"]
                              if r["task"] == task]) for task in tasks}
  krow.append({"arm": "SFT words",
               **{task: f"{w:.1f}" for task, w in sft_words.items()}})
  md.append(sweep.write_table(krow, ["arm"] + tasks))
  walls = [p["wall_s"] for ps in per.values() for p in ps]
  md.append(f"Cell wall time (GRPO + test split, this machine, shared with "
            f"other runs): {sweep.fmt_mean_sd(walls, 0)} s over {len(walls)}"
            " cells.\n")
  _plot(arms, per, os.path.join(out_dir, "grpo_family.png"))
  md.append("![policy entropy, reward, KL, clip fraction and length per "
            "iteration per arm (mean over seeds, band = sd); entropy ratio "
            "and test judge / RM gain vs SFT per arm](grpo_family.png)\n")
  return "\n".join(md)


def _plot(arms: Sequence[sweep.Arm], per: Mapping[str, Sequence[dict]],
          path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
  flat = axes.ravel()
  # per-arm panels: (axis, title, value of one cell)
  per_arm = (
      (flat[5], "entropy ratio: last / first iteration",
       lambda p: p["entropy_ratio"]),
      (flat[6], "test: judge gain vs SFT (circular)",
       lambda p: p["te"]["test"]["judge"] - p["te"]["test"]["sft_judge"]),
      (flat[7], "test: reward-model gain vs SFT",
       lambda p: p["te"]["test"]["rm"] - p["te"]["test"]["sft_rm"]))
  for i, a in enumerate(arms):
    color = f"C{i}"
    ps = per[a.name]
    x = [r["iteration"] for r in ps[0]["its"]]
    for k, (label, key) in enumerate(CURVES):
      curves = np.array([[r[key] for r in p["its"]] for p in ps])
      m = curves.mean(axis=0)
      sd = curves.std(axis=0, ddof=1) if len(ps) > 1 else np.zeros_like(m)
      flat[k].fill_between(x, m - sd, m + sd, color=color, alpha=0.12)
      flat[k].plot(x, m, color=color, lw=2, label=a.name)
      flat[k].set(title=label + "\n(mean over seeds, band = sd)",
                  xlabel="GRPO iteration")
    for ax, title, value in per_arm:
      v = np.array([value(p) for p in ps])
      ax.bar(i, v.mean(), color=color, alpha=0.5,
             yerr=v.std(ddof=1) if len(v) > 1 else 0, capsize=4)
      ax.plot([i] * len(v), v, "k.", alpha=0.7)
      ax.set(title=title + "\n(mean ± sd over seeds; dots: seeds)")
  for ax, _, _ in per_arm:
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(arms)), [a.name for a in arms], rotation=20)
  flat[5].axhline(1, color="k", lw=0.6, ls="--")
  for ax in flat:
    ax.grid(alpha=0.3)
  flat[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
