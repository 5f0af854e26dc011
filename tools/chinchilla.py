"""Chinchilla sizing: the compute-optimal model size and token count.

From a scaling law L(N, D) = E + A/N^alpha + B/D^beta (lifejax/eval/
scaling.py) and C = 6 N D:

  python tools/chinchilla.py --flops 5.76e23
      N_opt, D_opt, tokens per parameter and the predicted loss for a FLOP
      budget, by the published Chinchilla law (Hoffmann et al., 2022,
      approach 3; N counts all parameters);
  python tools/chinchilla.py --params 7e9
      the inverse: the D for which a 7B model is compute-optimal, and C;
  python tools/chinchilla.py --model llama2_7b [--seq 4096]
      the same for a lifejax model config (gin_configs/models/<name>.gin):
      N counted in the law's convention, and with --seq the training FLOPs
      of D_opt tokens by lifejax's own count (lifejax/model/flops.py);
  --law experiments/scaling_laws/fit.json
      any of the above with a fitted law (what the scaling-law experiment
      writes; its N convention is the one it was fitted in).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from lifejax.eval import scaling  # noqa: E402  pylint: disable=g-import-not-at-top

# N conventions a law file may name (fit.json: "n_convention").
CONVENTIONS = ("total", "non_embedding")


def load_law(path: str | None) -> tuple[scaling.Law, str, str]:
  """(law, N convention, where it came from): the published Chinchilla law
  without a path, else the JSON file's "law" (and "n_convention")."""
  if path is None:
    return (scaling.CHINCHILLA, "total",
            "Chinchilla, published (Hoffmann et al., 2022, approach 3)")
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"--law {path}: cannot read a JSON law ({e})") from e
  if not isinstance(doc, dict) or "law" not in doc:
    raise ValueError(f"--law {path}: no \"law\" object (fields E, A, B, "
                     "alpha, beta)")
  law = scaling.Law.from_dict(doc["law"], where=f"{path}: law")
  conv = doc.get("n_convention", "total")
  if conv not in CONVENTIONS:
    raise ValueError(f"{path}: n_convention={conv!r}: expected one of "
                     f"{list(CONVENTIONS)}")
  return law, conv, path


def model_params(name: str, convention: str) -> tuple[int, Any]:
  """N of gin_configs/models/<name>.gin in `convention`, and its config."""
  import gin  # pylint: disable=g-import-not-at-top

  from lifejax import main as main_lib  # pylint: disable=g-import-not-at-top
  from lifejax.model import flops  # pylint: disable=g-import-not-at-top
  from lifejax.model.config import TransformerConfig  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  try:
    main_lib.parse_gin([f"models/{name}.gin"], [])
    cfg = gin.get_configurable(TransformerConfig)()
  except FileNotFoundError as e:
    raise ValueError(f"--model {name}: {e}") from e
  finally:
    gin.clear_config()
  if convention == "total":
    return cfg.num_params(), cfg
  # The layers' matmul weights: flops.py's N_mm without the output head.
  return flops.matmul_params(cfg) - cfg.vocab_size * cfg.d_model, cfg


def _si(x: float) -> str:
  for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= div:
      return f"{x / div:.3g}{unit}"
  return f"{x:.3g}"


def size(law: scaling.Law, *, flops: float | None = None,
         params: float | None = None) -> dict[str, float]:
  """The compute-optimal (N, D, C) for a budget, or for a model size."""
  if (flops is None) == (params is None):
    raise ValueError("give exactly one of flops and params")
  if flops is not None:
    n, d = scaling.compute_optimal(law, flops)
    n, d, c = float(n), float(d), float(flops)
  else:
    n = float(params)
    d = float(scaling.optimal_tokens(law, n))
    c = 6.0 * n * d
  return {"flops": c, "params": n, "tokens": d, "tokens_per_param": d / n,
          "loss": float(law.loss(n, d))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(
      prog="tools/chinchilla.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n\n", 1)[1])
  what = ap.add_mutually_exclusive_group(required=True)
  what.add_argument("--flops", type=float,
                    help="training compute budget C in FLOPs (C = 6 N D)")
  what.add_argument("--params", type=float,
                    help="model size N (in the law's convention): the "
                         "compute-optimal D for it")
  what.add_argument("--model", help="gin_configs/models/<name>.gin: its N, "
                                    "then as --params")
  ap.add_argument("--law", default=None,
                  help="a law JSON (e.g. experiments/scaling_laws/fit.json); "
                       "default: the published Chinchilla law")
  ap.add_argument("--seq", type=int, default=None,
                  help="with --model: sequence length for lifejax's FLOPs "
                       "per token (attention included)")
  args = ap.parse_args(argv)
  if args.seq is not None and args.model is None:
    ap.error("--seq goes with --model")
  for name in ("flops", "params", "seq"):
    v = getattr(args, name)
    if v is not None and not v > 0:
      ap.error(f"--{name}={v}: must be > 0")
  try:
    law, conv, source = load_law(args.law)
    cfg = None
    if args.model is not None:
      n, cfg = model_params(args.model, conv)
      out = size(law, params=n)
    else:
      out = size(law, flops=args.flops, params=args.params)
  except ValueError as e:
    ap.error(str(e))
  out.update(law=law.to_dict(), n_convention=conv, source=source)
  g, a, b = scaling.allocation(law)
  print(f"law: {source}")
  print(f"  L(N, D) = {law.E:.4g} + {law.A:.4g} / N^{law.alpha:.4g} + "
        f"{law.B:.4g} / D^{law.beta:.4g}   (N: {conv.replace('_', '-')} "
        "parameters)")
  print(f"  N_opt = {g:.4g} (C/6)^{a:.4f},  D_opt = (C/6)^{b:.4f} / {g:.4g}")
  if args.model is not None:
    print(f"model: {args.model} ({_si(out['params'])} "
          f"{conv.replace('_', '-')} parameters)")
  label = "compute budget" if args.flops is not None else "compute-optimal C"
  print(f"{label:18s} {out['flops']:.4g} FLOPs (6 N D)")
  print(f"{'N':18s} {out['params']:.4g}  ({_si(out['params'])})")
  print(f"{'D':18s} {out['tokens']:.4g}  ({_si(out['tokens'])} tokens)")
  print(f"{'tokens/param':18s} {out['tokens_per_param']:.3g}")
  print(f"{'predicted loss':18s} {out['loss']:.4f}")
  if cfg is not None and args.seq is not None:
    from lifejax.model import flops as flops_lib  # pylint: disable=g-import-not-at-top
    per_tok = flops_lib.train_flops_per_token(cfg, args.seq)
    out["lifejax_train_flops"] = per_tok * out["tokens"]
    print(f"{'lifejax FLOPs':18s} {out['lifejax_train_flops']:.4g} for D "
          f"tokens at seq {args.seq} ({per_tok:.4g} per token: 6 N_mm + "
          "causal attention, lifejax/model/flops.py)")
  return out


if __name__ == "__main__":
  main()
