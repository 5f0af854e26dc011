"""Remat policies: memory against step time, next to the memory planner.

Issue 19, row 5 (seed 000, 5.4: "Gradient checkpointing for memory -
during forward pass, save fewer activations; recompute missing ones during
backward"; "OOM during long-context SFT. Turn on gradient checkpointing").
Claim: each remat policy trades step time for memory - less memory, more
time, ordered by how much it saves.

For every policy of `lifejax.model.config.REMAT_POLICIES` this measures
the real train step (`tools/plan_memory.compile_train_step`: LM loss,
AdamW with clipping, the non-finite guard, donated state) at one shape:

* planner: `memory_plan.plan(..., backend="cpu")`, per-device bytes;
* XLA: the compiled step's memory analysis, argument + output - alias +
  temp (`tools/plan_memory.compiled_memory`, as the planner validation);
* measured: a fresh worker process per configuration (this file with
  --worker) in which glibc returns every freed block of >= 64 KiB to the
  OS (fixed mmap threshold), so resident memory follows the live buffers.
  "above idle" = peak RSS while running steps (VmHWM, reset just before
  the first timed step) minus the RSS after importing JAX and lifejax and
  starting the backend; "above ready" = the same peak minus the RSS just
  before the timed steps (state, batch and compiled program resident, one
  warm-up step done), i.e. what the step itself allocates;
* step time: all configurations compiled and resident in this process,
  `rounds` rounds, each running `steps` blocked steps of every
  configuration in turn (the order rotated every round); per round the
  median step (wall, and the process's CPU time over all threads, which a
  loaded host inflates less), and its ratio to the XLA formulation's
  `none` of the same round; reported: median over rounds (ratios: median
  [min, max]);
* matmul FLOPs of loss + gradient from the step's jaxpr
  (`flops.jaxpr_matmul_flops`, scan bodies counted per layer: the
  recomputed forward is in the gradient's jaxpr; XLA's cost analysis
  counts a loop body once, so it cannot give this for a scanned stack).

Two formulations. "xla": what `auto` resolves to on TPU/GPU and what the
planner models (einsum attention, XLA matmuls, scanned layers), every
policy. "cpu": the CPU default (`auto`: the CPU kernels; with no remat the
layers are unrolled and the weight gradient reads transposed residuals,
which remat disables), for `none` and `full`: what a CPU user gets when
turning remat on.

  python experiments/remat/remat.py [--tiny] [--out=DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MIB = 1 << 20
PLOT = "remat.png"
# Policies from the most memory saved (recompute everything) to none.
POLICIES = ("full", "save_attn_mlp_out", "dots_with_no_batch_dims_saveable",
            "dots_saveable", "everything_saveable", "none")
CPU_POLICIES = ("none", "full")
# The demo's cpu10m decoder (f32) at 2 rows of 512 tokens (twice the
# demo's row length): the einsum attention's (B, H, T, T) scores and the
# (B, T, V) logits dominate the step's memory, well above the 126 MiB of
# params and AdamW state.
FULL = dict(model="cpu10m", batch=2, seq=512, rounds=5, steps=3)
TINY = dict(model=None, batch=2, seq=64, rounds=1, steps=1)
TINY_MODEL = dict(vocab_size=256, d_model=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, mlp_dim=64, max_seq_len=64)
# Worker processes: glibc hands every freed block of >= 64 KiB back to the
# OS, so resident memory tracks live buffers (the Makefile's tuning keeps
# them mapped instead, which is what the timing process runs with).
WORKER_MALLOC = ("glibc.malloc.mmap_threshold=65536:"
                 "glibc.malloc.trim_threshold=65536")


def _tool() -> Any:
  spec = importlib.util.spec_from_file_location(
      "plan_memory_tool", os.path.join(_ROOT, "tools", "plan_memory.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@dataclasses.dataclass(frozen=True)
class Config:
  formulation: str  # "xla" (the planner's) or "cpu" (the CPU default)
  policy: str

  @property
  def name(self) -> str:
    return f"{self.formulation}_{self.policy}"


def configs(tiny: bool) -> list[Config]:
  """--tiny: `full` and `none` of the planner's formulation (every code
  path of the measurement and summary; the CPU rows differ in bindings)."""
  if tiny:
    return [Config("xla", "full"), Config("xla", "none")]
  return ([Config("xla", p) for p in POLICIES]
          + [Config("cpu", p) for p in CPU_POLICIES])


def model_config(c: Config, tiny: bool) -> Any:
  from lifejax.model.config import TransformerConfig  # pylint: disable=g-import-not-at-top
  tool = _tool()
  over = {"remat_policy": c.policy, "compute_dtype": "float32"}
  if c.formulation == "xla":
    over.update(tool.XLA_PATH)
  elif c.formulation != "cpu":
    raise ValueError(f"Config.formulation={c.formulation!r}: expected "
                     "'xla' or 'cpu'")
  if tiny:
    return TransformerConfig(**{**TINY_MODEL, **over})
  return tool.model_config(FULL["model"], **over)


def _batch(cfg: Any, batch_sds: dict[str, Any], seed: int) -> dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  b, t = batch_sds["tokens"].shape
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (b, t + 1), dtype=np.int32)
  return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": np.ones((b, t), np.float32),
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32),
                                       (b, t)).copy()}


class Runner:
  """One configuration compiled, its state and a batch on the device."""

  def __init__(self, c: Config, tiny: bool):
    import jax  # pylint: disable=g-import-not-at-top
    shape = TINY if tiny else FULL
    self.cfg = model_config(c, tiny)
    self.plan, self.compiled, sds = _tool().compile_train_step(
        self.cfg, (1, 1, 1), shape["batch"], shape["seq"])
    with jax.set_mesh(self.plan.mesh):
      self.state = self.plan.init_state(None)
    self.batch = jax.device_put(_batch(self.cfg, sds, 0),
                                self.plan.batch_shardings)
    self.sds = sds

  def step(self) -> tuple[float, float]:
    """One blocked step: (wall seconds, this process's CPU seconds, all
    threads)."""
    import jax  # pylint: disable=g-import-not-at-top
    t0, c0 = time.perf_counter(), time.process_time()
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0, time.process_time() - c0


def matmul_flops(cfg: Any, sds: dict[str, Any]) -> int:
  """Matmul FLOPs of loss + gradient (the step's jaxpr, recompute
  included)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lifejax.losses.lm import make_lm_loss_fn  # pylint: disable=g-import-not-at-top
  from lifejax.model import flops, transformer  # pylint: disable=g-import-not-at-top
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  loss_fn = make_lm_loss_fn(graphdef)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p, b: loss_fn(p, b, None)[0]))(
      nnx.to_pure_dict(abstract), sds)
  return flops.jaxpr_matmul_flops(jaxpr)


# -- the worker: resident memory of one configuration ------------------------


def _proc_kib(field: str) -> int:
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def _release() -> None:
  import ctypes  # pylint: disable=g-import-not-at-top
  gc.collect()
  ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker(name: str, tiny: bool) -> dict[str, float]:
  """Runs in a fresh process: RSS figures in bytes (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()
  from lifejax.train import trainer  # pylint: disable=g-import-not-at-top
  del trainer  # imported so that start-up memory is in the idle figure
  c = next(c for c in configs(tiny) if c.name == name)
  _release()
  idle = _proc_kib("VmRSS")
  r = Runner(c, tiny)
  r.step()
  _release()
  with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
    f.write("5")  # resets VmHWM to the current RSS
  ready = _proc_kib("VmRSS")
  for _ in range((TINY if tiny else FULL)["steps"]):
    r.step()
  peak = _proc_kib("VmHWM")
  return {"idle": idle * 1024.0, "ready": ready * 1024.0,
          "peak": peak * 1024.0}


def _run_worker(c: Config, tiny: bool, cache_dir: str) -> dict[str, float]:
  env = dict(os.environ)
  env["GLIBC_TUNABLES"] = WORKER_MALLOC
  # The executable this process compiled, loaded from the cache.
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={c.name}"]
  cmd += ["--tiny"] * tiny
  out = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True,
                       text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"worker {c.name} failed (exit {out.returncode}): "
                       f"{shlex.join(cmd)}\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


# -- the measurement -----------------------------------------------------------


def measure(tiny: bool, cache_dir: str, log=print) -> dict[str, Any]:
  """Every figure of every configuration (module docstring); JSON-able.
  Compiled steps go to the persistent cache `cache_dir`, which the memory
  workers load them from."""
  import jax  # pylint: disable=g-import-not-at-top
  saved = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir",
      "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  try:
    return _measure(tiny, cache_dir, log)
  finally:
    for k, v in saved.items():
      jax.config.update(k, v)


def _measure(tiny: bool, cache_dir: str, log) -> dict[str, Any]:
  from lifejax.train import memory_plan  # pylint: disable=g-import-not-at-top
  tool = _tool()
  shape = TINY if tiny else FULL
  cs = configs(tiny)
  rows: dict[str, dict[str, Any]] = {}
  runners = {}
  for c in cs:
    t0 = time.perf_counter()
    r = Runner(c, tiny)
    runners[c.name] = r
    row = {"formulation": c.formulation, "policy": c.policy,
           "compile_s": time.perf_counter() - t0,
           "xla": tool.compiled_memory(r.compiled),
           "matmul_flops": matmul_flops(r.cfg, r.sds)}
    if c.formulation == "xla":
      row["planner"] = memory_plan.plan(r.cfg, (1, 1, 1), shape["batch"],
                                        shape["seq"], backend="cpu").peak
    r.step()  # warm-up (first-call allocations)
    rows[c.name] = row
    log(f"[remat] {c.name}: compiled in {row['compile_s']:.1f} s, XLA "
        f"{row['xla']['total'] / MIB:.1f} MiB")
  times: dict[str, list[float]] = {c.name: [] for c in cs}
  cpu: dict[str, list[float]] = {c.name: [] for c in cs}
  for rnd in range(shape["rounds"]):
    order = cs[rnd % len(cs):] + cs[:rnd % len(cs)]
    for c in order:
      steps = [runners[c.name].step() for _ in range(shape["steps"])]
      times[c.name].append(statistics.median(w for w, _ in steps))
      cpu[c.name].append(statistics.median(u for _, u in steps))
    log(f"[remat] round {rnd + 1}/{shape['rounds']}: " + ", ".join(
        f"{n} {v[-1] * 1e3:.0f} ms ({cpu[n][-1] * 1e3:.0f} CPU)"
        for n, v in times.items()))
  del runners
  gc.collect()
  for c in cs:
    rows[c.name]["step_s"] = times[c.name]
    rows[c.name]["step_cpu_s"] = cpu[c.name]
    rows[c.name]["rss"] = _run_worker(c, tiny, cache_dir)
    log(f"[remat] {c.name}: peak above idle "
        f"{(rows[c.name]['rss']['peak'] - rows[c.name]['rss']['idle']) / MIB:.1f}"
        " MiB")
  return {"shape": shape, "model": (TINY_MODEL if tiny else shape["model"]),
          "rows": rows}


# -- the summary ---------------------------------------------------------------


def ratios(rows: dict[str, Any], name: str, ref: str = "xla_none",
           key: str = "step_s") -> list[float]:
  """Per-round step-time ratios of `name` to `ref` (same rounds); key
  "step_s" (wall) or "step_cpu_s" (CPU time)."""
  return [a / b for a, b in zip(rows[name][key], rows[ref][key])]


def order_check(rows: dict[str, Any], formulation: str = "xla",
                key: str = "step_s") -> dict[str, Any]:
  """The claim's ordering among one formulation's policies: sorted by
  measured memory (peak above idle), does the step time (`key`, median
  over rounds) fall as memory rises? Returns the policies in memory order,
  and the pairs (less memory, more memory) where the one using less memory
  is not slower."""
  names = [n for n, r in rows.items() if r["formulation"] == formulation]
  mem = {n: rows[n]["rss"]["peak"] - rows[n]["rss"]["idle"] for n in names}
  med = {n: statistics.median(rows[n][key]) for n in names}
  by_mem = sorted(names, key=mem.get)
  violations = [(a, b) for i, a in enumerate(by_mem) for b in by_mem[i + 1:]
                if med[a] < med[b]]
  return {"by_memory": by_mem, "violations": violations,
          "pairs": len(by_mem) * (len(by_mem) - 1) // 2}


def summarize(data: dict[str, Any], out_dir: str, tiny: bool,
              command: str) -> str:
  rows = data["rows"]
  none_flops = rows["xla_none"]["matmul_flops"]
  shape = data["shape"]
  table = []
  for name, r in rows.items():
    rat = ratios(rows, name)
    crat = ratios(rows, name, key="step_cpu_s")
    rss = r["rss"]
    table.append({
        "formulation": r["formulation"], "policy": r["policy"],
        "planner MiB": (f"{r['planner'] / MIB:.1f}" if "planner" in r
                        else "not modelled"),
        "XLA MiB": f"{r['xla']['total'] / MIB:.1f}",
        "planner / XLA": (f"{r['planner'] / r['xla']['total']:.3f}"
                          if "planner" in r else ""),
        "XLA temp MiB": f"{r['xla']['temp_size_in_bytes'] / MIB:.1f}",
        "measured above idle MiB": f"{(rss['peak'] - rss['idle']) / MIB:.1f}",
        "measured above ready MiB":
            f"{(rss['peak'] - rss['ready']) / MIB:.1f}",
        "step ms": f"{statistics.median(r['step_s']) * 1e3:.0f}",
        "time / xla none": (f"{statistics.median(rat):.2f} "
                            f"[{min(rat):.2f}, {max(rat):.2f}]"),
        "CPU ms": f"{statistics.median(r['step_cpu_s']) * 1e3:.0f}",
        "CPU / xla none": (f"{statistics.median(crat):.2f} "
                           f"[{min(crat):.2f}, {max(crat):.2f}]"),
        "matmul GFLOP": f"{r['matmul_flops'] / 1e9:.2f}",
        "recompute": f"{r['matmul_flops'] / none_flops - 1:+.1%}",
    })
  md = ["# Remat policies: memory against step time", ""]
  if tiny:
    md += ["**Tiny configuration (tests only): the numbers mean nothing.**",
           ""]
  model = data["model"]
  md += [
      f"Model {model if isinstance(model, str) else 'tiny'}, f32, "
      f"{shape['batch']} rows x {shape['seq']} tokens, one device; AdamW "
      "train step with the non-finite guard. Memory per device: planner "
      "(`memory_plan.plan`, backend cpu); XLA = argument + output - alias + "
      "temp of the compiled step; measured in a fresh process per row: peak "
      "RSS while running steps minus the RSS after start-up (above idle: "
      "state, batch, compiled program and the step's buffers) or minus the "
      "RSS just before the timed steps (above ready: what the step "
      "allocates; compare XLA temp). Step time: median over "
      f"{shape['rounds']} round-robin rounds of the median of "
      f"{shape['steps']} blocked steps, wall and this process's CPU time "
      "(all threads; less sensitive to other load on the host); ratio to "
      "the xla `none` row of the same round, median [min, max]. Matmul FLOPs of loss + gradient from "
      "the jaxpr (recomputed forward included); recompute = over xla "
      "`none`.", "",
      _table(table), ""]
  for form, key in itertools.product(
      sorted({r["formulation"] for r in rows.values()}),
      ("step_s", "step_cpu_s")):
    oc = order_check(rows, form, key)
    if oc["pairs"]:
      md.append(
          f"Order check ({form}, {'wall' if key == 'step_s' else 'CPU'} "
          "time): by measured memory "
          f"{' < '.join(n.split('_', 1)[1] for n in oc['by_memory'])}; "
          f"{len(oc['violations'])} of {oc['pairs']} pairs where the "
          "policy with less memory is not slower"
          + (": " + ", ".join(f"{a.split('_', 1)[1]} vs "
                              f"{b.split('_', 1)[1]}"
                              for a, b in oc["violations"])
             if oc["violations"] else "") + ".\n")
  _plot(rows, os.path.join(out_dir, PLOT))
  md += ["", f"![memory vs step time]({PLOT})", "",
         f"Command: `{command}`"]
  return "\n".join(md) + "\n"


def _table(rows: list[dict[str, Any]]) -> str:
  cols = list(rows[0])
  return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                   + ["| " + " | ".join(str(r[c]) for c in cols) + " |"
                      for r in rows])


def _plot(rows: dict[str, Any], path: str) -> None:
  """Memory (measured, XLA, planner) against step time: CPU time (left),
  wall time (right)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
  colors = {"xla": "tab:blue", "cpu": "tab:red"}
  for ax, key, what in ((axes[0], "step_cpu_s", "CPU time, all threads"),
                        (axes[1], "step_s", "wall time")):
    for r in rows.values():
      col = colors.get(r["formulation"], "k")
      t = statistics.median(r[key]) * 1e3
      measured = (r["rss"]["peak"] - r["rss"]["idle"]) / MIB
      ax.plot(t, measured, "o", color=col)
      ax.plot(t, r["xla"]["total"] / MIB, "x", color=col)
      if "planner" in r:
        ax.plot(t, r["planner"] / MIB, "+", color=col, ms=10)
      ax.annotate(f"{r['formulation']} {r['policy']}", (t, measured),
                  fontsize=7, xytext=(4, 3), textcoords="offset points")
    for label, m in (("measured (peak RSS above idle)", "o"),
                     ("XLA memory analysis", "x"), ("planner", "+")):
      ax.plot([], [], m, color="gray", label=label)
    for form, col in colors.items():
      ax.plot([], [], "s", color=col, label=f"{form} formulation")
    ax.set_xlabel(f"step {what} (ms, median over rounds)")
    ax.set_ylabel("memory per device (MiB)")
    ax.set_title(f"Remat policies: memory vs step {what}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> str:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--tiny", action="store_true",
                  help="a seconds-scale shape (tests only)")
  ap.add_argument("--out", default=None,
                  help="where results.md, results.json and the plot go "
                       "(default: this folder; --tiny: runs/remat_tiny)")
  ap.add_argument("--cache_dir", default=None,
                  help="persistent compilation cache (default: <out>/"
                       ".jit_cache for --tiny, runs/remat/.jit_cache)")
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker, args.tiny)))
    return ""
  out = args.out or (os.path.join("runs", "remat_tiny") if args.tiny
                     else os.path.dirname(os.path.abspath(__file__)))
  os.makedirs(out, exist_ok=True)
  cache = args.cache_dir or (os.path.join(out, ".jit_cache") if args.tiny
                             else os.path.join("runs", "remat", ".jit_cache"))
  data = measure(args.tiny, cache)
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  command = "python experiments/remat/remat.py " + shlex.join(
      list(argv if argv is not None else sys.argv[1:]))
  md = summarize(data, out, args.tiny, command.strip())
  with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
    f.write(md)
  print(md)
  return md


if __name__ == "__main__":
  sys.path.insert(0, _ROOT)  # this checkout's lifejax, not an installed one
  main()
