"""Experiment sweeps: arms x seeds of gin-configured runs, resumable.

An experiment is a folder `experiments/<name>/` with gin files, a `run.sh`
and an `experiment.py` that defines

  SWEEP = sweep.Sweep(...)          # the arms, seeds and base gin files
  def summarize(results, out_dir, tiny) -> str   # writes results.md + PNG

`python -m lifejax.sweep experiments/<name> [--tiny] [--seeds=0,1,2]
[--root=runs/<name>] [--out=experiments/<name>]` runs every arm x seed into
`<root>/<arm>/seed<k>/` (a cell that finished is skipped, so a killed sweep
resumes where it stopped), then calls `summarize`, which writes the results
table and plot into `--out` and returns the markdown. `--tiny` adds the
experiment's `tiny.gin` (a minutes-scale configuration that keeps every
arm's code path), runs the first seed only, and is what the test suite runs.

Each cell records `sweep.json`: the arm, seed, gin files and bindings, the
wall time and (for subprocess cells) the peak resident memory. Cells run in
a fresh `python -m lifejax.main` process by default, so memory figures and
jit caches do not leak between arms; `--in_process` runs them in this
process (the test suite does, to skip the import cost).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lifejax import checks

CELL_RECORD = "sweep.json"
TINY_GIN = "tiny.gin"
SPEC = "experiment.py"
# The Makefile's glibc malloc tunables (CPU only): keep XLA's per-step
# temporaries mapped (experiments/bench_train_step/README.md).
MALLOC_TUNING = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:"
                 "glibc.malloc.mmap_max=0:"
                 "glibc.malloc.trim_threshold=68719476736")


@dataclasses.dataclass(frozen=True)
class Arm:
  """One configuration: gin files and bindings added to the sweep's base."""
  name: str
  gin_files: tuple[str, ...] = ()
  gin_params: tuple[str, ...] = ()
  # free-form values summarize() may use (e.g. {"lr": 3e-3, "warmup": 0})
  labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.name or "/" in self.name or self.name.startswith("."):
      raise ValueError(f"Arm name {self.name!r}: must be a non-empty "
                       "directory name")


def grid(prefix: str, axes: Mapping[str, Sequence[Any]],
         gin_files: Sequence[str] = (),
         names: Mapping[str, str] | None = None) -> list[Arm]:
  """The cartesian product of gin bindings, one Arm per combination.

  axes: {gin binding: values}, e.g. {"pretrain/OptimizerConfig.warmup_steps":
  [0, 50]}. names: {binding: short name} for arm names and labels
  (default: the binding's last dotted part).
  """
  keys = list(axes)
  short = {k: (names or {}).get(k, k.rsplit(".", 1)[-1]) for k in keys}
  arms = []
  for values in itertools.product(*(axes[k] for k in keys)):
    parts = [f"{short[k]}{_fmt(v)}" for k, v in zip(keys, values)]
    arms.append(Arm(name="_".join([prefix] * bool(prefix) + parts),
                    gin_files=tuple(gin_files),
                    gin_params=tuple(f"{k}={_gin_value(v)}"
                                     for k, v in zip(keys, values)),
                    labels={short[k]: v for k, v in zip(keys, values)}))
  return arms


def _fmt(v: Any) -> str:
  return (f"{v:g}" if isinstance(v, float) else str(v)).replace("/", "-")


def _gin_value(v: Any) -> str:
  return repr(v) if isinstance(v, str) and not v.startswith("@") else str(v)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Arms x seeds over base gin files.

  root_param: the binding that receives each cell's run directory.
  seed_params: bindings that receive the seed (world, init and data seeds).
  """
  arms: Sequence[Arm]
  base_gin: Sequence[str] = ()
  seeds: Sequence[int] = (0,)
  root_param: str = "lifecycle.root"
  seed_params: Sequence[str] = ("lifecycle.world_seed",)
  # Subprocess cells share a persistent compilation cache under the root
  # (<root>/.jit_cache): seeds and arms that build the same program compile
  # it once. Turn off where compile time is part of what is measured.
  compile_cache: bool = True
  # Arms --tiny runs (None: all): where a sweep's point is its many cells
  # (a scaling-law grid), a few of them exercise every code path.
  tiny_arms: Sequence[str] | None = None

  def __post_init__(self):
    names = [a.name for a in self.arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup or not names:
      raise ValueError(f"Sweep arms: need unique names, got duplicates {dup}"
                       if dup else "Sweep: no arms")
    unknown = sorted(set(self.tiny_arms or ()) - set(names))
    if unknown or self.tiny_arms is not None and not self.tiny_arms:
      raise ValueError(f"Sweep.tiny_arms: {unknown or 'empty'} (arms: "
                       f"{names})")


@dataclasses.dataclass
class Cell:
  """One finished arm x seed run."""
  arm: Arm
  seed: int
  run_dir: str
  record: dict[str, Any]

  def json(self, *parts: str) -> Any:
    """A JSON file under the cell's run directory (None if absent)."""
    p = os.path.join(self.run_dir, *parts)
    if not os.path.exists(p):
      return None
    with open(p, encoding="utf-8") as f:
      return json.load(f)

  def jsonl(self, *parts: str) -> list[dict[str, Any]]:
    p = os.path.join(self.run_dir, *parts)
    if not os.path.exists(p):
      return []
    with open(p, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]


def iteration_rows(cell: Cell, metrics: str, keys: Sequence[str]
                   ) -> list[dict[str, Any]]:
  """The rows of the cell's JSON-lines file `metrics` (under its run
  directory, e.g. "ppo/metrics.jsonl") that hold every key in `keys`, sorted
  by "iteration"; ValueError naming the file and keys if there are none."""
  rows = [r for r in cell.jsonl(metrics) if all(k in r for k in keys)]
  if not rows:
    raise ValueError(f"{os.path.join(cell.run_dir, metrics)}: no iteration "
                     f"rows with {', '.join(keys)}")
  return sorted(rows, key=lambda r: r["iteration"])


def first_last(rows: Sequence[Mapping[str, float]], keys: Sequence[str],
               window: int) -> dict[str, float]:
  """For each key k: "first/k" and "last/k", the means of k over the first
  and the last `window` rows (all rows if there are fewer)."""
  checks.at_least("first_last.window", window, 1)
  w = min(window, len(rows))
  out = {}
  for k in keys:
    out[f"first/{k}"] = float(np.mean([r[k] for r in rows[:w]]))
    out[f"last/{k}"] = float(np.mean([r[k] for r in rows[-w:]]))
  return out


def cell_dir(root: str, arm: Arm, seed: int) -> str:
  return os.path.join(root, arm.name, f"seed{seed}")


def run(sweep: Sweep, root: str, *, spec_dir: str = "", tiny: bool = False,
        seeds: Sequence[int] | None = None, in_process: bool = False,
        only: Sequence[str] = (), extra_params: Sequence[str] = (),
        log: Callable[[str], None] = print) -> list[Cell]:
  """Runs (or finds finished) every arm x seed cell; returns them in order.

  extra_params: gin bindings added to every cell (after the arm's)."""
  seeds = list(seeds if seeds is not None else sweep.seeds)
  if tiny:
    seeds = seeds[:1]
  tiny_files = []
  if tiny:
    tiny_path = os.path.join(spec_dir, TINY_GIN)
    if not os.path.exists(tiny_path):
      raise FileNotFoundError(f"--tiny: {tiny_path} does not exist")
    tiny_files = [tiny_path]
  unknown = sorted(set(only) - {a.name for a in sweep.arms})
  if unknown:
    raise ValueError(f"--only: no arm named {unknown} (arms: "
                     f"{[a.name for a in sweep.arms]})")
  arms = [a for a in sweep.arms if (not only or a.name in only) and not (
      tiny and sweep.tiny_arms is not None and a.name not in sweep.tiny_arms)]
  cells = []
  for seed, arm in itertools.product(seeds, arms):
    d = cell_dir(root, arm, seed)
    rec_path = os.path.join(d, CELL_RECORD)
    if os.path.exists(rec_path):
      with open(rec_path, encoding="utf-8") as f:
        rec = json.load(f)
      log(f"[sweep] {arm.name} seed {seed}: done, skipped")
      cells.append(Cell(arm, seed, d, rec))
      continue
    files = [_resolve(f, spec_dir) for f in
             list(sweep.base_gin) + list(arm.gin_files)] + tiny_files
    params = (list(arm.gin_params) + list(extra_params)
              + [f"{p}={seed}" for p in sweep.seed_params]
              + [f"{sweep.root_param}={d!r}"])
    os.makedirs(d, exist_ok=True)
    log(f"[sweep] {arm.name} seed {seed}: running")
    t0 = time.perf_counter()
    peak = None
    if in_process:
      _run_in_process(files, params)
    else:
      peak = _run_subprocess(
          files, params, d,
          os.path.join(root, ".jit_cache") if sweep.compile_cache else None)
    rec = {"arm": arm.name, "seed": seed, "labels": dict(arm.labels),
           "gin_files": files, "gin_params": params, "tiny": tiny,
           "wall_s": time.perf_counter() - t0, "peak_rss_mib": peak,
           "in_process": in_process}
    with open(rec_path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(rec, f, indent=1, default=str)
    os.replace(rec_path + ".tmp", rec_path)
    cells.append(Cell(arm, seed, d, rec))
  return cells


def _resolve(path: str, spec_dir: str) -> str:
  """A gin file relative to the experiment folder, else as given (lifejax's
  gin_configs/ and the working directory are searched by lifejax.main)."""
  local = os.path.join(spec_dir, path)
  return local if spec_dir and os.path.exists(local) else path


def _run_in_process(files: Sequence[str], params: Sequence[str]) -> None:
  import gin  # pylint: disable=g-import-not-at-top
  from lifejax import config_types, main  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    main.parse_gin(files, params)
    config_types.check_bindings()
    main.run()
  finally:
    gin.clear_config()


def _run_subprocess(files: Sequence[str], params: Sequence[str],
                    d: str, cache: str | None) -> float:
  cmd = [sys.executable, "-m", "lifejax.main"]
  cmd += [f"--gin_file={f}" for f in files]
  cmd += [f"--gin_param={p}" for p in params]
  env = dict(os.environ)
  if env.get("JAX_PLATFORMS", "cpu") == "cpu":
    env.setdefault("GLIBC_TUNABLES", MALLOC_TUNING)
  if cache:
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(cache))
  with open(os.path.join(d, "console.txt"), "w", encoding="utf-8") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                            env=env)
    _, status, usage = os.wait4(proc.pid, 0)
  code = os.waitstatus_to_exitcode(status)
  if code:
    with open(os.path.join(d, "console.txt"), encoding="utf-8") as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"sweep cell {d} failed (exit {code}): "
                       f"{shlex.join(cmd)}\n{tail}")
  return usage.ru_maxrss / 1024  # KiB on Linux


# -- a base shared by cells -------------------------------------------------


def default_base_root(cell_root: str) -> str:
  """<sweep root>/base for a cell at <sweep root>/<arm>/seed<k>."""
  return os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(cell_root))), "base")


def ensure_lifecycle(base_root: str, until: str) -> Any:
  """The lifecycle root `base_root` (a LifecycleRoot), run with the gin
  config in force through stage `until` unless that stage finished
  already: the pretrained (or tuned) base every cell of an experiment
  starts from. A file lock keeps two cells from building it at once; a
  later `until` resumes a root an earlier one left (finished stages are
  skipped)."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from lifejax.run.layout import LifecycleRoot  # pylint: disable=g-import-not-at-top
  from lifejax.stages.lifecycle import lifecycle  # pylint: disable=g-import-not-at-top
  lr = LifecycleRoot(base_root)
  if os.path.exists(lr.stage(until).eval):
    return lr
  os.makedirs(lr.root, exist_ok=True)
  with open(os.path.join(lr.root, ".build.lock"), "w",
            encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(lr.stage(until).eval):
      lifecycle(root=lr.root, until=until)
  return lr


# -- a final policy against SFT on the world's test split -------------------


def policy_vs_sft(lr: Any, policy_run: str, model: Any, mesh: Any,
                generation_spec: Any, answers_path: str, *,
                test_records: int = 0, rm_seq_len: int = 256,
                judge_config: Any = None, kl_batch: int = 8
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """The LM of `policy_run` (an RL run's exported policy, else its latest
  checkpoint) against the SFT model of the lifecycle root `lr` on the
  world's test prompts (the first `test_records`; 0: all), read once.

  Both answer greedily with `generation_spec` (policy_eval.PolicyEvaluator);
  each answer is scored by the programmatic judge (`judge_config`, None: the
  default) and by `lr`'s reward model (normalized; rows of `rm_seq_len`
  tokens = the reward stage's seq_len). The per-prompt rows
  (policy_eval.paired_rows) are written to `answers_path` (JSON lines) and
  returned with their summary (policy_eval.paired_summary) plus kl_to_sft
  (the exact KL along the policy's answers, `kl_batch` prompts at a time)
  and refusal_rate. model: the TransformerConfig; mesh: a MeshConfig.
  """
  # pylint: disable=g-import-not-at-top
  from lifejax import sharding
  from lifejax.data.jsonl import read_jsonl, write_jsonl
  from lifejax.eval import lifecycle_evals, policy_eval
  from lifejax.model import transformer
  from lifejax.rl import rollout as rollout_lib
  from lifejax.run import artifacts
  from lifejax.world import judge as judge_lib
  # pylint: enable=g-import-not-at-top
  tests = read_jsonl(lr.world_instructions("test"))
  if not tests:
    raise ValueError(f"{lr.world_instructions('test')}: no test prompts")
  tests = tests[:test_records] if test_records else tests
  sft_run, reward_run = lr.stage("sft").root, lr.stage("reward").root
  jmesh = sharding.make_mesh(mesh)
  graphdef, ref = artifacts.load_params(
      sft_run, transformer.Transformer, model, jmesh, mesh.rules)
  _, params = lifecycle_evals.lm_params(policy_run, model, jmesh, mesh.rules)
  tokenizer = artifacts.load_tokenizer(sft_run)
  template = artifacts.load_template(sft_run)
  ev = policy_eval.PolicyEvaluator(
      graphdef, sharding.fetch(ref), tokenizer, template, tests,
      generation_spec, kl_batch=kl_batch)
  metrics = ev(sharding.fetch(params))
  scorer = rollout_lib.load_reward_scorer(reward_run, jmesh, mesh.rules)
  rows = policy_eval.paired_rows(
      tests, ev.last_answers, ev.ref_answers,
      judge_config=judge_config or judge_lib.DEFAULT,
      reward_fn=policy_eval.reward_model_fn(scorer, template, tokenizer,
                                            tests, rm_seq_len))
  write_jsonl(answers_path, rows)
  return rows, {**policy_eval.paired_summary(rows),
                "kl_to_sft": metrics["kl_to_ref"],
                "refusal_rate": metrics["refusal_rate"]}


# -- statistics for summaries ------------------------------------------------


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (sd 0 for a single value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_sd(values: Sequence[float], digits: int = 3) -> str:
  m, s = mean_sd(values)
  return f"{m:.{digits}f}" if len(values) < 2 else \
      f"{m:.{digits}f} ± {s:.{digits}f}"


def paired_t(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """Paired t-test of a - b over matched seeds: mean difference, its 95% CI
  and the two-sided p-value (NaN with fewer than 2 pairs or zero spread)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n = d.size
  out = {"n": float(n), "mean_diff": float(d.mean()) if n else math.nan,
         "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan}
  if n < 2:
    return out
  sd = d.std(ddof=1)
  if sd == 0:
    return out
  se = sd / math.sqrt(n)
  half = stats.t.ppf(0.975, n - 1) * se
  out.update(ci_lo=float(d.mean() - half), ci_hi=float(d.mean() + half),
             p=float(2 * stats.t.sf(abs(d.mean()) / se, n - 1)))
  return out


def fmt_paired_t(t: Mapping[str, float], digits: int = 3) -> str:
  """A paired_t result as "+m [+lo, +hi], p=P": the signed mean difference
  and its 95% CI with `digits` decimals, p to 2 significant digits; where
  there is no test (p NaN: fewer than 2 pairs or zero spread)
  "+m (n=N, no test)"."""
  if math.isnan(t["p"]):
    return f"{t['mean_diff']:+.{digits}f} (n={int(t['n'])}, no test)"
  return (f"{t['mean_diff']:+.{digits}f} [{t['ci_lo']:+.{digits}f}, "
          f"{t['ci_hi']:+.{digits}f}], p={t['p']:.2g}")


def fmt_paired_stats(st: Mapping[str, float], compact: bool = False
                     ) -> dict[str, Any]:
  """Table cells of a policy_eval.paired_stats result: wins / losses / ties,
  the mean difference (4 signed decimals) with its 95% bootstrap CI over
  prompts, the sign-test p (3 significant digits).

  compact=False: columns "wins", "losses", "ties" (ints), "mean diff",
  "95% bootstrap CI", "sign-test p". compact=True: "W/T/L" in one cell,
  "win rate (ties ½)" (3 decimals), "mean diff [95% bootstrap CI]" in one
  cell, "sign-test p".
  """
  w, t, l = (int(st[k]) for k in ("wins", "ties", "losses"))
  mean = f"{st['judge_gain_vs_ref']:+.4f}"
  ci = f"[{st['judge_gain_ci_lo']:+.4f}, {st['judge_gain_ci_hi']:+.4f}]"
  p = f"{st['sign_test_p']:.3g}"
  if compact:
    return {"W/T/L": f"{w}/{t}/{l}",
            "win rate (ties ½)": f"{st['win_rate_vs_ref']:.3f}",
            "mean diff [95% bootstrap CI]": f"{mean} {ci}",
            "sign-test p": p}
  return {"wins": w, "losses": l, "ties": t, "mean diff": mean,
          "95% bootstrap CI": ci, "sign-test p": p}


def write_table(rows: Sequence[Mapping[str, Any]],
                columns: Sequence[str]) -> str:
  """A markdown table of `rows` (dicts) in `columns` order."""
  def cell(v: Any) -> str:
    if isinstance(v, float):
      return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |"
            for r in rows]
  return "\n".join(lines) + "\n"


# -- the CLI -------------------------------------------------------------------


def load_spec(exp_dir: str) -> Any:
  """Imports `<exp_dir>/experiment.py` (SWEEP and summarize)."""
  path = os.path.join(exp_dir, SPEC)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: an experiment folder needs {SPEC} "
                            "(SWEEP and summarize)")
  name = "lifejax_experiment_" + os.path.basename(os.path.abspath(exp_dir))
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  for attr in ("SWEEP", "summarize"):
    if not hasattr(mod, attr):
      raise AttributeError(f"{path} defines no {attr}")
  return mod


def main(argv: Sequence[str] | None = None) -> str:
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(prog="python -m lifejax.sweep",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("experiment", help="experiments/<name> folder")
  ap.add_argument("--tiny", action="store_true",
                  help="add the experiment's tiny.gin; first seed only")
  ap.add_argument("--seeds", default=None,
                  help="comma-separated seeds (default: the sweep's)")
  ap.add_argument("--root", default=None,
                  help="run root (default runs/<name>, runs/<name>_tiny)")
  ap.add_argument("--out", default=None,
                  help="where results.md and plots go (default: the "
                       "experiment folder; --tiny: the run root)")
  ap.add_argument("--only", default="", help="comma-separated arm names")
  ap.add_argument("--gin_param", action="append", default=[],
                  help="a gin binding for every cell (repeatable)")
  ap.add_argument("--in_process", action="store_true",
                  help="run cells in this process (no peak-memory figure)")
  args = ap.parse_args(argv)
  exp_dir = args.experiment.rstrip("/")
  mod = load_spec(exp_dir)
  name = os.path.basename(os.path.abspath(exp_dir))
  root = args.root or os.path.join("runs", name + "_tiny" * args.tiny)
  out = args.out or (root if args.tiny else exp_dir)
  seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds else None)
  cells = run(mod.SWEEP, root, spec_dir=exp_dir, tiny=args.tiny, seeds=seeds,
              in_process=args.in_process,
              only=[s for s in args.only.split(",") if s],
              extra_params=args.gin_param)
  os.makedirs(out, exist_ok=True)
  md = mod.summarize(cells, out, args.tiny)
  command = "python -m lifejax.sweep " + shlex.join(
      list(argv if argv is not None else sys.argv[1:]))
  md = md.rstrip() + f"\n\nCommand: `{command}`\n"
  with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
    f.write(md)
  print(md)
  return md


if __name__ == "__main__":
  main()
