"""Gradient accumulation (issue 19, row 3; seeds 000, 5.3: "microbatch 1..k
-> average -> one optimizer step ... If you change effective batch
significantly, revisit LR: they are coupled").

Claims:
1. k microbatches accumulated inside the one jitted step
   (`pretrain.num_microbatches`) give the same training curve as one batch
   k times as large: per-step losses equal to float tolerance.
2. Batch size and learning rate are coupled: growing the effective batch
   4x (by accumulation) at the same token budget and the same learning rate
   takes 4x fewer steps and trains worse; the learning rate has to be
   revisited (scaled up by sqrt(4) or 4).

Arms (base.gin: every arm sees the same 204,800 tokens; warmup = the same
40,960 tokens; cosine decay to 0.1 x peak at the last step):
  b8_lr0.003           8 rows x 200 steps, the demo's peak lr 3e-3
  b32_lr0.003          32 rows x 50 steps, one batch, same lr
  b32_accum4_lr0.003   32 rows as 4 microbatches of 8, same lr: claim 1
                       compares it to b32_lr0.003 step by step
  b32_accum4_lr0.006   the same, lr x sqrt(4)
  b32_accum4_lr0.012   the same, lr x 4 (linear scaling)
  b32_lr0.003_f32,     claim 1's pair again with float32 compute (the
  b32_accum4_lr0.003_f32  other arms use the demo's bf16): whether the two
                       curves drift apart through bf16 rounding or through
                       the training dynamics amplifying any difference
Seeds vary the world, the init and the data order; arms of one seed share
them (paired; the two b32 arms see identical batches).
"""

from __future__ import annotations

import math
import os

import numpy as np

from lifejax import sweep

SEQ_LEN = 128
MICROBATCHES = 4
BASE_LR = 3e-3
PLOT = "grad_accumulation_curves.png"
SMALL, BIG = "SMALL", "BIG"
REFERENCE = "b8_lr0.003"
EQUAL_PAIR = ("b32_lr0.003", "b32_accum4_lr0.003")
EQUAL_PAIR_F32 = ("b32_lr0.003_f32", "b32_accum4_lr0.003_f32")
SEPARATED = 1e-3  # nats: where a pair's curves count as apart


def _arm(role: str, lr: float, micro: int = 1, f32: bool = False
         ) -> sweep.Arm:
  rows = 8 if role == SMALL else 32
  name = (f"b{rows}" + (f"_accum{micro}" if micro > 1 else "") + f"_lr{lr:g}"
          + "_f32" * f32)
  params = (f"BATCH=%{role}_BATCH", f"STEPS=%{role}_STEPS",
            f"WARMUP=%{role}_WARMUP", f"OptimizerConfig.learning_rate={lr!r}",
            f"pretrain.num_microbatches={micro}") + (
                ("TransformerConfig.compute_dtype='float32'",) if f32 else ())
  return sweep.Arm(name, gin_params=params,
                   labels={"role": role, "rows": rows, "microbatches": micro,
                           "lr": lr,
                           "compute": "float32" if f32 else "bfloat16"})


SWEEP = sweep.Sweep(
    arms=[_arm(SMALL, BASE_LR), _arm(BIG, BASE_LR),
          _arm(BIG, BASE_LR, MICROBATCHES),
          _arm(BIG, BASE_LR * math.sqrt(MICROBATCHES), MICROBATCHES),
          _arm(BIG, BASE_LR * MICROBATCHES, MICROBATCHES),
          _arm(BIG, BASE_LR, f32=True),
          _arm(BIG, BASE_LR, MICROBATCHES, f32=True)],
    base_gin=("base.gin",),
    seeds=(0, 1, 2),
    root_param="RUN_DIR",
    seed_params=("world_corpus_files.seed", "pretrain.seed"),
    # the test suite's tiny run: the small-batch reference and the big batch
    # accumulated from 4 microbatches (the other arms change only the
    # learning rate, the compute dtype or drop the accumulation)
    tiny_arms=(REFERENCE, "b32_accum4_lr0.003"),
)


def train_curve(cell: sweep.Cell) -> dict[str, np.ndarray]:
  rows = [r for r in cell.jsonl("metrics.jsonl")
          if "loss" in r and "grad_norm" in r]
  if not rows:
    raise ValueError(f"{cell.run_dir}: metrics.jsonl has no training rows")
  return {k: np.asarray([float(r[k]) for r in rows])
          for k in ("step", "loss", "grad_norm", "weight", "skipped")}


def _batch_rows(cell: sweep.Cell) -> int:
  """The batch size the cell ran with: pretrain.batch_size in its operative
  gin config, following macro references (BATCH = %BIG_BATCH, ...)."""
  path = os.path.join(cell.run_dir, "operative_config.gin")
  bindings = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      key, sep, value = line.partition("=")
      if sep and not line.startswith(("#", " ")):
        bindings[key.strip()] = value.strip()
  value = bindings.get("pretrain.batch_size")
  for _ in range(len(bindings)):
    if value is None or not value.startswith("%"):
      break
    value = bindings.get(value[1:])
  if value is None or not value.isdigit():
    raise ValueError(f"{path}: cannot resolve pretrain.batch_size "
                     f"(got {value!r})")
  return int(value)


def eval_loss(cell: sweep.Cell) -> float:
  summary = cell.json("summary.json")
  if summary is None:
    raise ValueError(f"{cell.run_dir}: no summary.json (the run did not "
                     "finish)")
  ev = (summary.get("eval") or {}).get("eval/loss")
  return math.nan if ev is None else float(ev)


def equality(a: sweep.Cell, b: sweep.Cell) -> dict[str, float]:
  """Per-step agreement of two runs that should be the same computation."""
  ca, cb = train_curve(a), train_curve(b)
  if not np.array_equal(ca["step"], cb["step"]):
    raise ValueError(f"{a.run_dir} and {b.run_dir} logged different steps")
  if not np.array_equal(ca["weight"], cb["weight"]):
    raise ValueError(f"{a.run_dir} and {b.run_dir} saw different batches "
                     "(token counts differ)")
  d = np.abs(ca["loss"] - cb["loss"])
  g = np.abs(ca["grad_norm"] - cb["grad_norm"]) / np.abs(cb["grad_norm"])
  over = np.flatnonzero(d > SEPARATED)
  return {"steps": float(len(d)), "step1_abs": float(d[0]),
          "separated_at": float(ca["step"][over[0]]) if over.size
          else math.nan,
          "max_abs": float(d.max()), "max_rel": float(
              np.max(d / np.abs(cb["loss"]))),
          "grad_norm_max_rel": float(g.max()),
          "eval_abs": abs(eval_loss(a) - eval_loss(b))}


def _pairs(by_arm: dict[str, list[sweep.Cell]], names: tuple[str, str]
           ) -> list[tuple[sweep.Cell, sweep.Cell]]:
  """(accumulated, one batch) cells of the same seed."""
  one, acc = names
  return [(a, b) for a in by_arm.get(acc, []) for b in by_arm.get(one, [])
          if a.seed == b.seed]


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  by_arm: dict[str, list[sweep.Cell]] = {}
  for c in cells:
    by_arm.setdefault(c.arm.name, []).append(c)
  for v in by_arm.values():
    v.sort(key=lambda c: c.seed)
  seeds = sorted({c.seed for c in cells})
  md = ["# Gradient accumulation: results", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  rows = []
  for arm in SWEEP.arms:
    cs = by_arm.get(arm.name, [])
    if not cs:
      continue
    curves = [train_curve(c) for c in cs]
    b = _batch_rows(cs[0])
    rows.append({
        "arm": arm.name, "rows x microbatches":
            f"{b // arm.labels['microbatches']} x "
            f"{arm.labels['microbatches']}" if arm.labels["microbatches"] > 1
            else f"{b}",
        "steps": int(curves[0]["step"][-1]),
        "tokens / step": b * SEQ_LEN,
        "peak lr": f"{arm.labels['lr']:g}",
        "compute": arm.labels["compute"],
        "held-out loss": sweep.fmt_mean_sd([eval_loss(c) for c in cs]),
        "skipped steps": f"{sum(float(c['skipped'].sum()) for c in curves):.0f}",
        "wall s": sweep.fmt_mean_sd([c.record["wall_s"] for c in cs], 0)})
  md += [f"Seeds {seeds}; mean ± sd over seeds. Held-out loss: the final "
         "model on the held-out 5% of documents (nats per token); every arm "
         "trains on the same number of tokens.", "",
         sweep.write_table(rows, list(rows[0]) if rows else ["arm"])]

  pairs = {names: _pairs(by_arm, names) for names in (EQUAL_PAIR,
                                                      EQUAL_PAIR_F32)}
  if any(pairs.values()):
    md += [f"## Claim 1: {MICROBATCHES} accumulated microbatches vs one "
           "batch, step by step", "",
           "Per seed: the absolute loss difference at step 1 (same params, "
           "same batch: numerics only), its maximum over all steps (absolute "
           f"and relative to the loss), the first step where it exceeds "
           f"{SEPARATED:g} nats, the largest relative grad-norm difference, "
           "and the final held-out loss difference. The two runs of a pair "
           "see identical batches (checked: equal token counts per step).",
           ""]
    erows = []
    for names, ps in pairs.items():
      for a, b in ps:
        e = equality(a, b)
        erows.append({
            "pair (accumulated vs one batch)": f"{names[1]} vs {names[0]}",
            "seed": a.seed, "steps": int(e["steps"]),
            "step-1 abs Δloss": f"{e['step1_abs']:.1e}",
            "max abs Δloss": f"{e['max_abs']:.1e}",
            "max abs Δloss / loss": f"{e['max_rel']:.1e}",
            f"first step > {SEPARATED:g}": (
                "never" if math.isnan(e["separated_at"])
                else f"{e['separated_at']:.0f}"),
            "max abs Δ grad norm / grad norm":
                f"{e['grad_norm_max_rel']:.1e}",
            "abs Δ held-out loss": f"{e['eval_abs']:.1e}"})
    md.append(sweep.write_table(erows, list(erows[0])))
    sds = [f"{n}: {sweep.mean_sd([eval_loss(c) for c in by_arm[n]])[1]:.4f}"
           for names in pairs for n in names[:1] if n in by_arm]
    md += ["", "For scale, the seed-to-seed sd of the held-out loss: "
           + ", ".join(sds) + ".", ""]

  ref = [eval_loss(c) for c in by_arm.get(REFERENCE, [])]
  prow = []
  for arm in SWEEP.arms:
    if (arm.name == REFERENCE or arm.name not in by_arm or not ref
        or arm.name in EQUAL_PAIR_F32):
      continue
    t = sweep.paired_t([eval_loss(c) for c in by_arm[arm.name]], ref)
    prow.append({"arm": arm.name, "n": int(t["n"]),
                 f"arm - {REFERENCE}": f"{t['mean_diff']:+.4f}",
                 "95% CI": f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                 "p": t["p"]})
  if prow:
    md += [f"## Claim 2: against the small batch ({REFERENCE}), paired over "
           "seeds (held-out loss)", "", sweep.write_table(prow, list(prow[0]))]
  unscaled = [eval_loss(c) for c in by_arm.get(EQUAL_PAIR[1], [])]
  srow = []
  for arm in SWEEP.arms:
    if (arm.labels["microbatches"] == 1 or arm.name in EQUAL_PAIR_F32
        or arm.name == EQUAL_PAIR[1] or arm.name not in by_arm
        or not unscaled):
      continue
    t = sweep.paired_t([eval_loss(c) for c in by_arm[arm.name]], unscaled)
    srow.append({"arm": arm.name,
                 "lr / unscaled lr": f"{arm.labels['lr'] / BASE_LR:g}",
                 "n": int(t["n"]),
                 f"arm - {EQUAL_PAIR[1]}": f"{t['mean_diff']:+.4f}",
                 "95% CI": f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                 "p": t["p"]})
  if srow:
    md += ["", "Scaled learning rates against the unscaled big batch "
           f"({EQUAL_PAIR[1]}), paired over seeds (held-out loss):", "",
           sweep.write_table(srow, list(srow[0]))]
  _plot(by_arm, pairs, os.path.join(out_dir, PLOT))
  md += ["", f"![curves]({PLOT})"]
  return "\n".join(md) + "\n"


def _plot(by_arm, pairs, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colors = {REFERENCE: "black", EQUAL_PAIR[0]: "tab:blue",
            EQUAL_PAIR[1]: "tab:cyan", "b32_accum4_lr0.006": "tab:orange",
            "b32_accum4_lr0.012": "tab:red"}
  styles = {EQUAL_PAIR[1]: "--"}
  fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4.5))
  for arm in SWEEP.arms:
    if arm.name not in colors:
      continue
    for k, cell in enumerate(by_arm.get(arm.name, [])):
      c = train_curve(cell)
      tokens = c["step"] * _batch_rows(cell) * SEQ_LEN
      ax.plot(tokens, c["loss"], styles.get(arm.name, "-"),
              color=colors[arm.name], alpha=0.7, lw=1,
              label=arm.name if k == 0 else None)
  ax.set_xlabel("tokens seen")
  ax.set_ylabel("training loss")
  ax.set_ylim(top=min(ax.get_ylim()[1], 9.0))
  ax.set_title("Training loss vs tokens (bf16), one line per seed")
  for (names, ps), color in zip(pairs.items(), ("tab:cyan", "tab:purple")):
    for k, (a, b) in enumerate(ps):
      ca, cb = train_curve(a), train_curve(b)
      d = np.abs(ca["loss"] - cb["loss"])
      ax_d.plot(ca["step"], np.maximum(d, 1e-9), ".-", color=color, lw=1,
                ms=3, alpha=0.8,
                label=("bf16" if names == EQUAL_PAIR else "f32")
                if k == 0 else None)
  ax_d.axhline(SEPARATED, color="gray", lw=0.8, ls=":")
  ax_d.set_yscale("log")
  ax_d.set_xlabel("step")
  ax_d.set_ylabel("abs loss difference (0 drawn at 1e-9)")
  ax_d.set_title(f"{MICROBATCHES} accumulated microbatches vs one batch, "
                 "per seed")
  for a in (ax, ax_d):
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
