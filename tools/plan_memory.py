"""Plan a training run without allocating it: per-device memory and FLOPs.

Builds the train step for a gin model config on a (simulated) mesh from
abstract shapes only, AOT-compiles it, and prints what XLA reports: bytes of
arguments (params + optimizer state + batch), temporaries (activations), and
the step's FLOPs, next to the analytic parameter/optimizer bytes per device.

  python tools/plan_memory.py --model=llama3_2_1b --devices=8 --mesh=1,8,1 \
      --batch=8 --seq=2048 --remat=full

The published shapes (Llama-3.2-1B, Llama-2-7B) compile abstractly on 8
simulated CPU devices this way; nothing of their size is ever allocated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="cpu10m",
                 help="gin_configs/models/<name>.gin")
  p.add_argument("--devices", type=int, default=8,
                 help="simulated CPU devices (ignored on a real accelerator)")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,model sizes")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--remat", default=None, help="override remat_policy")
  p.add_argument("--compute_dtype", default=None)
  p.add_argument("--no_compile", action="store_true",
                 help="only lower (checks shardings; much faster)")
  p.add_argument("--json", default=None, help="also write results here")
  return p.parse_args()


def plan(model: str, mesh_shape: tuple[int, int, int], batch: int, seq: int,
         microbatches: int = 1, remat: str | None = None,
         compute_dtype: str | None = None, compile_: bool = True) -> dict:
  """Returns the plan as a dict (also used by the tests)."""
  import dataclasses

  import gin
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lifejax import main as main_lib, sharding
  from lifejax.losses.lm import make_lm_loss_fn
  from lifejax.model.config import TransformerConfig
  from lifejax.train.optim import OptimizerConfig
  from lifejax.train.trainer import plan_training

  gin.clear_config()
  main_lib.parse_gin([f"models/{model}.gin"], [])
  cfg = gin.get_configurable(TransformerConfig)()
  gin.clear_config()
  over = {}
  if remat:
    over["remat_policy"] = remat
  if compute_dtype:
    over["compute_dtype"] = compute_dtype
  cfg = dataclasses.replace(cfg, **over)

  mesh_cfg = sharding.MeshConfig(*mesh_shape)
  mesh = sharding.make_mesh(mesh_cfg)
  batch_sds = {k: jax.ShapeDtypeStruct((batch, seq), jnp.float32
                                       if k == "loss_mask" else jnp.int32)
               for k in ("tokens", "targets", "loss_mask", "segment_ids",
                         "positions")}
  p = plan_training(model_cfg=cfg, make_loss=make_lm_loss_fn,
                    optimizer_cfg=OptimizerConfig(), mesh=mesh,
                    rules=mesh_cfg.rules, example_batch=batch_sds,
                    num_microbatches=microbatches)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      p.abstract_state, p.state_shardings)
  batch_in = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      batch_sds, p.batch_shardings)

  def shard_bytes(tree) -> int:
    total = 0
    for a in jax.tree.leaves(tree):
      shard = a.sharding.shard_shape(a.shape)
      total += math.prod(shard) * np.dtype(a.dtype).itemsize
    return total

  out = {
      "model": model, "num_params": cfg.num_params(),
      "mesh": dict(zip(sharding.MESH_AXES, mesh.devices.shape)),
      "batch": batch, "seq": seq, "microbatches": microbatches,
      "remat": cfg.remat_policy, "compute_dtype": cfg.compute_dtype,
      "param_bytes_per_device": shard_bytes(abstract["params"]),
      "opt_state_bytes_per_device": shard_bytes(abstract["opt_state"]),
      "model_flops_per_step": cfg.flops_per_token(seq) * batch * seq,
  }
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = p.train_step.jitted.lower(abstract, batch_in)
  out["lower_seconds"] = time.perf_counter() - t0
  if compile_:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    out["compile_seconds"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
      for k in ("argument_size_in_bytes", "output_size_in_bytes",
                "temp_size_in_bytes", "generated_code_size_in_bytes"):
        out[k] = int(getattr(mem, k, 0))
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
      cost = cost[0] if cost else {}
    if cost and "flops" in cost:
      out["xla_flops_per_device"] = float(cost["flops"])
  return out


def main() -> None:
  args = _parse()
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count="
                               f"{args.devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  shape = tuple(int(x) for x in args.mesh.split(","))
  res = plan(args.model, shape, args.batch, args.seq, args.microbatches,
             args.remat, args.compute_dtype, not args.no_compile)
  gib = 1 << 30
  print(f"| {args.model} | {res['num_params'] / 1e9:.3f}B params | mesh "
        f"{res['mesh']} | batch {args.batch} x seq {args.seq} |")
  for k, v in res.items():
    if k.endswith("bytes_per_device") or k.endswith("in_bytes"):
      print(f"  {k:32s} {v / gib:10.3f} GiB")
    elif isinstance(v, float):
      print(f"  {k:32s} {v:14.4g}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
