"""Why fp16 does or does not underflow here: gradients under fp16 compute.

`fp16_grad_probe` (a gin entry, `run.stage = @fp16_grad_probe`; the sweep's
`grad_probe` arm) takes the f32 reference arm's run of the same seed (its
tokenizer, held-out documents and final checkpoint) and, at two points
(the init of the run's seed, and the f32 run's final params), computes on a
few held-out batches:

1. The cotangent of the output logits, the first tensor the backward casts
   to the compute dtype (the head's matmul takes it in fp16; every matmul
   accumulates in f32). Per loss convention, the share of its non-zero
   entries that round to zero in fp16 (|x| <= 2^-25, half its smallest
   subnormal 2^-24), that are subnormal (< 2^-14, its smallest normal:
   fewer significant bits) and that round to inf (>= 65520; the largest
   finite fp16 is 65504).
2. The parameter gradients with fp16 (and bf16) compute against the f32
   compute's: relative L2 error, the share of entries that fp16 zeroes, and
   whether any is non-finite.

Loss conventions (what the backward sees; the gradient is divided back):
  mean      d(mean token loss): PyTorch's default reduction, no loss scale
  sum       d(sum of token losses): what lifejax's train step
            differentiates (loss x token count), i.e. a static scale of
            the batch's token count (~2,000 here)
  sum_x2^15 the same times LossScaleConfig's initial scale, 2^15
Writes `probe.json` into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lifejax import sharding
from lifejax.data import files, pipeline
from lifejax.losses.lm import lm_loss, make_lm_loss_fn
from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir

PROBE_JSON = "probe.json"
FP16_TINY = 2.0 ** -24     # smallest positive subnormal
FP16_FLUSH = 2.0 ** -25    # |x| <= this rounds to 0 (half of TINY: to even)
FP16_NORMAL = 2.0 ** -14   # smallest positive normal
FP16_MAX = 65504.0         # largest finite value
FP16_OVERFLOW = 65520.0    # |x| >= this rounds to inf (halfway to 2^16)
DYNAMIC_INITIAL = 2.0 ** 15  # LossScaleConfig.initial_scale's default
CONVENTIONS = ("mean", "sum", "sum_x2^15")


def reference_dir(run_dir: str, reference_arm: str) -> str:
  """The reference arm's cell of the same seed: <root>/<arm>/seed<k>."""
  seed_dir = os.path.basename(os.path.normpath(run_dir))
  root = os.path.dirname(os.path.dirname(os.path.normpath(run_dir)))
  return os.path.join(root, reference_arm, seed_dir)


def _multiplier(convention: str, weight: float) -> float:
  if convention == "mean":
    return 1.0
  if convention == "sum":
    return weight
  if convention == "sum_x2^15":
    return weight * DYNAMIC_INITIAL
  raise ValueError(f"unknown loss convention {convention!r}; expected one "
                   f"of {CONVENTIONS}")


def cotangent_shares(d: np.ndarray) -> dict[str, float]:
  """Shares of the non-zero entries of a cotangent by fp16 range."""
  a = np.abs(d[d != 0]).astype(np.float64)
  n = max(a.size, 1)
  return {"flushed": float(np.sum(a <= FP16_FLUSH) / n),
          "subnormal": float(np.sum(a < FP16_NORMAL) / n),
          "overflow": float(np.sum(a >= FP16_OVERFLOW) / n)}


def grad_error(g: Any, ref: Any) -> dict[str, float]:
  """Relative L2 error of `g` vs `ref`, the share of `ref`'s non-zero
  entries that `g` zeroes, and whether any entry of `g` is non-finite."""
  gl = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
  rl = [np.asarray(x, np.float64) for x in jax.tree.leaves(ref)]
  finite = all(np.isfinite(x).all() for x in gl)
  num = sum(float(np.sum((x - r) ** 2)) for x, r in zip(gl, rl))
  den = sum(float(np.sum(r ** 2)) for r in rl)
  nz = sum(int(np.sum(r != 0)) for r in rl)
  zeroed = sum(int(np.sum((x == 0) & (r != 0))) for x, r in zip(gl, rl))
  return {"rel_err": float(np.sqrt(num / den)) if finite and den else
          float("nan"),
          "zeroed": zeroed / max(nz, 1), "nonfinite": float(not finite)}


@gin.configurable
def fp16_grad_probe(run_dir: str = gin.REQUIRED,
                    model: TransformerConfig = gin.REQUIRED,
                    mesh: sharding.MeshConfig = sharding.MeshConfig(),
                    reference_arm: str = "f32",
                    batch_size: int = 16,
                    seq_len: int = 128,
                    num_batches: int = 4,
                    z_loss: float = 1e-4,
                    seed: int | None = None) -> dict[str, Any]:
  """See the module docstring; returns what it writes to probe.json.

  seed: the init seed (default: the pretrain.seed binding, as the reference
  run used).
  """
  if num_batches < 1:
    raise ValueError(f"fp16_grad_probe.num_batches={num_batches}: must be "
                     ">= 1")
  ref_dir = reference_dir(run_dir, reference_arm)
  if not os.path.exists(RunDir(ref_dir).summary):
    raise FileNotFoundError(
        f"fp16_grad_probe: the reference arm's run {ref_dir} has not "
        f"finished (fp16_grad_probe.reference_arm={reference_arm!r} must "
        "be an arm listed before the probe)")
  if seed is None:
    seed = gin.query_parameter("pretrain.seed")
  jmesh = sharding.make_mesh(mesh)
  cfgs = {dt: dataclasses.replace(model, compute_dtype=dt)
          for dt in ("float32", "float16", "bfloat16")}
  _, final = artifacts.load_params(ref_dir, transformer.Transformer,
                                   cfgs["float32"], jmesh, mesh.rules)
  with nnx.use_eager_sharding(False):
    init_model = transformer.Transformer(cfgs["float32"],
                                         nnx.Rngs(params=seed))
  init = jax.tree.map(lambda x, r: jax.device_put(x, r.sharding),
                      nnx.to_pure_dict(nnx.state(init_model, nnx.Param)),
                      final)

  tokenizer = artifacts.load_tokenizer(ref_dir)
  srcs = [files.source_from_path(p) for p in RunDir(ref_dir).heldout_files()]
  batches = []
  for b in pipeline.lm_eval_dataset(srcs, tokenizer, seq_len=seq_len,
                                    batch_size=batch_size):
    if float(np.sum(b["loss_mask"])) > 0:
      batches.append(b)
    if len(batches) == num_batches:
      break
  batch_sh = sharding.batch_shardings(batches[0], jmesh, mesh.rules)

  def grad_fn(cfg: TransformerConfig, with_logits: bool):
    graphdef = nnx.split(heads.abstract(transformer.Transformer, cfg),
                         nnx.Param)[0]
    loss_fn = make_lm_loss_fn(graphdef, z_loss)

    def fn(params, batch, c):
      with sharding.activation_sharding(jmesh, mesh.rules):
        g = jax.grad(lambda p: loss_fn(p, batch, None)[0] * c)(params)
        g = jax.tree.map(lambda x: x / c, g)
        if not with_logits:
          return g, None
        logits = nnx.merge(graphdef, params)(
            batch["tokens"], batch.get("positions"), batch.get("segment_ids"))
        dlogits = jax.grad(lambda lg: lm_loss(
            lg, batch["targets"], batch["loss_mask"], z_loss)[0])(logits)
        return g, dlogits

    return jax.jit(fn)

  f32 = grad_fn(cfgs["float32"], True)
  f16 = grad_fn(cfgs["float16"], False)
  b16 = grad_fn(cfgs["bfloat16"], False)
  out: dict[str, Any] = {"reference_run": ref_dir, "seed": seed,
                         "num_batches": len(batches),
                         "batch_tokens": [float(np.sum(b["loss_mask"]))
                                          for b in batches],
                         "points": {}}
  with jax.set_mesh(jmesh):
    for point, params in (("init", init), ("final", final)):
      acc: dict[str, list[dict[str, float]]] = {}
      for b in batches:
        w = float(np.sum(b["loss_mask"]))
        batch = sharding.put(b, batch_sh)
        g32, dlogits = f32(params, batch, jnp.float32(1.0))
        g32 = jax.device_get(g32)
        d = np.asarray(jax.device_get(dlogits), np.float64)
        mags = np.concatenate([np.abs(np.ravel(x)) for x in
                               jax.tree.leaves(g32)])
        mags = mags[mags > 0]
        acc.setdefault("param_grad_f32", []).append(
            {"rounds_to_0": float(np.mean(mags <= FP16_FLUSH)),
             "below_2^-14": float(np.mean(mags < FP16_NORMAL))})
        for conv in CONVENTIONS:
          c = _multiplier(conv, w)
          row = {f"logits_{k}": v
                 for k, v in cotangent_shares(d * c).items()}
          g16 = jax.device_get(f16(params, batch, jnp.float32(c)))[0]
          row.update(grad_error(g16, g32))
          acc.setdefault(f"fp16_{conv}", []).append(row)
        gb = jax.device_get(b16(params, batch, jnp.float32(w)))[0]
        acc.setdefault("bf16_sum", []).append(grad_error(gb, g32))
      out["points"][point] = {
          mode: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
          for mode, rows in acc.items()}
  if sharding.is_main_process():
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, PROBE_JSON), "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
  return out
