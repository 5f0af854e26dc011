r"""Train-step check of every attention implementation on this backend.

For each `TransformerConfig.attention_impl` that can run on the current
backend (CPU: einsum, blocked, xla_sdpa, splash in Pallas interpret mode;
GPU: einsum, xla_sdpa, cudnn; TPU: einsum, xla_sdpa, splash), builds the
real lifejax train step (`build_trainer` on a 1-device mesh, the same jitted
and donated step users run), compiles it ahead of time and times blocked
steps on one batch of rows packed with two documents each (so the segment
masking runs). It prints a markdown table with, per impl:

* the first step's loss (every impl computes the same function from the
  same init and batch, so these agree to rounding);
* median step time, tokens/s and MFU: model FLOPs (`lifejax.model.flops`,
  6 N_mm + causal attention) over a matmul peak measured in the same run
  (large square dots of the compute dtype accumulating in f32, at the start
  and end of the run; the larger is used) on this device;
* memory: XLA's compiled memory analysis (arguments + outputs - donated
  aliases + temporaries, and temporaries alone), and on backends that have
  it the device's `memory_stats()` peak (bytes in use at most so far in the
  process, so it is cumulative over the impls in run order).

On CPU splash runs in interpret mode: a correctness path, not a speed
figure for any accelerator.

Usage:
  python tools/accel_check.py --model=test --batch=4 --seq=256 --steps=3
  python tools/accel_check.py --model=smollm2_135m --precision=bf16 \
      --impls=einsum,cudnn --peak_n=8192     # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's lifejax (not another installed copy), and the sibling tool.
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tools")]

import bench_train_step as bts  # noqa: E402  pylint: disable=g-import-not-at-top

from lifejax import sharding  # noqa: E402
from lifejax.data import batching  # noqa: E402
from lifejax.losses.lm import make_lm_loss_fn  # noqa: E402
from lifejax.model import accel_attention, flops  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402
from lifejax.train import optim, trainer as trainer_lib  # noqa: E402
from lifejax.train.checkpoint import CheckpointConfig  # noqa: E402


def available_impls(backend: str, cfg: TransformerConfig) -> list[str]:
  """The attention impls that can run on `backend` for this config."""
  impls = ["einsum", "xla_sdpa"]
  if backend == "cpu":
    impls += ["blocked", "splash"]
  elif backend in ("gpu", "cuda"):
    if accel_attention.cudnn_unsupported(cfg.compute_dtype,
                                         cfg.resolved_head_dim) is None:
      impls.append("cudnn")
  elif backend == "tpu":
    impls.append("splash")
  return impls


def packed_batch(batch: int, seq: int, vocab: int, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """Random tokens, each row two packed documents (cut at 3/8 of the row)
  with positions restarting at the second."""
  b = bts.random_batch(batch, seq, vocab, seed)
  cut = max(1, (3 * seq) // 8)
  b["segment_ids"] = np.where(np.arange(seq) < cut, 1, 2).astype(
      np.int32)[None].repeat(batch, 0)
  pos = np.concatenate([np.arange(cut), np.arange(seq - cut)])
  b["positions"] = pos.astype(np.int32)[None].repeat(batch, 0)
  return b


def device_peak_mb() -> float | None:
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2 ** 20


def run_impl(cfg: TransformerConfig, batch: int, seq: int, steps: int,
             warmup: int, run_dir: str) -> dict[str, Any]:
  """Builds, compiles and times the train step; returns the measurements."""
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, model=1),
                            devices=jax.devices()[:1])
  t = trainer_lib.build_trainer(
      run_dir=run_dir, model_cfg=cfg, make_loss=make_lm_loss_fn,
      optimizer_cfg=optim.OptimizerConfig(warmup_steps=10, total_steps=1000),
      mesh=mesh, rules=sharding.DEFAULT_RULES,
      example_batch=batching.example_lm_batch(batch, seq),
      checkpoint_cfg=CheckpointConfig(async_save=False), resume=False)
  data = sharding.put(packed_batch(batch, seq, cfg.vocab_size),
                      t.batch_shardings)
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = t.train_step.jitted.lower(t.state, data).compile()
    compile_s = time.perf_counter() - t0
  out: dict[str, Any] = {"compile_s": compile_s}
  mem = compiled.memory_analysis()
  if mem is not None:
    out["xla_mb"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     - mem.alias_size_in_bytes
                     + mem.temp_size_in_bytes) / 2 ** 20
    out["xla_temp_mb"] = mem.temp_size_in_bytes / 2 ** 20
  state = t.state
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
    if i == 0:
      out["loss"] = float(metrics["loss"]) if "loss" in metrics else None
  out["step_s"] = statistics.median(times)
  out["device_peak_mb"] = device_peak_mb()
  return out


def measure_peak(dtype: jnp.dtype, n: int, reps: int) -> float:
  """Median FLOP/s of an (n, n) @ (n, n) dot in `dtype`, f32 accumulation."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n),
                        jnp.float32).astype(dtype)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  dot(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times)


def _fmt(x: float | None, spec: str) -> str:
  return "–" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", default="test",
                 help="gin_configs/models/<name>.gin (or a built-in shape of "
                 "tools/bench_train_step.py)")
  p.add_argument("--precision", default=None, choices=sorted(bts.PRECISIONS),
                 help="default: f32 on CPU, bf16 on accelerators")
  p.add_argument("--impls", default=None,
                 help="comma-separated attention_impl values (default: all "
                 "available on this backend)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="extra TransformerConfig overrides (repeatable)")
  p.add_argument("--peak_n", type=int, default=None,
                 help="matmul size of the peak measurement (default 2048 on "
                 "CPU, 8192 on accelerators)")
  p.add_argument("--peak_reps", type=int, default=5)
  p.add_argument("--out", default=None, help="also write the table here")
  args = p.parse_args(argv)

  backend = accel_attention.backend_name()
  cpu = backend == "cpu"
  precision = args.precision or ("f32" if cpu else "bf16")
  peak_n = args.peak_n or (2048 if cpu else 8192)
  overrides = bts._parse_overrides(args.set)  # pylint: disable=protected-access
  base, source = bts.model_config(args.model, precision, None, overrides)
  base = dataclasses.replace(base,
                             max_seq_len=max(base.max_seq_len, args.seq))
  impls = (args.impls.split(",") if args.impls
           else available_impls(backend, base))
  auto = accel_attention.fit_length(
      accel_attention.choose_attention("auto", backend, base.compute_dtype,
                                       base.resolved_head_dim),
      "auto", args.seq)
  compute = jnp.dtype(base.compute_dtype)
  peaks = [measure_peak(compute, peak_n, args.peak_reps)]
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for impl in impls:
      if (impl == "splash"
          and args.seq % accel_attention.SPLASH_MIN_BLOCK):
        results[impl] = {"skipped": f"seq {args.seq} is not a multiple of "
                                    f"{accel_attention.SPLASH_MIN_BLOCK}"}
        continue
      cfg = dataclasses.replace(base, attention_impl=impl)
      results[impl] = run_impl(cfg, args.batch, args.seq, args.steps,
                               args.warmup, os.path.join(tmp, impl))
  peaks.append(measure_peak(compute, peak_n, args.peak_reps))
  peak = max(peaks)

  tokens = args.batch * args.seq
  flops_tok = flops.train_flops_per_token(base, args.seq)
  dev = jax.devices()[0]
  lines = [
      f"Command: `python tools/accel_check.py "
      f"{' '.join(sys.argv[1:] if argv is None else argv)}`",
      "",
      f"Device: {dev.device_kind} (backend {backend}), jax {jax.__version__}."
      f" attention_impl='auto' picks `{auto}` here.",
      f"Model `{args.model}` (from {source}): {base.num_params():,} params, "
      f"{base.num_layers} layers, d_model {base.d_model}, {base.num_heads} "
      f"heads / {base.num_kv_heads} kv heads, head_dim "
      f"{base.resolved_head_dim}, {precision} compute. Batch {args.batch} x "
      f"seq {args.seq} = {tokens} tokens/step, 2 packed documents per row; "
      f"{flops_tok / 1e6:.2f} MFLOP/token (6 N_mm + causal attention).",
      f"Matmul peak ({peak_n}x{peak_n} {compute.name} dots, f32 accumulation,"
      f" start / end of run): {peaks[0] / 1e9:.0f} / {peaks[1] / 1e9:.0f} "
      "GFLOP/s; MFU uses the larger.",
  ]
  if cpu:
    lines.append("CPU: splash runs in Pallas interpret mode (a correctness "
                 "path); these are not speed figures for an accelerator.")
  lines += [
      "",
      "| attention_impl | first-step loss | step ms (median) | tokens/s | "
      "MFU | compile s | XLA memory MB | XLA temp MB | device peak MB |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for impl, r in results.items():
    if "skipped" in r:
      lines.append(f"| {impl} | skipped: {r['skipped']} | | | | | | | |")
      continue
    tok_s = tokens / r["step_s"]
    lines.append(
        f"| {impl} | {_fmt(r['loss'], '.6f')} | {r['step_s'] * 1e3:.1f} | "
        f"{tok_s:,.0f} | "
        f"{100 * flops.mfu(tok_s, flops_tok, peak):.1f}% | "
        f"{r['compile_s']:.1f} | {_fmt(r.get('xla_mb'), '.1f')} | "
        f"{_fmt(r.get('xla_temp_mb'), '.1f')} | "
        f"{_fmt(r['device_peak_mb'], '.0f')} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return text


if __name__ == "__main__":
  main()
