"""Per-device memory of attention against sequence length, with and without
context parallelism, from XLA's memory analysis of the compiled programs.

  JAX_PLATFORMS=cpu python experiments/context_parallel/run.py \
      --out=experiments/context_parallel/results.md

Compiles (never runs) on simulated CPU devices:
  1. attention forward + backward (gradients of q, k, v) on one device
     (the model's einsum attention, context 1) and sharded over a context
     axis of 4 (ring attention in both layouts, all-gathered K/V);
  2. the loss + gradients of a small model, context 1 (einsum attention)
     vs context 4 (ring attention, the model's `auto` choice).
Bytes are per device: XLA compiles one SPMD program that every device runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from lifejax import sharding  # noqa: E402
from lifejax.losses.lm import make_lm_loss_fn  # noqa: E402
from lifejax.model import ring_attention, transformer  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402

MIB = 2 ** 20
K, G, E = 4, 2, 64  # 8 query heads, 4 kv heads, head_dim 64
CONTEXT = 4


def _mesh(context: int):
  cfg = sharding.MeshConfig(data=1, fsdp=1, model=1, context=context)
  return sharding.make_mesh(cfg, jax.devices()[:context])


def _context_mesh(context: int):
  """A mesh with a context axis even of size 1 (MeshConfig leaves a size-1
  context axis out), so ring attention can run on one device too."""
  return jax.make_mesh((context,), (sharding.CONTEXT_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:context])


def _memory(fn, mesh, *args) -> tuple[int, int]:
  """(temp, argument) bytes per device of `fn` compiled on `mesh`."""
  with jax.set_mesh(mesh):
    mem = jax.jit(fn).lower(*args).compile().memory_analysis()
  return mem.temp_size_in_bytes, mem.argument_size_in_bytes


def _full_attention(q, k, v, seg):
  s = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32)
  s = jnp.where(transformer.attention_mask(seg), s,
                jnp.finfo(jnp.float32).min)
  return jnp.einsum("bkgts,bske->btkge", jax.nn.softmax(s, axis=-1), v,
                    preferred_element_type=jnp.float32)


def attention_rows(lengths: list[int]) -> list[str]:
  rows = []
  variants = [("full (einsum)", 1, _full_attention)]
  for impl, layout, c in (("ring", "contiguous", 1), ("ring", "zigzag", CONTEXT),
                          ("ring", "contiguous", CONTEXT),
                          ("allgather_kv", "contiguous", CONTEXT)):
    mesh = _context_mesh(c)
    variants.append((
        f"{impl} {layout}" if impl == "ring" else impl, c,
        lambda q, k, v, seg, impl=impl, layout=layout, mesh=mesh:
        ring_attention.context_attention(q, k, v, seg, mesh, impl=impl,
                                         layout=layout)))
  for t in lengths:
    sds = jax.ShapeDtypeStruct
    args = (sds((1, t, K, G, E), jnp.float32), sds((1, t, K, E), jnp.float32),
            sds((1, t, K, E), jnp.float32), sds((1, t), jnp.int32))
    for name, c, attn in variants:
      def fwd_bwd(q, k, v, seg, attn=attn):
        return jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v, seg)),
                        argnums=(0, 1, 2))(q, k, v)
      temp, arg = _memory(fwd_bwd, _context_mesh(c), *args)
      rows.append((t, name, c, temp, arg))
      print(t, name, c, temp, arg, flush=True)
  return _table(rows, "attention forward + backward")


def model_rows(lengths: list[int]) -> list[str]:
  rows = []
  cfg = TransformerConfig(vocab_size=512, d_model=256, num_layers=2,
                          num_heads=2 * K, num_kv_heads=K, head_dim=E,
                          mlp_dim=512, max_seq_len=max(lengths),
                          matmul_impl="xla", fuse_projections="off",
                          layer_loop="scan")
  for t in lengths:
    batch = {k: jax.ShapeDtypeStruct((1, t), jnp.int32)
             for k in ("tokens", "targets", "segment_ids", "positions")}
    batch["loss_mask"] = jax.ShapeDtypeStruct((1, t), jnp.float32)
    for name, c, impl in (("full (einsum)", 1, "einsum"),
                          ("ring zigzag (auto)", CONTEXT, "auto")):
      graphdef, params = nnx.split(transformer.abstract_model(
          dataclasses.replace(cfg, attention_impl=impl)), nnx.Param)
      loss_fn = make_lm_loss_fn(graphdef)
      mesh = _mesh(c)

      def loss_and_grads(params, batch, mesh=mesh, loss_fn=loss_fn):
        with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
          return jax.value_and_grad(
              lambda p: loss_fn(p, batch, None)[0])(params)
      temp, arg = _memory(loss_and_grads, mesh, params, batch)
      rows.append((t, name, c, temp, arg))
      print(t, name, c, temp, arg, flush=True)
  return _table(rows, f"model loss + gradients (D{cfg.d_model} "
                f"L{cfg.num_layers} H{cfg.num_heads}/K{cfg.num_kv_heads} "
                f"E{E} V{cfg.vocab_size}, f32, no remat)")


def _table(rows, title: str) -> list[str]:
  base = {t: temp for t, name, _, temp, _ in rows if name == rows[0][1]}
  first_t = min(base)
  out = [f"### {title}", "",
         "| T | attention | context | temp MiB / device | temp vs "
         f"{rows[0][1]} at this T | temp vs same row at T=" + str(first_t)
         + " | argument MiB / device |", "|---|---|---|---|---|---|---|"]
  first = {(name, c): temp for t, name, c, temp, _ in rows if t == first_t}
  for t, name, c, temp, arg in rows:
    out.append(f"| {t} | {name} | {c} | {temp / MIB:.2f} | "
               f"{temp / base[t]:.3f} | {temp / first[name, c]:.1f}x | "
               f"{arg / MIB:.2f} |")
  return out + [""]


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--lengths", default="1024,2048,4096,8192")
  ap.add_argument("--model_lengths", default="1024,2048,4096")
  args = ap.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  model_lengths = [int(x) for x in args.model_lengths.split(",")]
  lines = attention_rows(lengths) + model_rows(model_lengths)
  header = [
      "# Context parallelism: per-device memory against sequence length", "",
      "Command: `JAX_PLATFORMS=cpu python experiments/context_parallel/"
      f"run.py --out=experiments/context_parallel/results.md` (jax "
      f"{jax.__version__}, {CONTEXT} simulated CPU devices, XLA:CPU "
      "`compiled.memory_analysis()`; nothing is executed).", "",
      f"Batch 1, {2 * K} query heads / {K} kv heads, head_dim {E}, f32. "
      "temp = XLA's temporary buffers of one device's program (arguments "
      "and outputs excluded); argument = the inputs one device holds.", ""]
  text = "\n".join(header + lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
