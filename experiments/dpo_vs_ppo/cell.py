"""One cell of the DPO-vs-PPO experiment: the demo's DPO or PPO stage from
the demo's SFT model on one shared prompt set, then the final policy
judged against the SFT model on the test prompts.

`dpo_vs_ppo_cell` (the gin entry, `run.stage = @dpo_vs_ppo_cell`):
  1. makes sure the demo's lifecycle root exists through its reward model
     (`lifecycle.until='reward'`: pretraining, SFT and the reward model,
     built once under a file lock and shared with the other experiments on
     runs/demo_base);
  2. writes the shared training set: the first `train_pairs` preference
     pairs of the world's train split (<root>/pairs.jsonl). DPO trains on
     the pairs; PPO rolls out on the same records' prompts (their chosen /
     rejected answers unused: its reward is the demo's reward model,
     trained on the whole preference train split);
  3. runs the arm's stage with the demo's configuration (gin scope `dpo`
     or `ppo` of lifecycle/default.gin), the budget matched in experiment.gin
     and checked here: the same number of optimizer steps of the same
     minibatch size, one pass over the same `train_pairs` prompts;
  4. evaluates the final policy as the lifecycle does (PolicyEvaluator:
     greedy answers to the first `test_records` test prompts, the world's
     judge against the SFT model's greedy answers, exact KL to SFT on the
     policy's answers, the reward model's score) and writes every number,
     the per-prompt judge scores, the stage's wall time, the model copies
     the arm holds and their parameter bytes to <root>/result.json.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Mapping
from typing import Any

import gin
import jax
import numpy as np

from lifejax import checks, sharding, sweep
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import instruct, policy_eval
from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.rl import rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.stages.dpo import dpo
from lifejax.stages.rl import ppo

ARMS = ("dpo", "ppo")
RESULT = "result.json"
PAIRS = "pairs.jsonl"
STAGE_DIR = "stage"
ANSWERS = "test_answers.jsonl"

default_base_root = sweep.default_base_root


def _q(name: str) -> Any:
  return gin.query_parameter(name)


def budget() -> dict[str, int]:
  """Optimizer steps, minibatch size and prompts consumed of each arm, as
  gin configures them (the demo's scopes, experiment.gin's budget)."""
  dpo_steps = int(_q("dpo/LoopConfig.num_steps"))
  dpo_batch = int(_q("dpo.batch_size"))
  iters = int(_q("RLLoopConfig.num_iterations"))
  per_iter = int(_q("RLLoopConfig.prompts_per_iteration"))
  epochs = int(_q("RLLoopConfig.epochs"))
  mb = int(_q("RLLoopConfig.minibatch_size"))
  return {"dpo_steps": dpo_steps, "dpo_batch": dpo_batch,
          "dpo_pairs_seen": dpo_steps * dpo_batch,
          "ppo_iterations": iters, "ppo_prompts_per_iteration": per_iter,
          "ppo_epochs": epochs, "ppo_minibatch": mb,
          "ppo_steps": iters * epochs * (per_iter // mb),
          "ppo_prompts_seen": iters * per_iter}


def check_budget(b: Mapping[str, int], train_pairs: int) -> None:
  """Both arms: the same optimizer steps of the same minibatch size, one
  pass over the same `train_pairs` prompts; anything else is an error."""
  problems = []
  if b["ppo_prompts_per_iteration"] % b["ppo_minibatch"]:
    problems.append("RLLoopConfig.prompts_per_iteration is not a multiple "
                    "of RLLoopConfig.minibatch_size")
  if b["dpo_batch"] != b["ppo_minibatch"]:
    problems.append(f"dpo.batch_size={b['dpo_batch']} != RLLoopConfig."
                    f"minibatch_size={b['ppo_minibatch']}")
  if b["dpo_steps"] != b["ppo_steps"]:
    problems.append(f"DPO takes {b['dpo_steps']} optimizer steps, PPO "
                    f"{b['ppo_steps']}")
  for arm in ("dpo_pairs_seen", "ppo_prompts_seen"):
    if b[arm] != train_pairs:
      problems.append(f"{arm}={b[arm]} != dpo_vs_ppo_cell.train_pairs="
                      f"{train_pairs} (one pass over the shared prompts)")
  if problems:
    raise ValueError("dpo_vs_ppo budget mismatch: " + "; ".join(problems))


def param_bytes(cfg: TransformerConfig, scalar_head: bool = False) -> int:
  """Bytes of an LM's parameters, or (scalar_head) of a reward / value
  model's: the LM's backbone without its output head (heads.ScalarModel
  ties it away) plus a (D, 1) kernel and a bias."""
  itemsize = np.dtype(to_dtype(cfg.param_dtype)).itemsize
  if not scalar_head:
    return cfg.num_params() * itemsize
  backbone = heads._backbone_config(cfg).num_params()  # pylint: disable=protected-access
  return (backbone + cfg.d_model + 1) * itemsize


def model_copies(arm: str, lm: int, rm: int) -> list[dict[str, Any]]:
  """The models an arm holds while it trains, with their parameter bytes.

  DPO: the trained policy and the frozen reference (the SFT model, whose
  log-probs the stage precomputes once). PPO (the demo's separate critic
  initialized from the reward model): policy, reference, reward model and
  critic (a backbone + value head of the reward model's shape). lm, rm:
  the bytes of an LM copy and of a reward / value model."""
  copies = [{"name": "policy", "trained": True, "bytes": lm},
            {"name": "reference (SFT)", "trained": False, "bytes": lm}]
  if arm == "ppo":
    copies += [{"name": "reward model", "trained": False, "bytes": rm},
               {"name": "critic", "trained": True, "bytes": rm}]
  return copies


def _timings(run_dir: str, tokens_per_step: int) -> dict[str, Any]:
  """Seconds per optimizer step from the stage's logged tokens_per_sec
  (each logged row covers the steps since the previous one; the first row
  includes compilation)."""
  rows = [r for r in read_jsonl(RunDir(run_dir).metrics)
          if isinstance(r.get("tokens_per_sec"), (int, float))
          and r["tokens_per_sec"] > 0]
  sec = [tokens_per_step / r["tokens_per_sec"] for r in rows]
  return {"step_s_rows": sec,
          "step_s_steady": float(np.median(sec[1:])) if len(sec) > 1
          else (sec[0] if sec else float("nan"))}


def _rollout_stats(run_dir: str, prompts_per_iteration: int
                   ) -> dict[str, Any]:
  rows = [r for r in read_jsonl(RunDir(run_dir).metrics)
          if "response_length" in r]
  lengths = [r["response_length"] for r in rows]
  return {"rollout_iterations": len(rows),
          "rollout_tokens": float(sum(lengths) * prompts_per_iteration),
          "train_reward": [r.get("reward") for r in rows],
          "train_true_judge": [r.get("true_judge") for r in rows],
          "train_kl": [r.get("kl") for r in rows]}


@gin.configurable
def dpo_vs_ppo_cell(
    root: str = gin.REQUIRED,
    arm: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    train_pairs: int = 128,
    test_records: int = 96,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
    eval_seq_len: int = 384,
) -> dict[str, Any]:
  """Runs arm `arm` ('dpo' | 'ppo') from the demo's SFT model into
  <root>/stage and judges its final policy on the test prompts; returns
  (and writes) <root>/result.json.

  base_root: the lifecycle root holding SFT and the reward model (None:
  <sweep root>/base). train_pairs: the first N preference train pairs (the
  shared prompt set). test_records: the first N test prompts (0: all).
  seed: the stage's seed (data order; PPO's sampling too).
  eval_seq_len: the reward model's row length when it scores the test
  answers (the lifecycle's eval_seq_len).
  """
  checks.choice("dpo_vs_ppo_cell.arm", arm, ARMS)
  checks.at_least("dpo_vs_ppo_cell.train_pairs", train_pairs, 1)
  checks.at_least("dpo_vs_ppo_cell.test_records", test_records, 0)
  b = budget()
  check_budget(b, train_pairs)
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or default_base_root(root), "reward")
  sft_run, reward_run = lr.stage("sft").root, lr.stage("reward").root
  pairs = read_jsonl(lr.world_preferences("train"))
  if len(pairs) < train_pairs:
    raise ValueError(f"dpo_vs_ppo_cell.train_pairs={train_pairs}: the "
                     f"world has only {len(pairs)} preference train pairs")
  pairs_file = write_jsonl(os.path.join(root, PAIRS), pairs[:train_pairs])
  run_dir = os.path.join(root, STAGE_DIR)

  # A stage that finished before this call (a resumed cell) is skipped by
  # the stage runner: its stage_s then measures nothing.
  resumed = os.path.exists(RunDir(run_dir).summary)
  t0 = time.perf_counter()
  if arm == "dpo":
    with gin.config_scope("dpo"):
      summary = dpo(run_dir=run_dir, model=model, mesh=mesh,
                    init_from=sft_run, train_files=[pairs_file],
                    eval_file=lr.world_preferences("validation"),
                    prompt_file=None, seed=seed)
    tokens_per_step = 2 * b["dpo_batch"] * int(_q("dpo.seq_len"))
  else:
    with gin.config_scope("ppo"):
      summary = ppo(run_dir=run_dir, model=model, mesh=mesh, sft_run=sft_run,
                    reward_run=reward_run, prompt_files=[pairs_file],
                    seed=seed)
    tokens_per_step = b["ppo_minibatch"] * (
        int(_q("RolloutConfig.prompt_len"))
        + int(_q("RolloutConfig.max_new_tokens")) - 1)
  stage_s = time.perf_counter() - t0
  # The process's peak resident memory so far: startup + the stage, before
  # the test evaluation (the same models in both arms) loads anything.
  stage_peak_rss_mib = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024

  # The final policy against SFT on the test prompts (the lifecycle's
  # PolicyEval: greedy answers, the default judge, exact KL to SFT, the
  # reward model's normalized score).
  t1 = time.perf_counter()
  jmesh = sharding.make_mesh(mesh)
  graphdef, ref = artifacts.load_params(sft_run, transformer.Transformer,
                                        model, jmesh, mesh.rules)
  _, params = artifacts.load_params(RunDir(run_dir).lm_run().root,
                                    transformer.Transformer, model, jmesh,
                                    mesh.rules)
  tokenizer = artifacts.load_tokenizer(sft_run)
  template = artifacts.load_template(sft_run)
  tests = read_jsonl(lr.world_instructions("test"))
  tests = tests[:test_records] if test_records else tests
  scorer = rollout_lib.load_reward_scorer(reward_run, jmesh, mesh.rules)
  reward_fn = policy_eval.reward_model_fn(scorer, template, tokenizer, tests,
                                          eval_seq_len)
  ev = policy_eval.PolicyEvaluator(graphdef, sharding.fetch(ref), tokenizer,
                                   template, tests, generation_spec,
                                   reward_fn=reward_fn)
  host = sharding.fetch(params)
  lm_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(host)))
  if lm_bytes != param_bytes(model):
    raise AssertionError(f"policy params hold {lm_bytes} bytes, the config "
                         f"counts {param_bytes(model)}")
  metrics = ev(host)
  per_prompt = policy_eval.paired_rows(tests, ev.last_answers,
                                       ev.ref_answers)
  write_jsonl(os.path.join(root, ANSWERS), per_prompt)
  eval_s = time.perf_counter() - t1

  reward_cfg = artifacts.load_model_config(reward_run)
  result: dict[str, Any] = {
      "arm": arm, "seed": seed, "base": os.path.relpath(lr.root),
      "budget": b, "train_pairs": train_pairs,
      "validation_pairs": len(read_jsonl(lr.world_preferences("validation"))), "test_records": len(tests),
      "stage_s": stage_s, "stage_resumed": resumed, "eval_s": eval_s,
      "stage_peak_rss_mib": stage_peak_rss_mib,
      "tokens_per_step": tokens_per_step,
      **_timings(run_dir, tokens_per_step),
      "copies": model_copies(
          arm, lm_bytes, param_bytes(reward_cfg, scalar_head=True)),
      "num_params": model.num_params(),
      "flops_per_token_train": model.flops_per_token(tokens_per_step // (
          2 * b["dpo_batch"] if arm == "dpo" else b["ppo_minibatch"])),
      "test": metrics,
      "judge_policy": [r["judge"] for r in per_prompt],
      "judge_sft": [r["sft_judge"] for r in per_prompt],
      "stage_summary": {k: v for k, v in (summary or {}).items()
                        if isinstance(v, (int, float, str))},
  }
  if arm == "ppo":
    result.update(_rollout_stats(run_dir, b["ppo_prompts_per_iteration"]))
  else:
    result.update(rollout_iterations=0, rollout_tokens=0.0)
  with open(os.path.join(root, RESULT), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=str)
  return result

