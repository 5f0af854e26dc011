"""Scaling laws and Chinchilla sizing on the embedded world.

Claim (seed row 13): for a compute budget there is an optimal model size vs
data ratio (Hoffmann et al., 2022: ~20 tokens per parameter).

Design (Chinchilla's IsoFLOP profiles): three compute budgets C; each trains
five model widths, each on D = C / (6 N) tokens with a cosine schedule that
ends at its own last step. Budget k uses widths k..k+4 of a 7-width ladder
(N ratio ~1.5 per width), so every budget's sizes straddle the size that
would get ~20 tokens per parameter; budget 0 also trains two narrower
models (EXTENSION). Replicate arms re-run three cells with other
init/data-order seeds (REPLICATES): the noise of one run, and a paired
test of the two sizes that decide whether budget 0's curve turns.

N: non-embedding parameters (the layers' projection weights: q/k/v/o and the
gated MLP; not the token embedding, the output head or the norms), Kaplan et
al. (2020)'s convention. D: tokens processed (steps x batch x seq_len).
C = 6 N D.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from lifejax import sweep
from lifejax.eval import runs as runs_lib
from lifejax.eval import scaling
from lifejax.model import flops
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts, layout

BATCH_SIZE = 8
SEQ_LEN = 128
NUM_LAYERS = 2
VOCAB = 1024
NUM_HEADS = 2
# Widths: non-embedding N = 26 d^2 (2 layers x (4 d^2 attention + 9 d^2
# MLP)) from ~6.7k to ~70k, a ~1.5x ladder.
WIDTHS = (16, 20, 24, 28, 36, 44, 52)
SIZES_PER_BUDGET = 5
NUM_BUDGETS = 3
TOKENS_PER_PARAM_CENTRE = 20.0  # where the middle size of each budget sits
# Added after the first 15 runs showed every budget's loss still falling at
# its smallest model: the smallest budget also trains two narrower models,
# to see whether its IsoFLOP curve turns.
EXTENSION = {0: (8, 12)}
# Cells re-run with other init/data-order seeds (pretrain.seed; same world):
# a mid-grid cell for the noise of one run, and the two sizes whose order
# decides whether budget 0's curve turns (a paired test over the seeds).
REPLICATES = {"C1_d28": (1, 2), "C0_d8": (1, 2), "C0_d12": (1, 2)}
TURN = ("C0_d8", "C0_d12")
FIT_JSON = "fit.json"


def kaplan_lr(n: float) -> float:
  """Learning rate by model size from Kaplan et al. (2020), eq. D.1:
  0.003239 - 0.0001395 log N (N non-embedding); an a-priori rule, not
  tuned on this experiment's losses."""
  return 0.003239 - 0.0001395 * math.log(n)


def nonembedding_params(cfg: TransformerConfig) -> int:
  """N: the layers' matmul weights (flops.matmul_params without the output
  head); the embedding gather, the head and the norms are not counted."""
  return flops.matmul_params(cfg) - cfg.vocab_size * cfg.d_model


def _cfg(d: int) -> TransformerConfig:
  return TransformerConfig(vocab_size=VOCAB, d_model=d, num_layers=NUM_LAYERS,
                           max_seq_len=SEQ_LEN,
                           num_heads=NUM_HEADS, num_kv_heads=NUM_HEADS,
                           head_dim=d // NUM_HEADS, mlp_dim=3 * d)


def design() -> list[dict]:
  """The (budget, width, steps) cells: budget k's middle width gets
  TOKENS_PER_PARAM_CENTRE tokens per parameter, C_k = 6 N_mid D_mid."""
  cells = []
  tokens_per_step = BATCH_SIZE * SEQ_LEN
  for k in range(NUM_BUDGETS):
    widths = WIDTHS[k:k + SIZES_PER_BUDGET]
    n_mid = nonembedding_params(_cfg(widths[SIZES_PER_BUDGET // 2]))
    c = 6.0 * n_mid * TOKENS_PER_PARAM_CENTRE * n_mid
    for d in EXTENSION.get(k, ()) + widths:
      n = nonembedding_params(_cfg(d))
      steps = max(1, round(c / (6.0 * n) / tokens_per_step))
      cells.append({"budget": k, "flops": c, "d_model": d, "n": n,
                    "steps": steps})
  return cells


def _arm(cell: dict, name: str, extra: tuple[str, ...] = (),
         **labels) -> sweep.Arm:
  cfg = _cfg(cell["d_model"])
  params = (f"VOCAB={cfg.vocab_size}", f"NUM_LAYERS={cfg.num_layers}",
            f"D_MODEL={cfg.d_model}", f"NUM_HEADS={cfg.num_heads}",
            f"HEAD_DIM={cfg.head_dim}", f"MLP_DIM={cfg.mlp_dim}",
            f"BATCH_SIZE={BATCH_SIZE}", f"SEQ_LEN={SEQ_LEN}",
            f"STEPS={cell['steps']}",
            f"LEARNING_RATE={kaplan_lr(cell['n']):.6g}") + extra
  return sweep.Arm(name=name, gin_params=params,
                   labels={**cell, **labels})


def _arms() -> list[sweep.Arm]:
  cells = design()
  by_name = {f"C{c['budget']}_d{c['d_model']}": c for c in cells}
  arms = [_arm(c, name) for name, c in by_name.items()]
  for name, seeds in REPLICATES.items():
    for s in seeds:
      arms.append(_arm(by_name[name], f"{name}_init{s}",
                       (f"pretrain.seed={s}",), replicate_of=name,
                       init_seed=s))
  return arms


SWEEP = sweep.Sweep(
    arms=_arms(), base_gin=("base.gin",), seeds=(0,), root_param="RUN_DIR",
    seed_params=("world_corpus_files.seed",),
    # --tiny: two budgets' worth of sizes and one replicate, enough for the
    # fits, the bootstrap and the replicate table to run.
    tiny_arms=("C0_d12", "C0_d16", "C0_d20", "C1_d20", "C1_d24", "C1_d28",
               "C0_d12_init1"))



# -- the summary ---------------------------------------------------------------


def _tokens_per_step(run_dir: str) -> int:
  """batch_size x seq_len as the run operated (its operative gin config;
  a value bound through a macro is followed to the macro's value)."""
  import re  # pylint: disable=g-import-not-at-top
  path = layout.RunDir(run_dir).operative_gin
  with open(path, encoding="utf-8") as f:
    text = f.read()

  def value(name: str, depth: int = 0) -> int:
    m = re.search(rf"^{re.escape(name)} = (\S+)$", text, re.M)
    if m is None or depth > 5:
      raise ValueError(f"{path}: no binding of {name}")
    v = m.group(1)
    return value(v[1:], depth + 1) if v.startswith("%") else int(v)

  return value("pretrain.batch_size") * value("pretrain.seq_len")


def _vocab_digest(run_dir: str) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top
  tok = artifacts.load_tokenizer(run_dir)
  pieces = "\n".join(tok.id_to_token(i) for i in range(tok.vocab_size))
  return hashlib.sha256(pieces.encode()).hexdigest()[:16]


def read_runs(cells: list[sweep.Cell]) -> list[dict]:
  """One row per cell: its arm labels, the model's N (non-embedding and
  total), D, C and the final held-out loss, read from the run directory.
  Refuses cells whose losses are not comparable (another tokenizer or
  held-out set)."""
  rows = []
  for c in cells:
    summary = c.json(layout.SUMMARY)
    lin = runs_lib.lineage_of(c.run_dir)
    if summary is None or lin is None or lin.model is None:
      raise ValueError(f"{c.run_dir}: no finished pretraining run "
                       "(summary.json and lineage.json)")
    ev = summary.get("eval") or {}
    if "eval/loss" not in ev:
      raise ValueError(f"{c.run_dir}: summary.json has no eval/loss")
    n = nonembedding_params(lin.model)
    d = int(summary["final_step"]) * _tokens_per_step(c.run_dir)
    rows.append({
        "arm": c.arm.name, "budget": c.arm.labels["budget"],
        "replicate_of": c.arm.labels.get("replicate_of"),
        "init_seed": c.arm.labels.get("init_seed", 0),
        "d_model": lin.model.d_model, "n": n,
        "n_total": lin.model.num_params(), "d": d, "flops": 6.0 * n * d,
        "flops_budget": c.arm.labels["flops"],
        "loss": float(ev["eval/loss"]),
        "eval_tokens": float(ev.get("eval/tokens", math.nan)),
        "vocab": _vocab_digest(c.run_dir),
        "wall_s": c.record.get("wall_s", math.nan)})
  for key in ("vocab", "eval_tokens"):
    seen = {r[key] for r in rows}
    if len(seen) > 1:
      raise ValueError(f"runs differ in {key} ({sorted(map(str, seen))}): "
                       "their held-out losses are not comparable")
  return rows


def _try(fn, *args, **kwargs):
  """(result, None) or (None, the ValueError's message)."""
  try:
    return fn(*args, **kwargs), None
  except ValueError as e:
    return None, str(e)


def _fmt_ci(point: float, lo: float, hi: float) -> str:
  return f"{point:.3g} [{lo:.3g}, {hi:.3g}]"


def analyse(rows: list[dict], *, num_boot: int, top_k: int | None) -> dict:
  """The approach-3 fit (non-embedding and total N), its allocation and
  bootstrap CIs, the approach-2 IsoFLOP minima, and the replicate noise."""
  grid = [r for r in rows if r["replicate_of"] is None]
  n = np.array([r["n"] for r in grid], np.float64)
  nt = np.array([r["n_total"] for r in grid], np.float64)
  d = np.array([r["d"] for r in grid], np.float64)
  loss = np.array([r["loss"] for r in grid], np.float64)
  budgets = sorted({r["budget"] for r in grid})
  c_budget = np.array([np.mean([r["flops"] for r in grid
                                if r["budget"] == k]) for k in budgets])
  out: dict = {"budgets": budgets, "flops": c_budget.tolist(), "runs": grid}

  # Approach 3, non-embedding N (the primary convention).
  fit, err = _try(scaling.fit_law, n, d, loss, top_k=top_k)
  out["fit"], out["fit_error"] = fit, err
  if fit is not None:
    for r in grid:
      r["loss_fit"] = float(fit.law.loss(r["n"], r["d"]))
    alloc, err = _try(scaling.allocation, fit.law)
    out["allocation"], out["allocation_error"] = alloc, err

    def stat(law):
      g, a, _ = scaling.allocation(law)
      return np.concatenate([scaling.tokens_per_param(law, c_budget),
                             [a, law.alpha, law.beta, law.E]])
    boot, err = _try(scaling.bootstrap_law, n, d, loss, stat, fit=fit,
                     num_samples=num_boot)
    out["boot"], out["boot_error"] = boot, err
  # Approach 3 with Chinchilla's convention (all parameters).
  fit_t, err = _try(scaling.fit_law, nt, d, loss, top_k=top_k)
  out["fit_total"], out["fit_total_error"] = fit_t, err
  if fit_t is not None:
    c_total = np.array([np.mean([6.0 * r["n_total"] * r["d"] for r in grid
                                 if r["budget"] == k]) for k in budgets])
    out["flops_total"] = c_total.tolist()
    out["tpp_total"], out["tpp_total_error"] = _try(
        scaling.tokens_per_param, fit_t.law, c_total)

  # Approach 2: IsoFLOP parabolas per budget (runs grouped by budget).
  cb = np.array([c_budget[budgets.index(r["budget"])] for r in grid])
  iso, err = _try(scaling.isoflop_allocation, cb, n, loss)
  out["iso"], out["iso_error"] = iso, err
  if iso is not None:
    strata = [r["budget"] for r in grid]

    def iso_stat(idx):
      a2 = scaling.isoflop_allocation(cb[idx], n[idx], loss[idx])
      return np.concatenate([a2.tokens_per_param(c_budget), [a2.a]])
    boot2, err = _try(scaling.bootstrap_runs, iso_stat, n.size,
                      num_samples=num_boot, strata=strata)
    out["boot_iso"], out["boot_iso_error"] = boot2, err

  # Noise of one run: each replicated cell's losses over init/data seeds,
  # and the paired test of the two sizes that decide budget 0's turn.
  out["noise"] = {}
  for base in sorted({r["replicate_of"] for r in rows} - {None}):
    same = sorted((r for r in rows if base in (r["arm"], r["replicate_of"])),
                  key=lambda r: r["init_seed"])
    out["noise"][base] = {"seeds": [r["init_seed"] for r in same],
                          "arms": [r["arm"] for r in same],
                          "losses": [r["loss"] for r in same]}
  a, b = (out["noise"].get(name) for name in TURN)
  if a and b and a["seeds"] == b["seeds"]:
    out["turn"] = sweep.paired_t(a["losses"], b["losses"])
  return out


def _law_row(name: str, law: scaling.Law, extra: str = "") -> str:
  return (f"| {name} | {law.E:.3f} | {law.A:.4g} | {law.B:.4g} | "
          f"{law.alpha:.3f} | {law.beta:.3f} |{extra}")


def _markdown(res: dict, tiny: bool, num_boot: int) -> str:
  lines = ["# Scaling laws on the embedded world", ""]
  if tiny:
    lines += ["**Tiny run** (tiny.gin: every arm has the same shape and "
              "steps): the fits below only show that the code runs.", ""]
  grid = res["runs"]
  lines += ["## Runs (final held-out loss, nats/token)", "",
            sweep.write_table(
                [{**r, "tokens/param": r["d"] / r["n"],
                  "C=6ND": r["flops"], "wall s": r["wall_s"]}
                 for r in grid],
                ["arm", "budget", "d_model", "n", "n_total", "d",
                 "tokens/param", "C=6ND", "loss", "loss_fit", "wall s"])]
  if res["noise"]:
    lines += ["Replicated cells: re-run with other init and data-order "
              "seeds (pretrain.seed 1, 2 in arms <cell>_init<seed>; same "
              "world). The table above and the fits use seed 0.", "",
              "| cell | loss by arm | mean ± sd |", "|---|---|---|"]
    for cell, v in res["noise"].items():
      lines.append(f"| {cell} | " + ", ".join(
          f"{a}: {x:.4f}" for a, x in zip(v["arms"], v["losses"]))
          + f" | {sweep.fmt_mean_sd(v['losses'], 4)} |")
    lines.append("")
  turn = res.get("turn")
  if turn:
    lines += [f"Budget 0's turn, {TURN[0]} - {TURN[1]} paired over "
              f"{int(turn['n'])} seeds: {turn['mean_diff']:+.4f} nats "
              f"(95% CI [{turn['ci_lo']:+.4f}, {turn['ci_hi']:+.4f}], "
              f"p = {turn['p']:.3g}).", ""]
  lines += ["## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta", ""]
  fit = res.get("fit")
  if fit is None:
    lines += [f"Not fitted: {res['fit_error']}", ""]
  else:
    rms = float(np.sqrt(np.mean(fit.residuals ** 2)))
    lines += ["| N convention | E | A | B | alpha | beta |",
              "|---|---|---|---|---|---|",
              _law_row("non-embedding (primary)", fit.law)]
    if res.get("fit_total") is not None:
      lines.append(_law_row("total (Chinchilla's)", res["fit_total"].law))
    lines.append(_law_row("Chinchilla, published", scaling.CHINCHILLA))
    lines += ["", f"Log-space residual RMS {rms:.4f} (~{100 * rms:.2f}% of "
              f"the loss) over {fit.residuals.size} runs; L-BFGS from the "
              f"{fit.starts} best-screened starts of Chinchilla's grid.", ""]
    alloc = res.get("allocation")
    if alloc is None:
      lines += [f"No compute-optimal allocation: "
                f"{res['allocation_error']}", ""]
    else:
      g, a, b = alloc
      lines += [f"N_opt = {g:.4g} (C/6)^{a:.3f}, D_opt = (C/6)^{b:.3f} / "
                f"{g:.4g} (Chinchilla's approach 3: a = 0.46, b = 0.54).",
                ""]
  boot, iso, boot2 = res.get("boot"), res.get("iso"), res.get("boot_iso")
  lines += ["## Compute-optimal tokens per parameter (Chinchilla: ~20)", "",
            "Best sampled run: the budget's lowest held-out loss, with its "
            "tokens per non-embedding (total) parameter. Approaches 2 and 3 "
            f"with 95% bootstrap CIs over {num_boot} resamples of the runs "
            "(approach 2: resampled within each budget; * = the parabola's "
            "vertex lies outside the sampled sizes, an extrapolation).", "",
            "| budget | C = 6ND | best sampled run | approach 3 | approach 2 "
            "| approach 3, total N |", "|---|---|---|---|---|---|"]
  for i, k in enumerate(res["budgets"]):
    c = res["flops"][i]
    best = min((r for r in grid if r["budget"] == k),
               key=lambda r: r["loss"])
    smallest = best["n"] == min(r["n"] for r in grid if r["budget"] == k)
    won = (f"{best['arm']}: {best['d'] / best['n']:.3g} "
           f"({best['d'] / best['n_total']:.3g})"
           + (" (smallest N)" if smallest else ""))
    a3 = a2 = at = "n/a"
    if fit is not None and res.get("allocation") is not None:
      p = float(scaling.tokens_per_param(fit.law, c))
      a3 = (_fmt_ci(p, boot.ci()[0][i], boot.ci()[1][i]) if boot is not None
            else f"{p:.3g}")
    if iso is not None:
      p = float(iso.tokens_per_param(c))
      a2 = (_fmt_ci(p, boot2.ci()[0][i], boot2.ci()[1][i])
            if boot2 is not None else f"{p:.3g}")
      a2 += "" if iso.minima[i].inside else " *"
    if res.get("tpp_total") is not None:
      at = f"{res['tpp_total'][i]:.3g}"
    lines.append(f"| {k} | {c:.3g} | {won} | {a3} | {a2} | {at} |")
  lines.append("")
  if boot is not None:
    lo, hi = boot.ci()
    nb = len(res["budgets"])
    lines += [f"Approach 3 bootstrap ({boot.samples.shape[0]} fits, "
              f"{boot.failed} failed): a = N_opt exponent "
              f"{_fmt_ci(float(np.median(boot.samples[:, nb])), lo[nb], hi[nb])}"
              f", alpha {_fmt_ci(float(np.median(boot.samples[:, nb + 1])), lo[nb + 1], hi[nb + 1])}"
              f", beta {_fmt_ci(float(np.median(boot.samples[:, nb + 2])), lo[nb + 2], hi[nb + 2])}"
              f", E {_fmt_ci(float(np.median(boot.samples[:, nb + 3])), lo[nb + 3], hi[nb + 3])}"
              " (median [95% CI]).", ""]
  elif res.get("boot_error"):
    lines += [f"Approach 3 bootstrap: {res['boot_error']}", ""]
  lines += ["## Approach 2: IsoFLOP minima", ""]
  if iso is None:
    lines += [f"Not available: {res['iso_error']}", ""]
  else:
    lines += ["| budget | C | N_opt (parabola vertex) | inside the sampled N "
              "| loss at N_opt |", "|---|---|---|---|---|"]
    for k, c, m in zip(res["budgets"], res["flops"], iso.minima):
      lines.append(f"| {k} | {c:.3g} | {m.n_opt:.4g} | {m.inside} | "
                   f"{m.loss_opt:.4f} |")
    lines += ["", f"N_opt = {iso.k:.4g} C^{iso.a:.3f} (Chinchilla's "
              "approach 2: a = 0.49)" + (
                  f"; bootstrap a {_fmt_ci(iso.a, boot2.ci()[0][-1], boot2.ci()[1][-1])}"
                  f" ({boot2.samples.shape[0]} resamples, {boot2.failed} "
                  "without a minimum in every budget)" if boot2 is not None
                  else "") + ".", ""]
  return "\n".join(lines)


def _plot(res: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  grid, fit, iso = res["runs"], res.get("fit"), res.get("iso")
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  ax = axes[0]
  for i, k in enumerate(res["budgets"]):
    pts = sorted((r["n"], r["loss"]) for r in grid if r["budget"] == k)
    x, y = np.array(pts).T
    col = colors[i % len(colors)]
    ax.plot(x, y, "o", color=col, label=f"C = {res['flops'][i]:.2g}")
    if iso is not None and iso.minima[i].convex:
      c2, c1, c0 = iso.minima[i].coeffs
      xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 100)
      ax.plot(xs, c2 * np.log(xs) ** 2 + c1 * np.log(xs) + c0, "-",
              color=col, lw=1)
      ax.plot(iso.minima[i].n_opt, iso.minima[i].loss_opt, "*", ms=14,
              color=col, mec="k")
    if fit is not None:
      xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 100)
      ax.plot(xs, fit.law.loss(xs, res["flops"][i] / (6 * xs)), ":",
              color=col, lw=1)
  ax.set(xscale="log", xlabel="N (non-embedding parameters)",
         ylabel="held-out loss (nats/token)",
         title="IsoFLOP profiles: parabola (solid), law (dotted)")
  ax.legend(fontsize=8)
  ax = axes[1]
  widths = sorted({r["d_model"] for r in grid})
  for i, w in enumerate(widths):
    pts = sorted((r["d"], r["loss"], r["n"]) for r in grid
                 if r["d_model"] == w)
    dd, ll, nn = np.array(pts).T
    col = colors[i % len(colors)]
    ax.plot(dd, ll, "o", color=col, label=f"d_model {w} (N={int(nn[0])})")
    if fit is not None:
      xs = np.geomspace(dd.min() / 1.5, dd.max() * 1.5, 100)
      ax.plot(xs, fit.law.loss(nn[0], xs), "-", color=col, lw=1)
  ax.set(xscale="log", xlabel="D (training tokens)",
         ylabel="held-out loss (nats/token)",
         title="Loss vs D per model size, approach-3 fit")
  ax.legend(fontsize=7)
  ax = axes[2]
  cs = np.geomspace(min(res["flops"]) / 3, max(res["flops"]) * 3, 50)
  if iso is not None:
    ok = [m for m in iso.minima if m.convex]
    ax.plot([c for c, m in zip(res["flops"], iso.minima) if m.convex],
            [m.n_opt for m in ok], "*", ms=12, color="C0",
            label="approach 2 minima")
    ax.plot(cs, iso.n_opt(cs), "-", color="C0",
            label=f"approach 2: N ~ C^{iso.a:.2f}")
  if fit is not None and res.get("allocation") is not None:
    ax.plot(cs, scaling.compute_optimal(fit.law, cs)[0], "-", color="C1",
            label=f"approach 3: N ~ C^{res['allocation'][1]:.2f}")
  ax.plot(cs, np.sqrt(cs / (6 * 20.0)), "--", color="gray",
          label="20 tokens / parameter")
  ax.plot([r["flops"] for r in grid], [r["n"] for r in grid], ".",
          color="k", ms=4, label="runs")
  ax.set(xscale="log", yscale="log", xlabel="C = 6 N D (FLOPs)",
         ylabel="N_opt (non-embedding)",
         title="Compute-optimal model size")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _fit_json(res: dict, path: str) -> None:
  fit = res["fit"]
  g, a, b = res["allocation"]
  doc = {
      "law": fit.law.to_dict(),
      "n_convention": "non_embedding",
      "convention": {
          "N": "non-embedding parameters: the layers' q/k/v/o and gated-MLP "
               "weights (not the token embedding, output head or norms)",
          "D": "training tokens processed (steps x batch x seq_len)",
          "C": "6 N D",
          "loss": "held-out cross-entropy in nats per token (lifejax's "
                  "1024-piece SentencePiece tokenizer of the embedded "
                  "world)"},
      "allocation": {"G": g, "a": a, "b": b},
      "fit": {"objective": fit.objective, "starts": fit.starts,
              "huber_delta": scaling.HUBER_DELTA, "runs": len(res["runs"]),
              "n_range": [min(r["n"] for r in res["runs"]),
                          max(r["n"] for r in res["runs"])],
              "d_range": [min(r["d"] for r in res["runs"]),
                          max(r["d"] for r in res["runs"])]},
      "source": "experiments/scaling_laws (python -m lifejax.sweep "
                "experiments/scaling_laws)",
  }
  with open(path, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")


def summarize(cells: list[sweep.Cell], out_dir: str, tiny: bool) -> str:
  num_boot = 10 if tiny else 200
  res = analyse(read_runs(cells), num_boot=num_boot,
                top_k=4 if tiny else 64)
  _plot(res, os.path.join(out_dir, "scaling_laws.png"))
  if res.get("fit") is not None and res.get("allocation") is not None:
    _fit_json(res, os.path.join(out_dir, FIT_JSON))
  return _markdown(res, tiny, num_boot)
