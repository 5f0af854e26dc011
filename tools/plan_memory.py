"""Plan a training run without allocating it: per-device memory and FLOPs.

The planner (`lifejax.train.memory_plan`) gives the bytes one device holds
for the lifejax train step, by part and at its peak, from shapes alone; the
model FLOPs come from `lifejax.model.flops`. `--compile` also lowers and
compiles the step on simulated CPU devices and prints XLA's own memory
analysis next to the plan (backend "cpu": the plan of what XLA:CPU holds).

  python tools/plan_memory.py --model=llama2_7b --mesh=1,8,1 --batch=8 \
      --seq=4096 --remat=full --backend=tpu
  python tools/plan_memory.py --model=test --mesh=1,8,1 --compile

Tables (experiments/memory_planner/run.sh writes both):

  --validate: the planner against XLA's compiled memory analysis on 8
      simulated CPU devices, a set of configurations covering every remat
      policy, FSDP / DP / TP / mixed meshes and microbatching;
  --published: the largest batch per device that fits, per remat policy,
      for published model shapes on the meshes in gin_configs/mesh/
      (planner only: nothing of that size is compiled).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30
MIB = 1 << 20
# The formulation the planner models (what "auto" resolves to on TPU/GPU);
# compiling on CPU needs it spelled out.
XLA_PATH = dict(attention_impl="einsum", matmul_impl="xla",
                fuse_projections="off", layer_loop="scan")
# Published shapes without a gin file of their own. Llama-2-70B (Touvron et
# al., 2023, table 1 / its HF config.json): GQA with 8 kv heads.
EXTRA_MODELS: dict[str, dict[str, Any]] = {
    "llama2_70b": dict(vocab_size=32000, d_model=8192, num_layers=80,
                       num_heads=64, num_kv_heads=8, mlp_dim=28672,
                       max_seq_len=4096, rms_eps=1e-5, tie_embeddings=False,
                       param_dtype="float32", compute_dtype="bfloat16",
                       remat_policy="full"),
}
# gin_configs/mesh/<name>.gin -> (label, planner backend, HBM GiB per chip).
HARDWARE = {
    "tpu_v4_8": ("TPU v4-8", "tpu", 32),
    "tpu_v5e_16": ("TPU v5e-16", "tpu", 16),
    "tpu_v5p_64": ("TPU v5p-64", "tpu", 95),
    "gpu_8": ("8x H100", "gpu", 80),
    "gpu_1": ("1x H100", "gpu", 80),
}
POLICIES = ("full", "save_attn_mlp_out", "dots_with_no_batch_dims_saveable",
            "dots_saveable", "none")
_SHAPE = dict(vocab_size=4096, d_model=256, mlp_dim=1024, num_heads=8,
              num_kv_heads=4, num_layers=4, compute_dtype="float32")
# (overrides of _SHAPE, mesh, batch, seq, microbatches)
VALIDATION: list[tuple[dict[str, Any], tuple[int, int, int], int, int, int]] = [
    (dict(remat_policy="full"), (1, 8, 1), 32, 256, 1),
    (dict(remat_policy="save_attn_mlp_out"), (1, 8, 1), 32, 256, 1),
    (dict(remat_policy="dots_with_no_batch_dims_saveable"), (1, 8, 1), 32,
     256, 1),
    (dict(remat_policy="dots_saveable"), (1, 8, 1), 32, 256, 1),
    (dict(remat_policy="none"), (1, 8, 1), 32, 256, 1),
    (dict(remat_policy="everything_saveable"), (1, 8, 1), 32, 128, 1),
    (dict(remat_policy="full", compute_dtype="bfloat16"), (1, 8, 1), 32, 256,
     1),
    (dict(remat_policy="full", d_model=512, vocab_size=8192, mlp_dim=2048),
     (1, 8, 1), 8, 64, 1),
    (dict(remat_policy="full", vocab_size=16384), (8, 1, 1), 16, 128, 1),
    (dict(remat_policy="full", num_kv_heads=8), (1, 1, 8), 8, 256, 1),
    (dict(remat_policy="dots_with_no_batch_dims_saveable", num_kv_heads=8,
          num_layers=8, compute_dtype="bfloat16"), (1, 1, 8), 8, 256, 1),
    (dict(remat_policy="save_attn_mlp_out"), (2, 2, 2), 16, 256, 1),
    (dict(remat_policy="none", compute_dtype="bfloat16"), (2, 1, 4), 16, 256,
     2),
    (dict(remat_policy="full", d_model=384, mlp_dim=1536, num_heads=6,
          num_kv_heads=2, num_layers=12), (2, 4, 1), 16, 512, 1),
    (dict(remat_policy="full"), (1, 8, 1), 32, 256, 4),
    (dict(remat_policy="dots_saveable"), (1, 8, 1), 32, 256, 2),
    (dict(remat_policy="full", d_model=512, vocab_size=8192, mlp_dim=2048),
     (2, 2, 2), 16, 64, 2),
    (dict(remat_policy="none", d_model=128, vocab_size=32000, mlp_dim=512,
          num_heads=4, num_kv_heads=2, tie_embeddings=True), (1, 8, 1), 16,
     128, 2),
]


def _parse(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="cpu10m",
                 help="gin_configs/models/<name>.gin or one of "
                 f"{sorted(EXTRA_MODELS)}")
  p.add_argument("--devices", type=int, default=8,
                 help="simulated CPU devices for --compile / --validate")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,model sizes")
  p.add_argument("--batch", type=int, default=8, help="global batch rows")
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--remat", default=None, help="override remat_policy")
  p.add_argument("--compute_dtype", default=None)
  p.add_argument("--backend", default="tpu", help="tpu, gpu or cpu")
  p.add_argument("--compile", action="store_true",
                 help="also compile on simulated CPU devices and compare")
  p.add_argument("--validate", action="store_true")
  p.add_argument("--published", action="store_true")
  p.add_argument("--out", default=None, help="write the table here")
  return p.parse_args(argv)


def model_config(name: str, **overrides: Any):
  """The named model's TransformerConfig (gin file or EXTRA_MODELS)."""
  import gin

  from lifejax import main as main_lib
  from lifejax.model.config import TransformerConfig

  if name in EXTRA_MODELS:
    return TransformerConfig(**{**EXTRA_MODELS[name], **overrides})
  gin.clear_config()
  main_lib.parse_gin([f"models/{name}.gin"], [])
  cfg = gin.get_configurable(TransformerConfig)()
  gin.clear_config()
  return dataclasses.replace(cfg, **overrides)


def mesh_shape_of(gin_name: str, num_devices: int | None = None
                  ) -> tuple[int, int, int]:
  """The (data, fsdp, model) shape a gin_configs/mesh/ file binds."""
  import gin

  from lifejax import main as main_lib, sharding

  gin.clear_config()
  main_lib.parse_gin([f"mesh/{gin_name}.gin"], [])
  cfg = gin.get_configurable(sharding.MeshConfig)()
  gin.clear_config()
  sizes = (cfg.data, cfg.fsdp, cfg.model)
  return cfg.shape(num_devices if -1 in sizes else math.prod(sizes))


def compile_train_step(cfg, mesh_shape: tuple[int, int, int], batch: int,
                       seq: int, microbatches: int = 1,
                       compiler_options: dict[str, Any] | None = None,
                       optimizer_cfg: Any = None) -> tuple[Any, Any, Any]:
  """The real train step (LM loss, AdamW, the guard, donated state) lowered
  and compiled for `batch` rows of `seq` tokens on a (data, fsdp, model)
  mesh of the (simulated) devices: (trainer.Plan, the compiled step, the
  batch's ShapeDtypeStructs)."""
  import jax
  import jax.numpy as jnp

  from lifejax import sharding
  from lifejax.losses.lm import make_lm_loss_fn
  from lifejax.train.optim import OptimizerConfig
  from lifejax.train.trainer import plan_training

  mesh_cfg = sharding.MeshConfig(*mesh_shape)
  mesh = sharding.make_mesh(mesh_cfg)
  batch_sds = {k: jax.ShapeDtypeStruct(
      (batch, seq), jnp.float32 if k == "loss_mask" else jnp.int32)
               for k in ("tokens", "targets", "loss_mask", "segment_ids",
                         "positions")}
  p = plan_training(model_cfg=cfg, make_loss=make_lm_loss_fn,
                    optimizer_cfg=optimizer_cfg or OptimizerConfig(),
                    mesh=mesh, rules=mesh_cfg.rules, example_batch=batch_sds,
                    num_microbatches=microbatches)
  with_sh = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
  state = jax.tree.map(with_sh, p.abstract_state, p.state_shardings)
  data = jax.tree.map(with_sh, batch_sds, p.batch_shardings)
  with jax.set_mesh(mesh):
    compiled = p.train_step.jitted.lower(state, data).compile(
        compiler_options)
  return p, compiled, batch_sds


def compiled_memory(compiled) -> dict[str, float]:
  """XLA's memory analysis of a compiled step, per device, with "total" =
  argument + output - alias + temp, and its FLOPs count ("flops"; XLA
  counts a loop's body once, not once per trip)."""
  mem = compiled.memory_analysis()
  out = {k: float(getattr(mem, k)) for k in (
      "argument_size_in_bytes", "output_size_in_bytes",
      "alias_size_in_bytes", "temp_size_in_bytes")}
  out["total"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                  - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  out["flops"] = float((cost or {}).get("flops", float("nan")))
  return out


def xla_memory(cfg, mesh_shape: tuple[int, int, int], batch: int, seq: int,
               microbatches: int = 1,
               compiler_options: dict[str, Any] | None = None
               ) -> dict[str, float]:
  """Compiles the real train step on the (simulated) devices; XLA's memory
  analysis per device and its FLOPs count."""
  _, compiled, _ = compile_train_step(cfg, mesh_shape, batch, seq,
                                      microbatches, compiler_options)
  return compiled_memory(compiled)


def _describe(over: dict[str, Any]) -> str:
  cfg = {**_SHAPE, **over}
  tied = ", tied" if cfg.get("tie_embeddings") else ""
  return (f"D{cfg['d_model']} L{cfg['num_layers']} H{cfg['num_heads']}/"
          f"K{cfg['num_kv_heads']} F{cfg['mlp_dim']} V{cfg['vocab_size']}"
          f"{tied} {cfg['compute_dtype'].replace('float', 'f')}")


def validate_table(command: str) -> str:
  from lifejax.model.config import TransformerConfig
  from lifejax.train import memory_plan

  lines = [
      f"Command: `{command}`", "",
      "Planner (`backend=\"cpu\"`) against XLA's memory analysis of the "
      "compiled train step on 8 simulated CPU devices, per device. XLA bytes "
      "= argument + output - alias + temp: the state and batch passed in, "
      "plus what the step allocates (outputs alias the donated state). "
      "Params f32, AdamW, the layer formulation TPU/GPU run "
      f"({', '.join(f'{k}={v}' for k, v in XLA_PATH.items())}).", "",
      "| model | remat | mesh (data,fsdp,model) | batch x seq / micro | "
      "planner MiB | XLA MiB | planner / XLA | planner's peak phase |",
      "|---|---|---|---|---|---|---|---|"]
  ratios = []
  for over, mesh, batch, seq, micro in VALIDATION:
    cfg = TransformerConfig(**{**_SHAPE, **XLA_PATH, **over})
    plan = memory_plan.plan(cfg, mesh, batch, seq, microbatches=micro,
                            backend="cpu")
    xla = xla_memory(cfg, mesh, batch, seq, micro)
    ratio = plan.peak / xla["total"]
    ratios.append(ratio)
    phase = max(plan.phases, key=plan.phases.get)
    lines.append(
        f"| {_describe(over)} | {cfg.remat_policy} | {mesh} | {batch} x {seq}"
        f" / {micro} | {plan.peak / MIB:.1f} | {xla['total'] / MIB:.1f} | "
        f"{ratio:.3f} | {phase} |")
    print(lines[-1], flush=True)
  lines += ["", f"{len(ratios)} configurations; planner / XLA from "
            f"{min(ratios):.3f} to {max(ratios):.3f}."]
  return "\n".join(lines) + "\n"


def published_table(command: str, seq: int) -> str:
  from lifejax.model import flops
  from lifejax.train import memory_plan

  models = ("llama3_2_1b", "llama2_7b", "llama2_70b")
  lines = [f"Command: `{command}`", "",
           f"Largest batch per device (rows of {seq} tokens, one "
           "microbatch) whose train step fits in one chip's HBM, by the "
           "planner (no compiling at these sizes): params f32, bf16 "
           "compute, AdamW, the non-finite guard, einsum attention. 0 = "
           "not even one row fits. HBM per chip: " + ", ".join(
               f"{label} {hbm} GiB" for label, _, hbm in HARDWARE.values())
           + " (nominal; the runtime reserves some of it). Meshes from "
           "gin_configs/mesh/.", ""]
  head = ("| model | hardware (mesh) | state GiB/chip | 1 row, full remat: "
          "peak GiB (phase) | " +
          " | ".join(POLICIES) + " |")
  lines += [head, "|" + "---|" * (4 + len(POLICIES))]
  for name in models:
    base = model_config(name, **XLA_PATH)
    for hw, (label, backend, hbm) in HARDWARE.items():
      mesh = mesh_shape_of(hw)
      st = memory_plan.state_bytes(
          dataclasses.replace(base, remat_policy="none"), mesh)
      one = memory_plan.plan(dataclasses.replace(base, remat_policy="full"),
                             mesh, mesh[0] * mesh[1], seq, backend=backend)
      cells = [str(memory_plan.largest_batch(
          dataclasses.replace(base, remat_policy=pol), mesh, seq,
          hbm * GIB, backend=backend)) for pol in POLICIES]
      lines.append(f"| {name} | {label} {mesh} | "
                   f"{(st.params + st.opt_state) / GIB:.1f} | "
                   f"{one.peak / GIB:.1f} ({max(one.phases, key=one.phases.get)})"
                   " | " + " | ".join(cells) + " |")
      print(lines[-1], flush=True)
  lines += ["", f"Model FLOPs per token at T={seq} (6 N_mm + causal "
            "attention, `lifejax.model.flops`) and the sampler's KV cache "
            f"for one sequence of {seq} tokens in bf16:", "",
            "| model | params | TFLOP/token | KV cache MiB/sequence |",
            "|---|---|---|---|"]
  for name in models:
    cfg = model_config(name, **XLA_PATH)
    lines.append(
        f"| {name} | {cfg.num_params() / 1e9:.2f}B | "
        f"{flops.train_flops_per_token(cfg, seq) / 1e12:.4f} | "
        f"{memory_plan.kv_cache_bytes(cfg, 1, seq) / MIB:.0f} |")
  return "\n".join(lines) + "\n"


def _size(n: float) -> str:
  return f"{n / GIB:10.3f} GiB" if n >= GIB else f"{n / MIB:10.3f} MiB"


def _write(text: str, path: str | None) -> None:
  print(text)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


def main(argv: list[str] | None = None) -> None:
  args = _parse(argv)
  if "jax" not in sys.modules:  # simulated devices must precede the import
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count="
                               f"{args.devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  command = "python tools/plan_memory.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  if args.validate:
    return _write(validate_table(command), args.out)
  if args.published:
    return _write(published_table(command, args.seq), args.out)

  from lifejax.model import flops
  from lifejax.train import memory_plan

  over = {} if args.remat is None else {"remat_policy": args.remat}
  if args.compute_dtype:
    over["compute_dtype"] = args.compute_dtype
  if args.compile or args.backend == "cpu":
    over.update(XLA_PATH)
  cfg = model_config(args.model, **over)
  sizes = [int(x) for x in args.mesh.split(",")]
  from lifejax import sharding
  mesh = sharding.MeshConfig(*sizes).shape(
      args.devices if -1 in sizes else math.prod(sizes))
  backend = "cpu" if args.compile else args.backend
  plan = memory_plan.plan(cfg, mesh, args.batch, args.seq,
                          microbatches=args.microbatches, backend=backend)
  print(f"{args.model}: {cfg.num_params() / 1e9:.3f}B params, mesh "
        f"(data, fsdp, model) = {mesh}, batch {args.batch} x seq "
        f"{args.seq} / {args.microbatches} microbatches, remat "
        f"{cfg.remat_policy}, backend {backend}; per device:")
  for k in ("params", "opt_state", "batch", "grads", "residuals",
            "layer_backward", "logits", "update"):
    print(f"  {k:16s} {_size(getattr(plan, k))}")
  for k, v in plan.phases.items():
    print(f"  phase {k:10s} {_size(v)}")
  print(f"  {'peak':16s} {_size(plan.peak)}")
  fpt = flops.train_flops_per_token(cfg, args.seq)
  print(f"  model FLOPs     {fpt * args.batch * args.seq / 1e12:10.3f} "
        f"TFLOP per step ({fpt / 1e9:.3f} GFLOP/token)")
  if args.compile:
    xla = xla_memory(cfg, mesh, args.batch, args.seq, args.microbatches)
    print(f"  XLA total       {_size(xla['total'])} (argument "
          f"{_size(xla['argument_size_in_bytes']).strip()} + temp "
          f"{_size(xla['temp_size_in_bytes']).strip()} + output - alias); "
          f"planner / XLA = {plan.peak / xla['total']:.3f}")


if __name__ == "__main__":
  main()
