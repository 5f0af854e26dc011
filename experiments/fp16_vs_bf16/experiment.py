"""bf16 vs fp16 (issue 19, row 2; seeds 000, 5.2 "fp16's narrow range ->
underflow, overflow, NaNs, loss spikes. bf16 ... usually no loss scaling
needed" and the troubleshooting line "Training diverges early in fp16. Try
bf16 or use loss scaling").

Claim: fp16 compute without loss scaling fails (gradients underflow, or
steps are skipped); fp16 with dynamic loss scaling and bf16 both train.

Arms (each a 100-step pretraining run, experiments/warmup/base.gin; params
and optimizer state f32 in every arm, matmuls accumulate in f32):
  f32          compute in float32: the reference
  bf16         bfloat16 compute (the demo's setting)
  fp16         float16 compute, no loss scale: lifejax's step differentiates
               the token-summed loss (loss x token count), so the backward
               sees a built-in static scale of ~2,000
  fp16_scaled  float16 + dynamic loss scaling (LossScaleConfig defaults:
               2^15, halve on overflow, double after 2000 good steps)
  fp16_mean    stressor: float16 with a static scale of 2^-11 (~1 / tokens
               per batch), so the backward sees the per-token mean loss, as
               a PyTorch fp16 run without a GradScaler does
  grad_probe   no training: gradients at the f32 arm's init and final params
               under fp16 / bf16 compute vs f32, per loss convention
               (grad_probe.py), to show why an arm does or does not underflow
Seeds vary the world, the init and the data order; all arms of a seed share
them (paired).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.fp16_vs_bf16.grad_probe, as gin
  sys.path.insert(0, _REPO)  # imports it

from lifejax import sweep  # noqa: E402

from experiments.fp16_vs_bf16 import grad_probe  # noqa: E402

_DT = "TransformerConfig.compute_dtype"
_SCALED = "pretrain.loss_scale=@LossScaleConfig()"
MEAN_SCALE = 2.0 ** -11  # ~1 / (16 x 128 tokens)
TRAIN_ARMS = ("f32", "bf16", "fp16", "fp16_scaled", "fp16_mean")
REFERENCE = "f32"
PLOT = "fp16_curves.png"

SWEEP = sweep.Sweep(
    arms=[
        sweep.Arm("f32", gin_params=(f"{_DT}='float32'",),
                  labels={"dtype": "float32", "scale": "none"}),
        sweep.Arm("bf16", gin_params=(f"{_DT}='bfloat16'",),
                  labels={"dtype": "bfloat16", "scale": "none"}),
        sweep.Arm("fp16", gin_params=(f"{_DT}='float16'",),
                  labels={"dtype": "float16", "scale": "none (token sum)"}),
        sweep.Arm("fp16_scaled", gin_params=(f"{_DT}='float16'", _SCALED),
                  labels={"dtype": "float16", "scale": "dynamic from 2^15"}),
        sweep.Arm("fp16_mean", gin_params=(
            f"{_DT}='float16'", _SCALED,
            f"LossScaleConfig.initial_scale={MEAN_SCALE!r}",
            f"LossScaleConfig.min_scale={MEAN_SCALE!r}",
            "LossScaleConfig.growth_interval=1000000000"),
                  labels={"dtype": "float16",
                          "scale": "static 2^-11 (mean loss)"}),
        # run.stage as a binding (applied after every gin file): tiny.gin
        # re-includes the base, which names the pretraining stage.
        sweep.Arm("grad_probe", gin_files=("probe.gin",),
                  gin_params=("run.stage=@fp16_grad_probe",),
                  labels={"probe": True}),
    ],
    base_gin=("base.gin",),
    seeds=(0, 1, 2),
    root_param="RUN_DIR",
    seed_params=("world_corpus_files.seed", "pretrain.seed"),
    # the test suite's tiny run: the f32 reference, fp16 with dynamic loss
    # scaling and the gradient probe (which reads the f32 run); bf16,
    # unscaled fp16 and the static-scale arm differ from these only in
    # bindings
    tiny_arms=("f32", "fp16_scaled", "grad_probe"),
)


def train_curve(cell: sweep.Cell) -> dict[str, np.ndarray]:
  rows = [r for r in cell.jsonl("metrics.jsonl")
          if "loss" in r and "grad_norm" in r]
  if not rows:
    raise ValueError(f"{cell.run_dir}: metrics.jsonl has no training rows")
  keys = ["step", "loss", "grad_norm", "skipped"] + (
      ["loss_scale"] if "loss_scale" in rows[0] else [])
  return {k: np.asarray([float(r[k]) for r in rows]) for k in keys}


def cell_stats(cell: sweep.Cell) -> dict[str, float]:
  summary = cell.json("summary.json")
  if summary is None:
    raise ValueError(f"{cell.run_dir}: no summary.json (the run did not "
                     "finish)")
  c = train_curve(cell)
  ev = (summary.get("eval") or {}).get("eval/loss")
  first_ok = np.flatnonzero(c["skipped"] == 0)
  return {"eval_loss": math.nan if ev is None else float(ev),
          "final_train_loss": float(np.mean(c["loss"][-10:])),
          "skipped": float(summary.get("skipped_steps", 0)),
          "first_update": float(c["step"][first_ok[0]]) if first_ok.size
          else math.nan,
          "final_scale": float(c["loss_scale"][-1]) if "loss_scale" in c
          else math.nan}


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by_arm: dict[str, list[sweep.Cell]] = {}
  for c in cells:
    by_arm.setdefault(c.arm.name, []).append(c)
  for v in by_arm.values():
    v.sort(key=lambda c: c.seed)
  stats = {c.run_dir: cell_stats(c) for c in cells
           if c.arm.name in TRAIN_ARMS}
  seeds = sorted({c.seed for c in cells})
  md = ["# bf16 vs fp16: results", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  md += [f"Seeds {seeds}; mean ± sd over seeds. Held-out loss: the final "
         "model on the held-out 5% of documents (nats per token). Skipped: "
         "steps the non-finite guard skipped (loss, gradient or update not "
         "finite), summed over seeds; first update: the first step that was "
         "not skipped (mean over seeds).", ""]
  rows = []
  for arm in SWEEP.arms:
    if arm.name not in TRAIN_ARMS or arm.name not in by_arm:
      continue
    st = [stats[c.run_dir] for c in by_arm[arm.name]]
    col = lambda k: [s[k] for s in st]  # noqa: E731
    rows.append({
        "arm": arm.name, "compute": arm.labels["dtype"],
        "loss scale": arm.labels["scale"],
        "held-out loss": sweep.fmt_mean_sd(col("eval_loss")),
        "train loss (last 10)": sweep.fmt_mean_sd(col("final_train_loss")),
        "skipped steps": f"{sum(col('skipped')):.0f}",
        "first update": f"{np.nanmean(col('first_update')):.1f}",
        "final loss scale": (f"{np.mean(col('final_scale')):g}"
                             if not math.isnan(col("final_scale")[0])
                             else "-")})
  if rows:
    md.append(sweep.write_table(rows, list(rows[0])))
  md += ["## Against f32, paired over seeds (held-out loss)", ""]
  ref = [stats[c.run_dir]["eval_loss"] for c in by_arm.get(REFERENCE, [])]
  prow = []
  for name in TRAIN_ARMS:
    if name == REFERENCE or name not in by_arm or not ref:
      continue
    vals = [stats[c.run_dir]["eval_loss"] for c in by_arm[name]]
    t = sweep.paired_t(vals, ref)
    prow.append({"arm": name, "n": int(t["n"]),
                 "arm - f32": f"{t['mean_diff']:+.4f}",
                 "95% CI": f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                 "p": t["p"]})
  if prow:
    md.append(sweep.write_table(prow, list(prow[0])))
  md += _probe_tables(by_arm.get("grad_probe", []))
  _plot(by_arm, os.path.join(out_dir, PLOT))
  md += ["", f"![loss curves and loss scale]({PLOT})"]
  return "\n".join(md) + "\n"


def _probe_tables(cells: list[sweep.Cell]) -> list[str]:
  """grad_probe's probe.json, mean ± sd over seeds, per point and mode."""
  probes = [c.json(grad_probe.PROBE_JSON) for c in cells]
  probes = [p for p in probes if p]
  if not probes:
    return []
  md = ["## grad_probe: gradients under fp16 compute vs f32", "",
        f"{probes[0]['num_batches']} held-out batches per seed, "
        f"{len(probes)} seed(s); at the init and at the f32 arm's final "
        "params. Logits cotangent: share of its non-zero entries that round "
        "to zero in fp16 (<= 2^-25), are fp16 subnormals (< 2^-14) or round "
        "to inf (>= 65520) when the head's matmul casts it. Param grads: "
        "relative L2 error vs f32 compute, share of entries zeroed, runs "
        "with a non-finite entry.", ""]
  rows = []
  for point in ("init", "final"):
    modes = probes[0]["points"][point]
    for mode in modes:
      if mode == "param_grad_f32":
        continue
      vals = lambda k: [p["points"][point][mode].get(k, math.nan)  # noqa
                        for p in probes]
      pct = lambda k: sweep.fmt_mean_sd([100 * v for v in vals(k)], 2)  # noqa
      rows.append({
          "params": point, "compute / loss convention": mode,
          "logits rounding to 0 %": (pct("logits_flushed")
                               if mode.startswith("fp16") else "-"),
          "logits subnormal %": (pct("logits_subnormal")
                                 if mode.startswith("fp16") else "-"),
          "logits overflow %": (pct("logits_overflow")
                                if mode.startswith("fp16") else "-"),
          "param grad rel. error": (
              sweep.fmt_mean_sd(vals("rel_err"), 4)
              if not all(math.isnan(v) for v in vals("rel_err"))
              else "non-finite"),
          "param grads zeroed %": pct("zeroed"),
          "non-finite": f"{sum(vals('nonfinite')):.0f}/{len(probes)}"})
  md.append(sweep.write_table(rows, list(rows[0])))
  md += ["", "f32 parameter gradients of the mean loss (what an fp16 "
         "gradient buffer would hold):", ""]
  rows = []
  for point in ("init", "final"):
    vals = lambda k: [100 * p["points"][point]["param_grad_f32"][k]  # noqa
                      for p in probes]
    rows.append({"params": point,
                 "entries rounding to 0 %": sweep.fmt_mean_sd(
                     vals("rounds_to_0"), 2),
                 "entries < 2^-14 %": sweep.fmt_mean_sd(vals("below_2^-14"),
                                                        2)})
  md.append(sweep.write_table(rows, list(rows[0])))
  return md


def _plot(by_arm: dict[str, list[sweep.Cell]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colors = {"f32": "black", "bf16": "tab:blue", "fp16": "tab:green",
            "fp16_scaled": "tab:orange", "fp16_mean": "tab:red"}
  fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name in TRAIN_ARMS:
    for k, cell in enumerate(by_arm.get(name, [])):
      c = train_curve(cell)
      ax.plot(c["step"], c["loss"], color=colors[name], alpha=0.75, lw=1,
              label=name if k == 0 else None)
      bad = c["skipped"] > 0
      if bad.any():
        ax.plot(c["step"][bad], c["loss"][bad], "x", color=colors[name])
      if "loss_scale" in c:
        ax_s.plot(c["step"], c["loss_scale"], color=colors[name], lw=1,
                  alpha=0.75, label=name if k == 0 else None)
        if bad.any():
          ax_s.plot(c["step"][bad], c["loss_scale"][bad], "x",
                    color=colors[name])
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_title("Training loss, one line per seed (x: skipped step)")
  ax_s.set_xlabel("step")
  ax_s.set_ylabel("loss scale (metrics: loss_scale)")
  ax_s.set_yscale("log", base=2)
  ax_s.set_title("Loss scale (x: overflow, update skipped)")
  for a in (ax, ax_s):
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
