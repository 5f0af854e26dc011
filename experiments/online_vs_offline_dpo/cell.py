"""One cell of the online-vs-offline DPO experiment: DPO from the demo's SFT
model on a fixed offline preference set, or online / iterative DPO on
judge-labelled samples of the current policy, at the same number of
optimizer steps; then the final policy on the test split.

`online_dpo_cell` (the gin entry, `run.stage = @online_dpo_cell`):
  1. makes sure the demo's SFT and reward models exist: the lifecycle root
     `base_root` run with `lifecycle.until='reward'` (built once under a
     file lock and shared with other experiments; the reward model is only
     the test split's second judge here);
  2. writes the seed's `train_pairs` preference train pairs (a subset of the
     world's preferences/train.jsonl drawn with the seed) to
     <root>/pairs.jsonl, and the first `eval_pairs` validation pairs to
     <root>/eval_pairs.jsonl (held-out pairs: the stages' eval/...);
  3. runs the arm in the gin scope `od/` with the cell's optimizer, loop,
     checkpoint, batch size, sequence length and loss (the same objects for
     both arms; `check_budget`):
       offline: the `dpo` stage on <root>/pairs.jsonl (chosen = the
                reference answer, rejected = a flawed rewrite);
       online:  the `online_dpo` stage on the same records' prompts:
                rounds of sampling from the current policy, the world's
                programmatic judge labelling best vs worst of n samples,
                DPO steps on the kept pairs, reference = the SFT model;
  4. answers the test prompts greedily with the final policy and with the
     SFT model (policy_eval.PolicyEvaluator: the same decoding, the SFT
     answers are the paired reference), scores each answer with the
     programmatic judge (the online arm's labeller: circular for it) and
     with the demo's reward model (a differently built judge); KL to SFT
     along the policy's answers, `kl_batch` prompts at a time.

Nothing is selected on the test split: it is read once, after training.
Everything lands in <root>/test_eval.json (`TEST_EVAL`), the per-prompt
answers and scores in <root>/test_answers.jsonl (`TEST_ANSWERS`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import gin
import numpy as np

from lifejax import checks, sharding, sweep
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import instruct
from lifejax.model.config import TransformerConfig
from lifejax.rl import rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run.layout import RunDir
from lifejax.stages.dpo import dpo
from lifejax.stages.online_dpo import OnlineDPOConfig, online_dpo
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

ARMS = ("offline", "online")
SCOPE = "od"
STAGE_DIR = "stage"
PAIRS = "pairs.jsonl"
EVAL_PAIRS = "eval_pairs.jsonl"
TEST_EVAL = "test_eval.json"
TEST_ANSWERS = "test_answers.jsonl"


def check_budget(train_pairs: int, batch_size: int, loop: LoopConfig,
                 optimizer: OptimizerConfig, online: OnlineDPOConfig
                 ) -> dict[str, int]:
  """Both arms: loop.num_steps optimizer steps of batch_size pairs; the
  offline arm passes once over its train_pairs pairs, the online arm
  samples each of the same train_pairs prompts once. Anything else is an
  error naming the option."""
  problems = []
  steps = loop.num_steps
  if optimizer.total_steps != steps:
    problems.append(f"OptimizerConfig.total_steps={optimizer.total_steps} "
                    f"!= LoopConfig.num_steps={steps}")
  if steps * batch_size != train_pairs:
    problems.append(f"offline: {steps} steps x batch {batch_size} = "
                    f"{steps * batch_size} pairs != online_dpo_cell."
                    f"train_pairs={train_pairs} (one pass)")
  k = online.steps_per_round
  if steps % k:
    problems.append(f"LoopConfig.num_steps={steps} is not a multiple of "
                    f"OnlineDPOConfig.steps_per_round={k}")
  rounds = steps // k
  if online.prompts_per_round * rounds != train_pairs:
    problems.append(f"online: {rounds} rounds x {online.prompts_per_round} "
                    f"prompts != online_dpo_cell.train_pairs={train_pairs} "
                    "(each prompt sampled once)")
  if problems:
    raise ValueError("online_vs_offline_dpo budget mismatch: "
                     + "; ".join(problems))
  return {"steps": steps, "batch_size": batch_size, "rounds": rounds,
          "steps_per_round": k, "prompts_per_round": online.prompts_per_round,
          "train_pairs": train_pairs}


def subset(records: list, n: int, seed: int) -> list:
  """The seed's n records (without replacement, in file order)."""
  if len(records) < n:
    raise ValueError(f"online_dpo_cell.train_pairs={n}: the world has only "
                     f"{len(records)} preference train pairs")
  idx = np.sort(np.random.default_rng([seed, 20]).choice(
      len(records), n, replace=False))
  return [records[i] for i in idx]


def _train_rows(run_dir: str) -> list[dict[str, Any]]:
  """The stage's per-step training rows (DPO loss, accuracy, margins)."""
  return [{k: v for k, v in r.items() if not k.startswith("eval/")
           and isinstance(v, (int, float))}
          for r in read_jsonl(RunDir(run_dir).metrics)
          if "loss" in r and "step" in r]


@gin.configurable
def online_dpo_cell(
    root: str = gin.REQUIRED,
    arm: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    train_pairs: int = 128,
    eval_pairs: int = 32,
    batch_size: int = 8,
    seq_len: int = 304,
    loss: str = "dpo",
    loss_hparams: dict | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    online: OnlineDPOConfig = OnlineDPOConfig(),
    pairs: rlaif_lib.RLAIFConfig = rlaif_lib.RLAIFConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    judge_preset: str = "default",
    test_records: int = 0,
    rm_seq_len: int = 256,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """Runs arm `arm` ('offline' | 'online') from the demo's SFT model into
  <root>/stage (gin scope `od/`), then the test split; returns (and writes)
  <root>/test_eval.json.

  root: the cell directory. base_root: the lifecycle root holding the
  demo's SFT and reward runs (None: <sweep root>/base). seed: the seed of
  the pair subset, the data order and (online) the sampling. train_pairs:
  the seed's preference train pairs (offline: the pairs; online: their
  prompts). eval_pairs: the first N validation pairs, the stages' held-out
  eval/... (0: none). batch_size, seq_len, loss, loss_hparams, optimizer,
  loop, checkpoint: shared by both arms' stages. online, pairs, rollout,
  judge_preset: the online arm's rounds, labelling and sampling (unused
  offline). test_records: how many test prompts (0: all). rm_seq_len: the
  reward model's row length (= the reward stage's seq_len).
  generation_spec: the test split's greedy decoding.
  """
  checks.choice("online_dpo_cell.arm", arm, ARMS)
  checks.at_least("online_dpo_cell.train_pairs", train_pairs, 1)
  checks.at_least("online_dpo_cell.eval_pairs", eval_pairs, 0)
  checks.at_least("online_dpo_cell.test_records", test_records, 0)
  checks.at_least("online_dpo_cell.rm_seq_len", rm_seq_len, 1)
  budget = check_budget(train_pairs, batch_size, loop, optimizer, online)
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              "reward")
  sft_run = lr.stage("sft").root
  pairs_file = write_jsonl(os.path.join(root, PAIRS), subset(
      read_jsonl(lr.world_preferences("train")), train_pairs, seed))
  eval_file = None
  if eval_pairs:
    val = read_jsonl(lr.world_preferences("validation"))
    if len(val) < eval_pairs:
      raise ValueError(f"online_dpo_cell.eval_pairs={eval_pairs}: the world "
                       f"has only {len(val)} validation pairs")
    eval_file = write_jsonl(os.path.join(root, EVAL_PAIRS), val[:eval_pairs])
  run_dir = os.path.join(root, STAGE_DIR)
  shared = dict(run_dir=run_dir, init_from=sft_run, eval_file=eval_file,
                prompt_file=None, loss=loss, loss_hparams=loss_hparams,
                model=model, mesh=mesh, optimizer=optimizer, loop=loop,
                checkpoint=checkpoint, batch_size=batch_size,
                seq_len=seq_len, seed=seed)
  with gin.config_scope(SCOPE):
    if arm == "offline":
      if eval_file is None:
        raise ValueError("online_dpo_cell.eval_pairs=0: the dpo stage needs "
                         "held-out pairs")
      dpo(train_files=[pairs_file], **shared)
    else:
      online_dpo(prompt_files=[pairs_file], judge="judge",
                 judge_preset=judge_preset, online=online, pairs=pairs,
                 rollout=rollout, **shared)
  with open(RunDir(run_dir).summary, encoding="utf-8") as f:
    summary = json.load(f)
  if summary.get("final_step") != loop.num_steps:
    raise RuntimeError(f"{run_dir}: finished at step "
                       f"{summary.get('final_step')}, not {loop.num_steps}")

  rows, test = sweep.policy_vs_sft(
      lr, run_dir, model, mesh, generation_spec,
      os.path.join(root, TEST_ANSWERS), test_records=test_records,
      rm_seq_len=rm_seq_len,
      # the online arm's labeller
      judge_config=rollout_lib.judge_config(judge_preset))
  train = _train_rows(run_dir)
  result = {
      "arm": arm, "seed": seed, "base": os.path.relpath(lr.root, root),
      "budget": budget, "batch_size": batch_size, "seq_len": seq_len,
      "loss": loss, "loss_hparams": loss_hparams,
      "learning_rate": optimizer.learning_rate,
      "final_step": summary.get("final_step"),
      "rounds": summary.get("rounds", []),
      "input_records": summary.get("input_records"),
      "train": train,
      "eval": {k: v for k, v in (summary.get("eval") or {}).items()
               if isinstance(v, (int, float))},
      "test_records": len(rows),
      "test": test}
  with open(os.path.join(root, TEST_EVAL), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=str)
  return result
