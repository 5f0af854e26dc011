"""One cell of the GRPO-family experiment: GRPO from the demo's SFT model on
the world's verifiable instruction tasks, rewarded by the world's
programmatic judge, with one loss aggregation / clipping setting (the arm),
then the final policy on the test split.

`grpo_family_cell` (the gin entry, `run.stage = @grpo_family_cell`):
  1. makes sure the demo's SFT and reward models exist: the lifecycle root
     `base_root` run with `lifecycle.until='reward'` (lifecycle/default.gin;
     built once under a file lock and shared with other experiments; the
     reward model is only the test split's second judge here);
  2. runs the `grpo` stage (lifejax/stages/rl.py) in the gin scope
     `gf_grpo/` (the lifecycle's own settings are untouched): the policy and
     its frozen reference are the SFT model, the reward is the world's
     programmatic judge ('default' preset) of each sampled answer, on the
     world's TRAIN instruction split; every iteration logs policy_entropy
     (RLLoopConfig.log_entropy), reward, kl, clip_fraction, response_length;
  3. answers every test prompt greedily with the final policy and with the
     SFT model (policy_eval.PolicyEvaluator: the same decoding, the SFT
     answers are the paired reference) and scores each answer with the
     programmatic judge (the training reward: circular) and with the demo's
     reward model (a differently built judge); KL to SFT along the policy's
     answers, `kl_batch` prompts at a time.

Nothing is selected on the test split: it is read once, after training.
Everything lands in `<root>/test_eval.json` (`TEST_EVAL`), the per-prompt
answers and scores in `<root>/test_answers.jsonl` (`TEST_ANSWERS`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import gin

from lifejax import checks, sharding, sweep
from lifejax.eval import instruct
from lifejax.model.config import TransformerConfig
from lifejax.stages.rl import grpo

TEST_EVAL = "test_eval.json"
TEST_ANSWERS = "test_answers.jsonl"
GRPO_DIR = "grpo"
SCOPE = "gf_grpo"


@gin.configurable
def grpo_family_cell(
    root: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    test_records: int = 0,
    rm_seq_len: int = 256,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """GRPO on the programmatic judge (gin scope `gf_grpo/`), then the test
  split; returns (and writes) `<root>/test_eval.json`.

  root: the cell directory. base_root: the lifecycle root holding the demo's
  SFT and reward runs (None: <sweep root>/base). seed: the GRPO run's seed
  (rollout sampling and prompt order). test_records: how many test prompts
  (0: all). rm_seq_len: the reward model's row length (= the reward stage's
  seq_len). generation_spec: the test split's greedy decoding.
  """
  checks.at_least("grpo_family_cell.test_records", test_records, 0)
  checks.at_least("grpo_family_cell.rm_seq_len", rm_seq_len, 1)
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              "reward")
  sft_run = lr.stage("sft").root
  run_dir = os.path.join(root, GRPO_DIR)
  with gin.config_scope(SCOPE):
    summary = grpo(run_dir=run_dir, sft_run=sft_run,
                   prompt_files=[lr.world_instructions("train")],
                   model=model, mesh=mesh, seed=seed)

  rows, test = sweep.policy_vs_sft(
      lr, run_dir, model, mesh, generation_spec,
      os.path.join(root, TEST_ANSWERS), test_records=test_records,
      rm_seq_len=rm_seq_len)
  result = {
      "seed": seed, "base": os.path.relpath(lr.root, root),
      "test_records": len(rows),
      "final_iteration": summary.get("final_iteration"),
      "test": test}
  with open(os.path.join(root, TEST_EVAL), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
