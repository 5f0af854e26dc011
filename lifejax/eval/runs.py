"""Reading a lifecycle root: its stages, their metrics and series.

Shared by the report, the stage audit card and the walkthrough notebook.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.run.lineage import Lineage, read_lineage
from lifejax.train.metrics import read_metrics

POLICY_KINDS = ("dpo", "ppo", "cdpo", "ipo", "simpo", "orpo", "kto",
                "online_dpo", "grpo")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a lifecycle root, as lifecycle.json lists it."""
  name: str
  kind: str
  run_dir: str
  status: str = "done"
  seconds: float = float("nan")
  # XLA compile time within `seconds` (nan: a ledger from before it was
  # recorded).
  compile_seconds: float = float("nan")
  # The evaluation after the run, within `seconds` (nan: not recorded).
  eval_seconds: float = float("nan")


def read_json(path: str, default: Any = None) -> Any:
  if not os.path.isfile(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def metrics_rows(run_dir: str) -> list[dict[str, Any]]:
  """A run's metrics.jsonl rows by step ([] if it has none yet)."""
  path = RunDir(run_dir).metrics
  return read_metrics(path) if os.path.isfile(path) else []


def lineage_of(run_dir: str) -> Lineage | None:
  """A run's lineage, None if the directory has no lineage.json (an
  unreadable or old-format one raises: see run.lineage.read_lineage)."""
  if not os.path.isfile(RunDir(run_dir).lineage):
    return None
  return read_lineage(run_dir)


def read_stages(root: str) -> list[Stage]:
  """The stages of `<root>/lifecycle.json`, latest entry per name, in order.

  A rerun appends "skipped"/"resumed" entries for stages already listed; the
  first position and the latest status win. Relative run_dirs resolve
  against the root.
  """
  path = LifecycleRoot(root).ledger
  ledger = read_json(path)
  if ledger is None:
    raise FileNotFoundError(f"no {os.path.basename(path)} in {root}")
  by_name: dict[str, Stage] = {}
  for e in ledger.get("stages", []):
    run_dir = e.get("run_dir") or LifecycleRoot(root).stage(e["name"]).root
    if not os.path.isabs(run_dir):
      run_dir = os.path.join(root, run_dir)
    prev = by_name.get(e["name"])
    seconds = float(e.get("seconds", float("nan")))
    compile_s = float(e.get("compile_seconds", float("nan")))
    eval_s = float(e.get("eval_seconds", float("nan")))
    if prev is not None and e.get("status") == "skipped":
      # the time the work really took
      seconds, compile_s, eval_s = (prev.seconds, prev.compile_seconds,
                                    prev.eval_seconds)
    by_name[e["name"]] = Stage(e["name"], e.get("kind", e["name"]), run_dir,
                               e.get("status", "done"), seconds, compile_s,
                               eval_s)
  return list(by_name.values())


def _strip(key: str) -> str:
  for prefix in ("eval/", "policy/"):
    if key.startswith(prefix):
      key = key[len(prefix):]
  return key


def stage_metrics(run_dir: str) -> dict[str, float]:
  """A run's final evaluation as one flat dict.

  The stage's eval.json (what the lifecycle measured after the stage) wins
  over the training loop's last eval (summary.json, "eval/" and "policy/"
  prefixes dropped), an RL run's last rollout metrics and a reward run's
  reward_eval.json.
  """
  out: dict[str, float] = {}
  run = RunDir(run_dir)
  summary = read_json(run.summary, {})
  for k, v in (summary.get("eval") or {}).items():
    if isinstance(v, (int, float)):
      out[_strip(k)] = float(v)
  for k, v in (summary.get("last_metrics") or {}).items():  # RL runs
    if isinstance(v, (int, float)):
      out.setdefault(k, float(v))
  rev = read_json(run.reward_eval)
  if rev:
    out.setdefault("pair_accuracy", float(rev["accuracy"]))
    out.setdefault("ece", float(rev["ece"]))
    for flaw, acc in rev.get("accuracy_by_flaw", {}).items():
      out.setdefault(f"pair_accuracy/{flaw}", float(acc))
  for k, v in (read_json(run.eval) or {}).items():
    if isinstance(v, (int, float)):
      out[_strip(k)] = float(v)
  return out


def final_step(run_dir: str) -> int | None:
  s = read_json(RunDir(run_dir).summary, {})
  step = s.get("final_step", s.get("final_iteration"))
  return int(step) if step is not None else None


def eval_rows(run_dir: str) -> list[dict[str, Any]]:
  return [r for r in metrics_rows(run_dir)
          if any(k.startswith("eval/") for k in r)]


def forgetting_series(run_dir: str) -> dict[str, list]:
  """Steps, mean general perplexity and the task metric of each eval row.

  The task metric is `eval/instruct/accuracy`, else minus the mean SFT
  validation loss (`task_name` says which).
  """
  out: dict[str, list] = {"step": [], "general_ppl": [], "task": [],
                          "task_name": []}
  for row in eval_rows(run_dir):
    general = [v for k, v in row.items()
               if k.startswith("eval/general_") and k.endswith("/perplexity")]
    if "eval/instruct/accuracy" in row:
      task, name = row["eval/instruct/accuracy"], "instruction accuracy"
    else:
      losses = [v for k, v in row.items()
                if k.startswith("eval/sft_") and k.endswith("/loss")]
      task, name = (-float(np.mean(losses)), "- SFT validation loss"
                    ) if losses else (None, "")
    if general and task is not None:
      out["step"].append(int(row["step"]))
      out["general_ppl"].append(float(np.mean(general)))
      out["task"].append(float(task))
      out["task_name"].append(name)
  return out


def reward_kl_series(run_dir: str) -> dict[str, list[float]]:
  """KL and reward per logged row of a policy run: PPO's rollout rows
  ("kl", "reward", "true_judge"), or a DPO run's policy evals."""
  out: dict[str, list[float]] = {"kl": [], "reward": [], "judge": []}
  for r in metrics_rows(run_dir):
    kl = r.get("kl", r.get("eval/policy/kl_to_ref"))
    reward = r.get("reward", r.get("eval/policy/reward"))
    judge = r.get("true_judge", r.get("eval/policy/judge_score"))
    if kl is None or (reward is None and judge is None):
      continue
    out["kl"].append(float(kl))
    out["reward"].append(float("nan") if reward is None else float(reward))
    out["judge"].append(float("nan") if judge is None else float(judge))
  return out


def model_config(run_dir: str) -> Any:
  """The TransformerConfig a run recorded in its lineage (None if the run
  has no lineage or it records no model)."""
  lineage = lineage_of(run_dir)
  return lineage.model if lineage is not None else None


def footprint(run_dir: str, metrics: Mapping[str, float]
              ) -> tuple[float | None, float | None]:
  """(parameters, parameter bytes) of a run's model: the stage's measured
  numbers if its eval has them, else counted from its model config."""
  n = metrics.get("num_params")
  nbytes = metrics.get("param_bytes")
  cfg = model_config(run_dir)
  if cfg is not None and (n is None or nbytes is None):
    n = float(cfg.num_params()) if n is None else n
    if nbytes is None:
      nbytes = n * np.dtype(cfg.param_dtype).itemsize
  return n, nbytes
