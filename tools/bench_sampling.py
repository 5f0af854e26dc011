r"""Benchmarks batched greedy sampling: lifejax `generate` vs HF `generate`.

For each precision, in one process and one run:
  * lifejax `sampling.generate` (KV-cache prefill + single-token decode
    steps, jitted once per shape) on a batch of left-padded prompts;
  * HuggingFace `LlamaForCausalLM.generate` (torch CPU, eager, greedy,
    `use_cache=True`) on the same prompts, with the same weights exported
    through `lifejax.model.hf_export.save_hf_checkpoint`, torch's intra-op
    threads set to the cores JAX uses (like for like) and, by default, also to 1
    (on cores other processes keep busy, 2 OpenMP threads on 2 cores can
    be several times slower than 1).

Each side runs the full generation (`--new_tokens`) and a 1-token
generation; the latter is the time to first token (prefill + one argmax),
and (full - first) / (new_tokens - 1) is the per-token decode latency. Every
call is timed blocked (`block_until_ready` / a host copy of the tokens)
after a warmup call (whose time, compile included, is reported separately).
Runs alternate between lifejax and HF, in reversed order on odd rounds, so
that load from other processes hits both alike; the reported figure is the
median over rounds.

Greedy agreement: the lifejax and HF tokens of the timed runs are compared
position by position, and the last-prompt-position logits of both models
(plain forward passes) are compared directly.

Usage:
  python tools/bench_sampling.py --model=cpu10m --batch=16 --prompt_len=128 \
      --new_tokens=64 --precision=f32,bf16 \
      --out=experiments/bench_sampling/results.md
"""

from __future__ import annotations

import argparse
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
from flax import nnx

from lifejax import sharding
from lifejax.model import hf_export, sampling, transformer
from lifejax.model.config import TransformerConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (lifejax param dtype, lifejax compute dtype, HF torch dtype). The
# lifejax params stay f32 (as training leaves them); HF loads the exported
# f32 weights cast to bf16, the usual way to run a bf16 HF model.
PRECISIONS: dict[str, tuple[str, str, str]] = {
    "f32": ("float32", "float32", "float32"),
    "bf16": ("float32", "bfloat16", "bfloat16"),
}


def model_config(name: str, precision: str, init_std: float | None
                 ) -> TransformerConfig:
  """gin_configs/models/<name>.gin at `precision` (logits always f32)."""
  import gin  # pylint: disable=g-import-not-at-top

  from lifejax import main as main_lib  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  main_lib.parse_gin([f"models/{name}.gin"], [])
  try:
    cfg = gin.get_configurable(TransformerConfig)()
  finally:
    gin.clear_config()
  param_dtype, compute_dtype, _ = PRECISIONS[precision]
  extra = {} if init_std is None else {"init_std": init_std}
  return dataclasses.replace(cfg, param_dtype=param_dtype,
                             compute_dtype=compute_dtype,
                             output_dtype="float32", **extra)


def make_prompts(batch: int, prompt_len: int, min_len: int, vocab: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded (B, P) int32 ids in [1, vocab) and their (B, P) mask.

  Row lengths are drawn uniformly from [min_len, prompt_len]; row 0 always
  has the full length, so the batch really is (B, P).
  """
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, prompt_len + 1, batch)
  lengths[0] = prompt_len
  ids = rng.integers(1, vocab, (batch, prompt_len)).astype(np.int32)
  mask = np.arange(prompt_len)[None, :] >= (prompt_len - lengths)[:, None]
  return ids * mask, mask.astype(np.int32)


def num_threads() -> int:
  """Cores this process may run on (XLA:CPU sizes its thread pool to them)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


@dataclasses.dataclass
class Timed:
  """A blocking call returning the generated tokens (B, N) as numpy."""

  call: Callable[[], np.ndarray]
  first_s: float = 0.0
  times: list[float] = dataclasses.field(default_factory=list)
  cpu_times: list[float] = dataclasses.field(default_factory=list)
  tokens: np.ndarray | None = None

  def warmup(self) -> None:
    t0 = time.perf_counter()
    self.tokens = self.call()
    self.first_s = time.perf_counter() - t0

  def run(self) -> None:
    c0, t0 = _cpu_seconds(), time.perf_counter()
    self.tokens = self.call()
    self.times.append(time.perf_counter() - t0)
    self.cpu_times.append(_cpu_seconds() - c0)

  @property
  def median(self) -> float:
    return statistics.median(self.times)


@dataclasses.dataclass
class Side:
  """One framework at one precision: full generation and first token."""

  framework: str
  precision: str
  threads: int
  full: Timed
  first: Timed
  last_logits_BxV: np.ndarray
  devices: int = 1

  @property
  def name(self) -> str:
    return f"{self.framework}, {self.threads} thread" + (
        "s" if self.threads > 1 else "") + (
            f", batch over {self.devices} devices" if self.devices > 1
            else "")


# -- lifejax -------------------------------------------------------------------


def lifejax_side(cfg: TransformerConfig, params: dict[str, Any], graphdef: Any,
                 ids: np.ndarray, mask: np.ndarray, new_tokens: int,
                 precision: str, threads: int, devices: int = 1) -> Side:
  """`devices` > 1 shards the batch over that many local devices (data
  parallel, params replicated); the same jitted `generate` runs SPMD."""
  if devices > 1:
    mesh_cfg = sharding.MeshConfig(data=devices, fsdp=1, model=1)
    mesh = sharding.make_mesh(mesh_cfg, jax.local_devices())
    try:
      sharding.check_batch_divisible(ids.shape[0], mesh, mesh_cfg.rules,
                                     "--batch")
    except ValueError as e:
      raise SystemExit(str(e)) from None
    rows = jax.sharding.NamedSharding(
        mesh, sharding.batch_spec(mesh, mesh_cfg.rules))
    params = jax.device_put(params, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    ids_j, mask_j = jax.device_put(ids, rows), jax.device_put(mask, rows)
  else:
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)

  def gen(n: int) -> Callable[[], np.ndarray]:
    scfg = sampling.SamplingConfig(max_new_tokens=n)

    def call() -> np.ndarray:
      toks, lengths = sampling.generate(graphdef, params, ids_j, mask_j, scfg)
      jax.block_until_ready((toks, lengths))
      return np.asarray(toks)

    return call

  pos = jnp.maximum(jnp.cumsum(mask_j, axis=1) - 1, 0)
  logits = nnx.merge(graphdef, params)(ids_j, pos, mask_j)[:, -1]
  return Side("lifejax", precision, threads, Timed(gen(new_tokens)),
              Timed(gen(1)), np.asarray(logits, np.float32), devices)


# -- HuggingFace / torch peer --------------------------------------------------


def hf_sides(hf_dir: str, ids: np.ndarray, mask: np.ndarray, new_tokens: int,
             precision: str, thread_counts: list[int]) -> list[Side]:
  """One HF model, timed at each torch intra-op thread count."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  dtype = getattr(torch, PRECISIONS[precision][2])
  model = transformers.LlamaForCausalLM.from_pretrained(
      hf_dir, dtype=dtype).eval()
  ids_t = torch.from_numpy(ids).long()
  mask_t = torch.from_numpy(mask).long()
  p = ids.shape[1]

  def gen(n: int, threads: int) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
      torch.set_num_threads(threads)
      with torch.inference_mode():
        out = model.generate(
            input_ids=ids_t, attention_mask=mask_t, max_new_tokens=n,
            do_sample=False, num_beams=1, use_cache=True, pad_token_id=0,
            eos_token_id=None)
      if out.shape[1] != p + n:  # no stop ids, so every row runs n steps
        raise RuntimeError(f"HF generated {out.shape[1] - p} tokens, not {n}")
      return out[:, p:].numpy().astype(np.int32)
    return call

  with torch.inference_mode():
    # Positions from the mask, as `generate` derives them for left padding.
    pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids_t, attention_mask=mask_t,
                   position_ids=pos).logits[:, -1].float().numpy()
  return [Side("HF", precision, t, Timed(gen(new_tokens, t)), Timed(gen(1, t)),
               logits) for t in thread_counts]


# -- report --------------------------------------------------------------------


def agreement(a_BxN: np.ndarray, b_BxN: np.ndarray, k: int
              ) -> dict[str, float]:
  """How far two greedy continuations agree (rows compared independently)."""
  same = a_BxN == b_BxN
  n = same.shape[1]
  prefix = np.where(same.all(axis=1), n, np.argmin(same, axis=1))
  return {"rows_first_k": float(np.mean(prefix >= min(k, n))),
          "rows_all": float(np.mean(prefix == n)),
          "mean_prefix": float(np.mean(prefix)),
          "first_token": float(np.mean(same[:, 0]))}


def report(args: argparse.Namespace, cfg: TransformerConfig,
           sides: list[Side], threads: int, command: str,
           prompt_lengths: np.ndarray, loads: tuple[float, float]) -> str:
  """The markdown report: context, the timing table, greedy agreement."""
  b, n = args.batch, args.new_tokens
  k = min(args.agree_tokens, n)
  peer_threads = sorted({s.threads for s in sides if s.framework == "HF"},
                        reverse=True)
  lines = [
      f"Command: `{command}`",
      "",
      f"Model `{args.model}` (gin_configs/models/{args.model}.gin): "
      f"{cfg.num_params():,} params, vocab {cfg.vocab_size}, d_model "
      f"{cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads / "
      f"{cfg.num_kv_heads} kv heads, mlp {cfg.mlp_dim}; random weights "
      f"(init_std {cfg.init_std}, seed {args.seed}). Batch {b}, prompts "
      f"left-padded to {args.prompt_len} (real lengths "
      f"{prompt_lengths.min()}-{prompt_lengths.max()}, mean "
      f"{prompt_lengths.mean():.0f}), {n} new tokens per row, greedy, no "
      "stop tokens (every row generates exactly that many).",
      "",
      f"Machine: {threads} cores. JAX's XLA:CPU thread pool uses all of "
      "them; HF runs with `torch.set_num_threads(t)` for t in "
      f"{peer_threads} ({threads} = the same cores as JAX, the like-for-like"
      " comparison; on cores busy with other processes, fewer OpenMP "
      f"threads can be faster). jax {jax.__version__}, torch "
      f"{_version('torch')}, transformers {_version('transformers')} "
      "(eager, default sdpa attention and DynamicCache, no torch.compile). "
      "lifejax bf16 = f32 params with bf16 compute (f32 accumulation, "
      "norms, softmax and logits); HF bf16 = the exported weights loaded "
      "with `dtype=torch.bfloat16`.",
      "",
      f"Timing: one warmup call per configuration, then {args.rounds} round(s)"
      " alternating lifejax and HF (order reversed every other round), each "
      "call blocked until the tokens are on the host; medians over rounds "
      "(min-max in brackets). TTFT = a 1-token generation (prefill + "
      "argmax); decode ms/step = (full - TTFT) / (new_tokens - 1), one step "
      f"producing {b} tokens. Other processes share the cores, so the "
      "numbers are noisy: the 1-minute load average was "
      f"{loads[0]:.1f} at the start and {loads[1]:.1f} at the end of the run "
      f"on {threads} cores; CPU/wall is the process's CPU seconds per wall "
      "second during the full runs.",
      "",
      "| precision | runner | tokens/s | lifejax ÷ this | total ms | "
      "TTFT ms | decode ms/step | ms/token (per row) | CPU/wall | "
      "first calls s |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  tok_s = {id(s): b * n / s.full.median for s in sides}
  lifejax = {s.precision: s for s in sides if s.framework == "lifejax"}
  for s in sides:
    full, first = s.full, s.first
    lj = lifejax.get(s.precision)
    ratio = (f"{tok_s[id(lj)] / tok_s[id(s)]:.2f}x"
             if s.framework == "HF" and lj else "–")
    decode = (full.median - first.median) / (n - 1)
    util = statistics.median(c / w for c, w in zip(full.cpu_times,
                                                   full.times))
    lines.append(
        f"| {s.precision} | {s.name} | {tok_s[id(s)]:,.0f} | {ratio} | "
        f"{full.median * 1e3:.0f} ({min(full.times) * 1e3:.0f}-"
        f"{max(full.times) * 1e3:.0f}) | {first.median * 1e3:.0f} "
        f"({min(first.times) * 1e3:.0f}-{max(first.times) * 1e3:.0f}) | "
        f"{decode * 1e3:.1f} | {full.median / n * 1e3:.1f} | {util:.2f} | "
        f"{full.first_s:.1f} + {first.first_s:.1f} |")
  lines += [
      "",
      "tokens/s = batch x new_tokens / total; lifejax ÷ this = lifejax "
      "tokens/s over the row's. First calls s = the warmup calls of the "
      "full and of the 1-token generation; for lifejax they include the "
      "XLA compile (one per shape), ~ " + ", ".join(
          f"{s.precision} {s.full.first_s - s.full.median:.1f} s + "
          f"{s.first.first_s - s.first.median:.1f} s"
          for s in lifejax.values()) + " beyond a warm call.",
  ]
  agree_lines = []
  for prec, lj in lifejax.items():
    peer = next((s for s in sides if s.framework == "HF"
                 and s.precision == prec), None)
    if peer is None:
      continue
    a = agreement(lj.full.tokens, peer.full.tokens, k)
    diff = np.abs(lj.last_logits_BxV - peer.last_logits_BxV)
    agree_lines.append(
        f"| {prec} | {100 * a['first_token']:.0f}% | "
        f"{100 * a['rows_first_k']:.0f}% | {100 * a['rows_all']:.0f}% | "
        f"{a['mean_prefix']:.1f} / {n} | {diff.max():.2e} |")
  if agree_lines:
    lines += [
        "",
        f"Greedy agreement, lifejax vs HF, over the {b} rows: rows whose "
        f"first token / first {k} tokens / all {n} tokens agree, the mean "
        "length of the agreeing prefix, and the largest |logit difference| "
        "at the last prompt position (plain forward passes of both models). "
        "After a first disagreement the contexts differ, so later tokens "
        "are not comparable.",
        "",
        f"| precision | first token | first {k} | all | "
        "mean agreeing prefix | max abs logit diff |",
        "|---|---|---|---|---|---|",
    ] + agree_lines
  return "\n".join(lines) + "\n"


def _ensure_host_devices(n: int) -> None:
  """Asks XLA:CPU for `n` host devices (only possible before JAX's backend
  starts, e.g. when the tool runs as a script); fails clearly otherwise."""
  flag = f"--xla_force_host_platform_device_count={n}"
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
  if len(jax.local_devices()) < n:
    raise SystemExit(f"--lifejax_devices={n} but JAX has "
                     f"{len(jax.local_devices())} device(s); set XLA_FLAGS="
                     f"{flag} before JAX starts")


def _version(mod: str) -> str:
  return getattr(sys.modules.get(mod), "__version__", "?")


def main(argv: list[str] | None = None) -> str:
  """Runs the benchmark; prints (and returns) the markdown report."""
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", default="cpu10m",
                 help="a gin_configs/models/<name>.gin")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--min_prompt_len", type=int, default=None,
                 help="shortest real prompt; rows are left-padded to "
                 "--prompt_len (default: all rows full length)")
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--precision", default="f32,bf16",
                 help="comma-separated subset of " + ",".join(PRECISIONS))
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--no_peer", action="store_true",
                 help="lifejax only (no torch / transformers)")
  p.add_argument("--peer_threads", default=None,
                 help="comma-separated torch thread counts for HF (default: "
                 "the cores JAX uses, then 1)")
  p.add_argument("--agree_tokens", type=int, default=8)
  p.add_argument("--init_std", type=float, default=None,
                 help="weight init std (default: the config's)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--lifejax_devices", type=int, default=1,
                 help="shard lifejax's batch over this many XLA:CPU "
                 "devices (data parallel; the process is given that many "
                 "host devices if JAX has not started yet)")
  p.add_argument("--out", default=None, help="also write the report here")
  args = p.parse_args(argv)
  if args.lifejax_devices > 1:
    _ensure_host_devices(args.lifejax_devices)
  command = "python " + " ".join(
      [os.path.relpath(os.path.abspath(__file__), _ROOT)]
      + (sys.argv[1:] if argv is None else list(argv)))
  precisions = [s for s in args.precision.split(",") if s]
  for prec in precisions:
    if prec not in PRECISIONS:
      raise SystemExit(f"unknown precision {prec!r}")
  if args.new_tokens < 2:
    raise SystemExit("--new_tokens must be >= 2 (decode latency needs it)")
  threads = num_threads()
  peer_threads = ([int(t) for t in args.peer_threads.split(",")]
                  if args.peer_threads else list(dict.fromkeys([threads, 1])))
  load_start = os.getloadavg()[0]

  cfg = None
  ids = mask = None
  sides: list[Side] = []
  with tempfile.TemporaryDirectory() as hf_dir:
    for prec in precisions:
      cfg = model_config(args.model, prec, args.init_std)
      model = transformer.create_model(cfg, args.seed)
      graphdef, state = nnx.split(model, nnx.Param)
      params = nnx.to_pure_dict(state)
      if ids is None:
        ids, mask = make_prompts(
            args.batch, args.prompt_len,
            args.min_prompt_len or args.prompt_len, cfg.vocab_size,
            args.seed)
        if not args.no_peer:  # f32 weights; HF casts them for bf16
          hf_export.save_hf_checkpoint(hf_dir, cfg, params, dtype="float32")
      sides.append(lifejax_side(cfg, params, graphdef, ids, mask,
                                args.new_tokens, prec, threads,
                                args.lifejax_devices))
      if not args.no_peer:
        sides += hf_sides(hf_dir, ids, mask, args.new_tokens, prec,
                          peer_threads)
    for s in sides:
      s.full.warmup()
      s.first.warmup()
    for r in range(args.rounds):
      for s in (sides if r % 2 == 0 else sides[::-1]):
        s.full.run()
        s.first.run()

  text = report(args, cfg, sides, threads, command, mask.sum(axis=1),
                (load_start, os.getloadavg()[0]))
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  return text


if __name__ == "__main__":
  main()
