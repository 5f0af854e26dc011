"""Pipeline bubble and activation memory of the GPipe and 1F1B schedules.

Bubble: each schedule runs (8 simulated CPU devices, a `stage` mesh axis of
p) and records, per stage and tick, the microbatch its forward and backward
slots ran (-1 = padding); the ids travel with the activations through the
ppermutes. The idle share is read off those records
(`pipeline.bubble_fraction`) and compared with (p - 1) / (m + p - 1).

Memory: XLA's temporary bytes per device of the compiled loss-and-gradient
program of a small Transformer (`memory_analysis()`), without a pipeline
and with p = 4 stages under each schedule, as m grows at a fixed microbatch
size (so the batch grows with m).

  JAX_PLATFORMS=cpu python experiments/pipeline_bubble/run.py \
      --out=experiments/pipeline_bubble/results.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from lifejax import sharding  # noqa: E402
from lifejax.losses.lm import make_lm_loss_fn  # noqa: E402
from lifejax.model import pipeline, transformer  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402


def _stage_fn(params_L, x, extras):
  """A stand-in stage (the schedule does not depend on what a stage
  computes): x <- tanh(x w_l + extras) per layer."""
  for i in range(params_L.shape[0]):
    x = jnp.tanh(x @ params_L[i] + extras)
  return x


def _head_fn(h, y, extras):
  del extras
  return jnp.sum(y @ h), {}


def executed_ids(p: int, m: int):
  """(gpipe ids, 1f1b forward ids, 1f1b backward ids), each (p, ticks),
  as recorded by the programs that ran."""
  mesh = sharding.make_mesh(sharding.MeshConfig(stage=p, fsdp=-1))
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(p, 4, 4)) * 0.3, jnp.float32)
  h = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(m, 2, 4)), jnp.float32)
  ex = jnp.asarray(rng.normal(size=(m, 2, 4)), jnp.float32)
  with jax.set_mesh(mesh):
    _, ids = jax.jit(lambda *a: pipeline.gpipe(_stage_fn, *a, mesh))(w, x, ex)
    r = jax.jit(lambda *a: pipeline.one_f_one_b(
        _stage_fn, _head_fn, *a, mesh))(w, h, x, ex)
  return np.asarray(ids), np.asarray(r.fwd_ids), np.asarray(r.bwd_ids)


def recompute_time_bubble(fwd: np.ndarray, bwd: np.ndarray) -> float:
  """1F1B's time bubble counting its recomputation: a backward slot costs
  2 + 1 (the stage forward again) everywhere; the last stage's forward slot
  costs 0 (its backward slot runs that forward). Useful work is still
  3 per stage-microbatch (forward + backward)."""
  f, b = fwd >= 0, bwd >= 0
  p = f.shape[0]
  cost_f = np.where(np.arange(p)[:, None] == p - 1, 0.0, 1.0) * f
  tick = np.max(cost_f + 3.0 * b, axis=0).sum()
  return float(1.0 - 3.0 * f.sum() / (p * tick))


def bubble_table() -> list[str]:
  rows = ["| p | m | (p-1)/(m+p-1) | GPipe measured | 1F1B measured "
          "(time, F=1 B=2) | 1F1B slots idle | 1F1B time incl. recompute |",
          "|---|---|---|---|---|---|---|"]
  for p, m in ((2, 1), (2, 4), (2, 8), (4, 1), (4, 4), (4, 8), (4, 16),
               (8, 8), (8, 32)):
    g, f, b = executed_ids(p, m)
    gb = pipeline.bubble_fraction(g)
    ob = pipeline.bubble_fraction(f, b)
    rows.append(f"| {p} | {m} | {(p - 1) / (m + p - 1):.4f} | "
                f"{gb['time']:.4f} | {ob['time']:.4f} | {ob['slots']:.4f} | "
                f"{recompute_time_bubble(f, b):.4f} |")
    print(rows[-1], flush=True)
  return rows


MODEL = TransformerConfig(vocab_size=256, d_model=64, num_layers=8,
                          num_heads=4, num_kv_heads=2, mlp_dim=256)


def temp_bytes(cfg: TransformerConfig, mesh_cfg: sharding.MeshConfig,
               batch: int, seq: int) -> int:
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  params = nnx.to_pure_dict(abstract)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh,
                                                mesh_cfg.rules))
  p_sh = sharding.named(mesh, specs)
  tok = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  b = {"tokens": tok, "targets": tok,
       "loss_mask": jax.ShapeDtypeStruct((batch, seq), jnp.float32)}
  b_sh = sharding.batch_shardings(b, mesh, mesh_cfg.rules)
  loss_fn = make_lm_loss_fn(graphdef)

  def run(p, bb):
    with sharding.activation_sharding(mesh, mesh_cfg.rules):
      return jax.value_and_grad(lambda q: loss_fn(q, bb, None),
                                has_aux=True)(p)

  with jax.set_mesh(mesh):
    compiled = jax.jit(run, in_shardings=(p_sh, b_sh)).lower(
        params, b).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def memory_table(micro_rows: int = 2, seq: int = 128) -> list[str]:
  """Per-device temp MiB; data = 2 everywhere, stage = 4 for the pipelines
  (so a pipeline uses 8 devices, the plain model 2: per device, each
  pipeline stage holds a quarter of the layers)."""
  rows = ["| m | batch | no pipeline (data=2) | GPipe (stage=4) | "
          "GPipe, remat full | 1F1B (stage=4) | 1F1B / GPipe |",
          "|---|---|---|---|---|---|---|"]
  mib = lambda n: n / 2**20  # noqa: E731
  for m in (4, 8, 16):
    batch = m * micro_rows * 2
    plain = temp_bytes(MODEL, sharding.MeshConfig(data=2, fsdp=1), batch, seq)
    out = []
    for schedule, remat in (("gpipe", "none"), ("gpipe", "full"),
                            ("1f1b", "none")):
      cfg = dataclasses.replace(MODEL, pipeline_schedule=schedule,
                                pipeline_microbatches=m, remat_policy=remat)
      out.append(temp_bytes(cfg, sharding.MeshConfig(stage=4, data=2,
                                                     fsdp=1), batch, seq))
    rows.append(f"| {m} | {batch} | {mib(plain):.1f} | {mib(out[0]):.1f} | "
                f"{mib(out[1]):.1f} | {mib(out[2]):.1f} | "
                f"{out[2] / out[0]:.2f} |")
    print(rows[-1], flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  t0 = time.time()
  lines = ["# Pipeline bubble and activation memory", "",
           f"jax {jax.__version__}, {jax.device_count()} simulated CPU "
           "devices. Command: `JAX_PLATFORMS=cpu python "
           "experiments/pipeline_bubble/run.py --out=experiments/"
           "pipeline_bubble/results.md`.", "",
           "## Bubble fraction (read off the executed schedules' slot "
           "records)", ""]
  lines += bubble_table()
  lines += ["", "## Temporary memory per device (MiB, XLA:CPU "
            "memory_analysis, f32, d_model 64, 8 layers, T 128, "
            "2 rows per microbatch per data shard, no remat)", ""]
  lines += memory_table()
  lines += ["", f"({time.time() - t0:.0f} s)"]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  main()
