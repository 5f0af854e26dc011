"""MoE vs dense at equal active parameters and equal FLOPs (issue 19, row
15; seed 003: "Mixture of Experts (MoE) - Only activate a subset of
parameters per token. Larger model, same inference cost").

Claim: a mixture of experts beats the dense model it matches in active
parameters and FLOPs per token (it holds more parameters at the same
compute).

Arms (base.gin: a ~1.8M-parameter decoder, 200 pretraining steps of 16 x
128 tokens on the embedded world, the same tokens, optimizer and schedule
in every arm; only the MLP differs):
  dense          MLP width F = 384;
  moe_top1       4 experts of width F, top-1: the dense model's active
                 parameters and FLOPs (plus a 128 x 4 router), 4x its MLP
                 parameters;
  moe_top2_half  4 experts of width F/2, top-2: the same active FLOPs in
                 finer experts;
  dense_wide     one MLP of width 4F: the MoE arms' total parameters,
                 every one active (2.3x the FLOPs): the upper reference.
Routing is dropless (every token reaches its k experts) with the
load-balancing loss (0.01) and the router z-loss (0.001). Seeds vary the
world (text, tokenizer, held-out split), the init and the data order; the
arms of one seed share all three, so arm - dense is a paired comparison.

Measured per run: the held-out loss at the end (every 20th document of the
world's corpus, never trained on; nothing is selected on it), the training
loss curve, tokens/s, and for MoE arms the load-balancing statistic
(X * sum_e f_e P_e, its minimum k = balanced; logged every 5 steps, mean
over layers) and the router z-loss. Parameters and training FLOPs per
token come from the run's model config (`lifejax.model.flops`, which
counts a token's router and k experts).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from lifejax import sweep

F = 384
EXPERTS = 4
PLOT = "moe_vs_dense.png"


def _arm(name: str, **bind: Any) -> sweep.Arm:
  return sweep.Arm(name=name, gin_params=tuple(
      f"TransformerConfig.{k}={v}" for k, v in bind.items()),
                   labels=dict(bind))


SWEEP = sweep.Sweep(
    arms=(
        _arm("dense", mlp_dim=F, num_experts=0),
        _arm("moe_top1", mlp_dim=F, num_experts=EXPERTS,
             experts_per_token=1),
        _arm("moe_top2_half", mlp_dim=F // 2, num_experts=EXPERTS,
             experts_per_token=2),
        _arm("dense_wide", mlp_dim=EXPERTS * F, num_experts=0),
    ),
    base_gin=("base.gin",),
    seeds=(0, 1, 2),
    root_param="RUN_DIR",
    seed_params=("world_corpus_files.seed", "pretrain.seed"),
    # --tiny: one dense and one MoE arm exercise every code path (the other
    # two differ only in bindings); one compile each.
    tiny_arms=("dense", "moe_top1"),
)
MOE_ARMS = ("moe_top1", "moe_top2_half")


def model_config(cell: sweep.Cell) -> Any:
  """The cell's TransformerConfig, as its lineage records it."""
  from lifejax.model.config import TransformerConfig  # pylint: disable=g-import-not-at-top
  lineage = cell.json("lineage.json")
  if lineage is None:
    raise ValueError(f"{cell.run_dir}: no lineage.json (the run did not "
                     "finish)")
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  return TransformerConfig(**{k: v for k, v in lineage["model"].items()
                              if k in fields})


def param_counts(cfg: Any) -> dict[str, int]:
  """Stored parameters, and those one token uses (its k experts of E)."""
  total = cfg.num_params()
  unused = 0
  if cfg.num_experts:
    unused = cfg.num_layers * (cfg.layer_matmul_params()
                               - cfg.layer_matmul_params(active=True))
  return {"total": total, "active": total - unused}


def train_rows(cell: sweep.Cell) -> list[dict[str, Any]]:
  rows = [r for r in cell.jsonl("metrics.jsonl")
          if "loss" in r and "tokens_per_sec" in r]
  if not rows:
    raise ValueError(f"{cell.run_dir}: metrics.jsonl has no training rows")
  return rows


def cell_stats(cell: sweep.Cell) -> dict[str, float]:
  from lifejax.model import flops  # pylint: disable=g-import-not-at-top
  summary = cell.json("summary.json")
  if summary is None:
    raise ValueError(f"{cell.run_dir}: no summary.json (the run did not "
                     "finish)")
  ev = (summary.get("eval") or {}).get("eval/loss")
  if ev is None:
    raise ValueError(f"{cell.run_dir}: summary.json has no eval/loss")
  cfg = model_config(cell)
  rows = train_rows(cell)
  seq = _seq_len(cell)
  # The first logged window includes the compile; later ones are steady.
  tps = [r["tokens_per_sec"] for r in rows[1:]] or [rows[0]["tokens_per_sec"]]
  out = {"eval_loss": float(ev), "final_step": float(summary["final_step"]),
         "tokens_per_sec": float(np.median(tps)),
         "flops_per_token": flops.train_flops_per_token(cfg, seq),
         "tokens": float(sum(r.get("weight", 0.0) for r in rows)),
         **{f"params_{k}": float(v) for k, v in param_counts(cfg).items()}}
  if cfg.num_experts:
    last = rows[-max(1, len(rows) // 10):]
    for k in ("moe_aux_loss", "moe_z_loss", "moe_dropped_fraction"):
      out[f"first/{k}"] = float(rows[0][k])
      out[f"last/{k}"] = float(np.mean([r[k] for r in last]))
  return out


def heldout_batch(cell: sweep.Cell, rows: int, seq: int
                  ) -> dict[str, np.ndarray]:
  """The first rows x seq tokens of the cell's held-out documents (each
  with BOS, concatenated in file order), as an LM batch."""
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from lifejax.run import artifacts  # pylint: disable=g-import-not-at-top
  tok = artifacts.load_tokenizer(cell.run_dir)
  ids: list[int] = []
  for path in sorted(glob.glob(os.path.join(cell.run_dir, "heldout",
                                            "*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      for line in f:
        ids += tok.encode(json.loads(line)["text"], add_bos=True)
        if len(ids) > rows * seq:
          break
    if len(ids) > rows * seq:
      break
  if len(ids) <= rows * seq:
    raise ValueError(f"{cell.run_dir}/heldout: {len(ids)} tokens, need "
                     f"{rows * seq + 1}")
  a = np.asarray(ids[:rows * seq + 1], np.int32)
  return {"tokens": a[:-1].reshape(rows, seq),
          "targets": a[1:].reshape(rows, seq),
          "loss_mask": np.ones((rows, seq), np.float32),
          "segment_ids": np.ones((rows, seq), np.int32),
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32),
                                       (rows, seq)).copy()}


def routing_stats(cell: sweep.Cell, rows: int = 8) -> dict[str, Any]:
  """The final model of a MoE cell on held-out tokens: each layer's share
  of the (token, choice) assignments per expert, and the gradient norm of
  the cross-entropy alone (no aux losses) with respect to the routers
  and, for scale, the experts' weights.

  With top-1 and gates renormalised over the chosen experts (Mixtral's
  convention, moe.route), a token's one gate is p / p = 1 whatever the
  router says, so the LM loss cannot train the router: only the
  load-balancing and z-losses move it."""
  import jax  # pylint: disable=g-import-not-at-top
  from lifejax import sharding  # pylint: disable=g-import-not-at-top
  from lifejax.losses.lm import make_lm_loss_fn  # pylint: disable=g-import-not-at-top
  from lifejax.model import moe, transformer  # pylint: disable=g-import-not-at-top
  from lifejax.run import artifacts  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(model_config(cell), layer_loop="unroll")
  mesh_cfg = sharding.MeshConfig(1, 1, 1)
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, params = artifacts.load_params(
      cell.run_dir, transformer.Transformer, cfg, mesh, mesh_cfg.rules)
  batch = heldout_batch(cell, rows, _seq_len(cell))
  # The layers run unrolled, so moe.route is traced once per layer: record
  # the experts it picks and return them from the traced gradient.
  picked: list[jax.Array] = []
  route = moe.route

  def recording_route(logits, k):
    out = route(logits, k)
    picked.append(out[1])
    return out

  loss_fn = make_lm_loss_fn(graphdef, moe_losses=False)

  def loss_and_picks(p):
    picked.clear()
    return loss_fn(p, batch, None)[0], list(picked)

  moe.route = recording_route
  try:
    with jax.set_mesh(mesh):
      grads, picks = jax.jit(jax.grad(loss_and_picks, has_aux=True))(params)
  finally:
    moe.route = route
  share = [np.bincount(np.asarray(e).reshape(-1), minlength=cfg.num_experts)
           / e.size for e in picks]
  norms: dict[str, float] = {}
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = str(getattr(path[-1], "key", path[-1]))
    if name.startswith("w_"):
      norms[name] = norms.get(name, 0.0) + float(np.sum(np.square(g)))
  return {"share": [s.tolist() for s in share],
          "max_share": float(max(s.max() for s in share)),
          "min_share": float(min(s.min() for s in share)),
          "router_grad": math.sqrt(norms.get("w_router", 0.0)),
          "expert_grad": math.sqrt(sum(norms.get(k, 0.0) for k in (
              "w_gate", "w_up", "w_down")))}


def _seq_len(cell: sweep.Cell) -> int:
  """The pretraining row length, from the run's operative gin config."""
  path = os.path.join(cell.run_dir, "operative_config.gin")
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.startswith("pretrain.seq_len ="):
        return int(line.split("=", 1)[1])
  raise ValueError(f"{path}: no pretrain.seq_len binding")


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by_arm: dict[str, list[sweep.Cell]] = {}
  for c in cells:
    by_arm.setdefault(c.arm.name, []).append(c)
  for cs in by_arm.values():
    cs.sort(key=lambda c: c.seed)
  stats = {c.run_dir: cell_stats(c) for c in cells}
  seeds = sorted({c.seed for c in cells})
  col = lambda arm, k: [stats[c.run_dir][k] for c in by_arm[arm]]  # noqa: E731
  rows = []
  for arm in SWEEP.arms:
    if arm.name not in by_arm:
      continue
    s0 = stats[by_arm[arm.name][0].run_dir]
    ppl = [math.exp(v) for v in col(arm.name, "eval_loss")]
    row = {"arm": arm.name,
           "experts x width, top-k": (
               f"{arm.labels['num_experts']} x {arm.labels['mlp_dim']}, "
               f"top-{arm.labels['experts_per_token']}"
               if arm.labels["num_experts"] else
               f"dense {arm.labels['mlp_dim']}"),
           "total params": f"{s0['params_total'] / 1e6:.3f}M",
           "active params": f"{s0['params_active'] / 1e6:.3f}M",
           "train MFLOPs / token": f"{s0['flops_per_token'] / 1e6:.2f}",
           "held-out loss": sweep.fmt_mean_sd(col(arm.name, "eval_loss")),
           "held-out ppl": sweep.fmt_mean_sd(ppl, 2),
           "tokens/s": sweep.fmt_mean_sd(col(arm.name, "tokens_per_sec"), 0)}
    if arm.name in MOE_ARMS:
      row["balance stat first → last (min k)"] = (
          f"{np.mean(col(arm.name, 'first/moe_aux_loss')):.3f} → "
          + sweep.fmt_mean_sd(col(arm.name, "last/moe_aux_loss")))
      row["router z-loss (last)"] = sweep.fmt_mean_sd(
          col(arm.name, "last/moe_z_loss"), 2)
      row["dropped"] = f"{max(col(arm.name, 'last/moe_dropped_fraction')):.3f}"
    rows.append(row)
  md = ["# MoE vs dense: results", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  cols = list(dict.fromkeys(k for r in rows for k in r))
  md += [f"Seeds {seeds}; mean ± sd over seeds. Held-out loss: the final "
         "model on the held-out 5% of the world's documents (nats per "
         "token; ppl = exp). Params: stored / used by one token (its k "
         "experts and the router). Train FLOPs per token: "
         "`flops.train_flops_per_token` (matmuls, 3 x forward, causal "
         "attention). Tokens/s: median over the run's logged windows "
         "(the first, with the compile, left out). Balance statistic: "
         "E x sum_e f_e P_e (the load-balancing loss; k when balanced, E x "
         "k at collapse), mean over layers, first logged window → mean of "
         "the last 10% of windows. Dropped: fraction of assignments "
         "dropped (0: dropless routing).", "",
         sweep.write_table(rows, cols)]
  prow = []
  if "dense" in by_arm:
    for arm in SWEEP.arms:
      if arm.name == "dense" or arm.name not in by_arm:
        continue
      t = sweep.paired_t(col(arm.name, "eval_loss"), col("dense", "eval_loss"))
      prow.append({"arm - dense": arm.name, "n": int(t["n"]),
                   "held-out loss difference [95% CI], p":
                       sweep.fmt_paired_t(t, 4),
                   "per seed": " / ".join(
                       f"{a - b:+.3f}" for a, b in zip(
                           col(arm.name, "eval_loss"),
                           col("dense", "eval_loss")))})
  if prow:
    md += ["## Paired over seeds: arm − dense (held-out loss; negative = "
           "better than dense)", "", sweep.write_table(prow, list(prow[0]))]
  rrows = []
  for name in MOE_ARMS:
    for c in by_arm.get(name, []):
      r = routing_stats(c)
      rrows.append({
          "arm": name, "seed": c.seed,
          "expert shares per layer": " / ".join(
              ",".join(f"{v:.2f}" for v in layer) for layer in r["share"]),
          "min-max share": f"{r['min_share']:.2f}-{r['max_share']:.2f}",
          "LM-loss grad norm, routers": f"{r['router_grad']:.3g}",
          "LM-loss grad norm, experts": f"{r['expert_grad']:.3g}"})
  if rrows:
    md += ["", "## Routing of the final models (held-out tokens)", "",
           "Each layer's share of the (token, choice) assignments per "
           "expert on the first 8 x seq_len held-out tokens (1/E each when "
           "balanced), and the gradient norm of the cross-entropy alone (no "
           "aux losses) with respect to all routers and all experts' "
           "weights, on the same tokens.", "",
           sweep.write_table(rrows, list(rrows[0]))]
  _plot(by_arm, stats, os.path.join(out_dir, PLOT))
  md += ["", f"![held-out loss vs FLOPs, training curves]({PLOT})"]
  return "\n".join(md) + "\n"


def _plot(by_arm: dict[str, list[sweep.Cell]], stats: dict[str, Any],
          path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
  colors = {"dense": "tab:blue", "moe_top1": "tab:red",
            "moe_top2_half": "tab:orange", "dense_wide": "tab:green"}
  for name, cs in by_arm.items():
    color = colors.get(name, "k")
    fl = [stats[c.run_dir]["flops_per_token"] * stats[c.run_dir]["tokens"]
          / 1e12 for c in cs]
    ev = [stats[c.run_dir]["eval_loss"] for c in cs]
    axes[0].plot(fl, ev, "o", color=color, label=name, alpha=0.8)
    for k, c in enumerate(cs):
      rows = train_rows(c)
      axes[1].plot([r["step"] for r in rows], [r["cross_entropy"]
                                                for r in rows],
                   color=color, alpha=0.6, lw=1,
                   label=name if k == 0 else None)
      if name in MOE_ARMS:
        axes[2].plot([r["step"] for r in rows],
                     [r["moe_aux_loss"] for r in rows], color=color,
                     alpha=0.6, lw=1, label=name if k == 0 else None)
  axes[0].set_xlabel("training TFLOPs (flops.py per token x tokens)")
  axes[0].set_ylabel("held-out loss (nats/token)")
  axes[0].set_title("final held-out loss, one point per seed")
  axes[1].set_xlabel("step")
  axes[1].set_ylabel("training cross-entropy")
  axes[1].set_yscale("log")
  axes[1].set_title("training curves, one line per seed")
  axes[2].set_xlabel("step")
  axes[2].set_ylabel("load-balancing statistic (k = balanced)")
  axes[2].set_title("MoE load balance (mean over layers)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
