r"""Benchmarks the lifejax train step against this machine's matmul peak.

Measures, in one process and one run:
  * the machine's matmul peak: large square f32 dots and bf16 dots that
    accumulate and return f32 (`preferred_element_type`), at the start and at
    the end of the run (other processes share the cores, so the larger of the
    two medians is the peak; both are reported);
  * the real lifejax train step (`build_trainer` on a 1-device mesh: the same
    jitted, donated step users run) at f32 and/or bf16 compute: tokens/s,
    achieved model TFLOP/s, MFU, compile time, XLA's memory analysis and the
    process max RSS;
  * with `--peer`: the same model shape as HuggingFace `LlamaForCausalLM` +
    torch AdamW (+ global-norm clipping, as lifejax does) on CPU, fp32 and bf16
    autocast, with torch's intra-op threads set to the number of cores JAX
    uses.

`--malloc=tuned` re-executes the run with glibc malloc tuned for large,
short-lived buffers (`TUNED_MALLOC`): XLA:CPU allocates its temporaries per
step, and with the default settings every step page-faults them in again.
It applies to the whole process, so to the peer as well.

Steps are timed one by one, each blocked until done, after warmup. Runners are
interleaved in rounds (runner A k steps, runner B k steps, ...) so that load
from other processes hits all of them alike; the reported number is the median
step time over all rounds.

Usage:
  python tools/bench_train_step.py --model=cpu10m --precision=f32,bf16 \
      --peer --out=experiments/bench_train_step/results.md
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lifejax import sharding
from lifejax.data import batching
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import flops
from lifejax.model.config import TransformerConfig
from lifejax.train import optim, trainer as trainer_lib
from lifejax.train.checkpoint import CheckpointConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Transparent huge pages for malloc'd memory, one arena, no per-allocation
# mmap and no trimming: freed step buffers stay mapped for the next step
# (glibc >= 2.35; older glibc ignores unknown tunables).
TUNED_MALLOC = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:"
                "glibc.malloc.mmap_max=0:"
                "glibc.malloc.trim_threshold=68719476736")

# Built-in shapes, used when gin_configs/models/<name>.gin does not exist.
# cpu10m: ~10.1M parameters with untied embeddings (4.2M of them embeddings).
MODELS: dict[str, dict[str, Any]] = {
    "test": dict(vocab_size=256, d_model=64, num_layers=2, num_heads=4,
                 num_kv_heads=2, mlp_dim=256),
    "cpu10m": dict(vocab_size=8192, d_model=256, num_layers=6, num_heads=8,
                   num_kv_heads=4, mlp_dim=1024),
}

PRECISIONS = {
    # name -> (param dtype, compute dtype); logits are f32 in both.
    "f32": ("float32", "float32"),
    "bf16": ("float32", "bfloat16"),
}


def _gin_bindings(path: str) -> dict[str, Any]:
  """The TransformerConfig bindings of a model gin file."""
  import gin  # pylint: disable=g-import-not-at-top

  try:  # the same name stages.py registers, so the files parse unchanged
    gin.external_configurable(TransformerConfig, module="lifejax")
  except ValueError:  # already registered in this process
    pass
  gin.clear_config()
  gin.parse_config_file(path)
  bindings = dict(gin.get_bindings("lifejax.TransformerConfig"))
  gin.clear_config()
  return bindings


def model_config(name: str, precision: str, remat: str | None,
                 overrides: dict[str, Any]) -> tuple[TransformerConfig, str]:
  """The named model's config at `precision`, and where its shape came from.

  Shapes come from gin_configs/models/<name>.gin when it exists (what runs
  use), else from MODELS. `precision` sets param/compute dtypes; `remat`
  (None = the file's choice) and `overrides` are applied last.
  """
  gin_path = os.path.join(_ROOT, "gin_configs", "models", f"{name}.gin")
  if os.path.exists(gin_path):
    shape, source = _gin_bindings(gin_path), os.path.relpath(gin_path, _ROOT)
  elif name in MODELS:
    shape, source = dict(MODELS[name]), "tools/bench_train_step.py:MODELS"
  else:
    raise SystemExit(f"unknown model {name!r}: no {gin_path} and not one of "
                     f"{sorted(MODELS)}")
  param_dtype, compute_dtype = PRECISIONS[precision]
  shape.update(param_dtype=param_dtype, compute_dtype=compute_dtype,
               output_dtype="float32")
  if remat is not None:
    shape["remat_policy"] = remat
  shape.update(overrides)
  return TransformerConfig(**shape), source


def _parse_overrides(items: list[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    key, value = item.split("=", 1)
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


# -- timing helpers ------------------------------------------------------------


def num_threads() -> int:
  """Cores this process may run on (XLA:CPU sizes its thread pool to them)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def max_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB


def measure_peaks(n: int, reps: int) -> dict[str, float]:
  """Median GFLOP/s of an (n, n) @ (n, n) dot: f32, and bf16 -> f32."""
  out = {}
  key = jax.random.key(0)
  a32 = jax.random.normal(key, (n, n), jnp.float32)
  b32 = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
  for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
    a, b = a32.astype(dtype), b32.astype(dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y,
                                       preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      dot(a, b).block_until_ready()
      times.append(time.perf_counter() - t0)
    out[name] = 2 * n ** 3 / statistics.median(times) / 1e9
  return out


@dataclasses.dataclass
class Runner:
  """One benchmarked configuration: `step()` runs one blocked train step."""

  name: str
  framework: str
  precision: str
  step: Callable[[], None]
  info: dict[str, Any]
  times: list[float] = dataclasses.field(default_factory=list)
  cpu_times: list[float] = dataclasses.field(default_factory=list)

  def run(self, n: int) -> None:
    for _ in range(n):
      c0, t0 = _cpu_seconds(), time.perf_counter()
      self.step()
      self.times.append(time.perf_counter() - t0)
      self.cpu_times.append(_cpu_seconds() - c0)


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  r = np.random.default_rng(seed)
  toks = r.integers(1, vocab, (batch, seq + 1)).astype(np.int32)
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
          "loss_mask": np.ones((batch, seq), np.float32),
          "segment_ids": np.ones((batch, seq), np.int32),
          "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}


# -- lifejax -------------------------------------------------------------------


def lifejax_runner(cfg: TransformerConfig, precision: str, batch: int,
                   seq: int, warmup: int, run_dir: str,
                   keep_hlo: bool = False) -> Runner:
  """Builds the trainer on a 1-device mesh, compiles AOT, warms up.
  keep_hlo: keep the optimized HLO text in info["hlo_text"] (for
  tools/profile_train_step.py; megabytes at larger shapes)."""
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, model=1),
                            devices=jax.devices()[:1])
  example = batching.example_lm_batch(batch, seq)
  t = trainer_lib.build_trainer(
      run_dir=run_dir, model_cfg=cfg, make_loss=make_lm_loss_fn,
      optimizer_cfg=optim.OptimizerConfig(warmup_steps=10, total_steps=1000),
      mesh=mesh, rules=sharding.DEFAULT_RULES, example_batch=example,
      checkpoint_cfg=CheckpointConfig(async_save=False), resume=False)
  data = sharding.put(random_batch(batch, seq, cfg.vocab_size),
                      t.batch_shardings)
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    lowered = t.train_step.jitted.lower(t.state, data)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  holder = {"state": t.state}

  def step():
    holder["state"], metrics = compiled(holder["state"], data)
    jax.block_until_ready((holder["state"], metrics))

  for _ in range(warmup):
    step()
  info = {"trace_s": t1 - t0, "compile_s": t2 - t1}
  if keep_hlo:
    info["hlo_text"] = compiled.as_text()
  if mem is not None:
    info["xla_mb"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                      - mem.alias_size_in_bytes
                      + mem.temp_size_in_bytes) / 2 ** 20
    info["xla_temp_mb"] = mem.temp_size_in_bytes / 2 ** 20
  return Runner(f"lifejax {precision}", "lifejax", precision, step, info)


# -- HuggingFace / torch peer --------------------------------------------------


def peer_runner(cfg: TransformerConfig, precision: str, batch: int, seq: int,
                warmup: int, threads: int) -> Runner:
  """HF LlamaForCausalLM with the same shape, torch AdamW, eager mode."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
      intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.resolved_head_dim, max_position_embeddings=max(
          seq, cfg.max_seq_len), rms_norm_eps=cfg.rms_eps,
      rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
      attention_bias=False, mlp_bias=False)
  hf_cfg._attn_implementation = "sdpa"  # torch's fused attention
  model = transformers.LlamaForCausalLM(hf_cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95),
                          eps=1e-8, weight_decay=0.1)
  b = random_batch(batch, seq, cfg.vocab_size)
  tokens = torch.from_numpy(b["tokens"]).long()
  targets = torch.from_numpy(b["targets"]).long()
  autocast = precision == "bf16"

  def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      logits = model(input_ids=tokens).logits
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, cfg.vocab_size), targets.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.detach().item()  # a host sync, like block_until_ready

  rss0 = max_rss_mb()
  for _ in range(warmup):
    step()
  info = {"rss_growth_mb": max_rss_mb() - rss0,
          "params": sum(p.numel() for p in model.parameters())}
  return Runner(f"HF torch {precision}", "peer", precision, step, info)


# -- report --------------------------------------------------------------------


def rerun_with_tuned_malloc(script: str, argv: list[str] | None) -> None:
  """Re-executes `script` with the same arguments under TUNED_MALLOC unless
  it already runs under it (glibc reads its tunables at process start)."""
  if os.environ.get("GLIBC_TUNABLES") == TUNED_MALLOC:
    return
  env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC)
  os.execve(sys.executable, [sys.executable, os.path.abspath(script)]
            + (sys.argv[1:] if argv is None else argv), env)


def emit(text: str, out: str | None) -> None:
  """Prints the report and, with `out`, writes it there too."""
  print(text)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(text)



def _fmt(x: float | None, spec: str) -> str:
  return "–" if x is None else format(x, spec)


def report(args: argparse.Namespace, cfgs: dict[str, TransformerConfig],
           source: str, runners: list[Runner], peaks: list[dict[str, float]],
           rss_lifejax_mb: float, threads: int, command: str) -> str:
  """The markdown report (tables + context)."""
  tokens = args.batch * args.seq
  peak = {k: max(p[k] for p in peaks) for k in peaks[0]}
  cfg0 = next(iter(cfgs.values()))
  flops_tok = flops.train_flops_per_token(cfg0, args.seq)
  lines = [
      f"Command: `{command}`",
      "",
      f"Model `{args.model}` (shape from {source}): {cfg0.num_params():,} "
      f"params, vocab {cfg0.vocab_size}, d_model {cfg0.d_model}, "
      f"{cfg0.num_layers} layers, {cfg0.num_heads} heads / "
      f"{cfg0.num_kv_heads} kv heads, mlp {cfg0.mlp_dim}, remat "
      f"`{cfg0.remat_policy}`. Batch {args.batch} x seq {args.seq} = "
      f"{tokens} tokens/step; {flops_tok / 1e6:.1f} MFLOP/token "
      "(6 N_mm + causal attention, `lifejax.model.flops`).",
      "",
      f"Machine: {threads} cores (JAX/XLA thread pool = all of them; torch "
      f"`set_num_threads({threads})`), jax {jax.__version__}. Measured matmul "
      f"peak ({args.peak_n}x{args.peak_n} dots, start / end of run): "
      f"f32 {peaks[0]['f32']:.0f} / {peaks[-1]['f32']:.0f} GFLOP/s, bf16 "
      f"inputs -> f32 {peaks[0]['bf16']:.0f} / {peaks[-1]['bf16']:.0f} "
      "GFLOP/s; MFU uses the larger.",
      "",
      f"malloc: {'tuned (GLIBC_TUNABLES=' + TUNED_MALLOC + ')' if args.malloc == 'tuned' else 'glibc defaults'}.",
      "",
      f"Step times: {args.warmup} warmup steps, then {args.rounds} "
      f"interleaved rounds x {args.steps_per_round} blocked steps per runner;"
      " median (min-max). CPU s/step = process user+sys CPU time per step "
      f"(median); wall ms well above CPU s / {threads} means other processes "
      "were using the cores.",
      "",
      "| runner | step ms median (min-max) | tokens/s | model TFLOP/s | "
      "MFU vs f32 peak | MFU vs bf16 peak | vs peer | CPU s/step | "
      "compile s | XLA memory MB |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  tps = {}
  for r in runners:
    tps[(r.framework, r.precision)] = tokens / statistics.median(r.times)
  for r in runners:
    med = statistics.median(r.times)
    tok_s = tokens / med
    tflops = tok_s * flops_tok / 1e12
    peer = tps.get(("peer", r.precision))
    ratio = (f"{tok_s / peer:.2f}x" if r.framework == "lifejax" and peer
             else "–")
    lines.append(
        f"| {r.name} | {med * 1e3:.0f} ({min(r.times) * 1e3:.0f}-"
        f"{max(r.times) * 1e3:.0f}) | {tok_s:,.0f} | {tflops:.3f} | "
        f"{100 * flops.mfu(tok_s, flops_tok, peak['f32'] * 1e9):.0f}% | "
        f"{100 * flops.mfu(tok_s, flops_tok, peak['bf16'] * 1e9):.0f}% | "
        f"{ratio} | "
        f"{statistics.median(r.cpu_times):.2f} | "
        f"{_fmt(r.info.get('compile_s'), '.1f')} | "
        f"{_fmt(r.info.get('xla_mb'), '.0f')} |")
  lines += [
      "",
      "Compile s = XLA compile of the AOT-lowered step (tracing+lowering "
      "took " + ", ".join(f"{r.info['trace_s']:.1f} s" for r in runners
                          if "trace_s" in r.info) + "). XLA memory = "
      "arguments + outputs - donated aliases + temporaries of the compiled "
      "step (temporaries: " + ", ".join(
          f"{r.precision} {r.info['xla_temp_mb']:.0f} MB" for r in runners
          if "xla_temp_mb" in r.info) + f"). Process max RSS after the "
      f"lifejax runs were built and warmed up: {rss_lifejax_mb:.0f} MB.",
  ]
  peer_rs = [r for r in runners if r.framework == "peer"]
  if peer_rs:
    lines.append(
        "Peer: transformers " + _version("transformers") + ", torch " +
        _version("torch") + ", eager, sdpa attention, "
        f"{peer_rs[0].info['params']:,} params; max RSS grew by " + ", ".join(
            f"{r.info['rss_growth_mb']:.0f} MB ({r.precision})"
            for r in peer_rs) + " while building and warming it up.")
  return "\n".join(lines) + "\n"


def _version(mod: str) -> str:
  return getattr(sys.modules.get(mod), "__version__", "?")


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", default="cpu10m")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--precision", default="f32,bf16",
                 help="comma-separated subset of " + ",".join(PRECISIONS))
  p.add_argument("--remat", default=None,
                 help="remat policy name (default: the config's default)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="extra TransformerConfig overrides, e.g. --set "
                 "scan_unroll=2 (repeatable)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps_per_round", type=int, default=3)
  p.add_argument("--steps", type=int, default=None,
                 help="shorthand: total timed steps per runner (1 round)")
  p.add_argument("--peer", action="store_true",
                 help="also train HF LlamaForCausalLM + torch")
  p.add_argument("--peak_n", type=int, default=2048)
  p.add_argument("--peak_reps", type=int, default=10)
  p.add_argument("--out", default=None, help="write the markdown table here")
  p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                 help="tuned: re-run under GLIBC_TUNABLES=TUNED_MALLOC")
  p.add_argument("--profile", default=None, metavar="DIR",
                 help="write a jax.profiler trace of 2 lifejax steps here")
  args = p.parse_args(argv)
  if args.malloc == "tuned":
    rerun_with_tuned_malloc(__file__, argv)
  if args.steps is not None:
    args.rounds, args.steps_per_round = 1, args.steps
  command = "python " + " ".join(
      [os.path.relpath(os.path.abspath(__file__), _ROOT)]
      + (sys.argv[1:] if argv is None else argv))

  threads = num_threads()
  precisions = [s for s in args.precision.split(",") if s]
  for prec in precisions:
    if prec not in PRECISIONS:
      raise SystemExit(f"unknown precision {prec!r}")
  overrides = _parse_overrides(args.set)
  peaks = [measure_peaks(args.peak_n, args.peak_reps)]

  runners, cfgs = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    for prec in precisions:
      cfg, source = model_config(args.model, prec, args.remat, overrides)
      cfgs[prec] = cfg
      runners.append(lifejax_runner(cfg, prec, args.batch, args.seq,
                                    args.warmup, os.path.join(tmp, prec)))
    rss_lifejax = max_rss_mb()
    if args.peer:
      for prec in precisions:
        runners.append(peer_runner(cfgs[prec], prec, args.batch, args.seq,
                                   args.warmup, threads))
    if args.profile:
      with jax.profiler.trace(args.profile):
        for r in runners:
          if r.framework == "lifejax":
            r.run(2)
      for r in runners:
        r.times.clear()
        r.cpu_times.clear()
    for _ in range(args.rounds):
      for r in runners:
        r.run(args.steps_per_round)
  peaks.append(measure_peaks(args.peak_n, args.peak_reps))

  emit(report(args, cfgs, source, runners, peaks, rss_lifejax, threads,
              command), args.out)


if __name__ == "__main__":
  main()
