"""One cell of the reward-hacking experiment: PPO from the demo's SFT model
against the demo's LEARNED reward model at one KL coefficient, then the
final policy on the test split.

`reward_hacking_cell` (the gin entry, `run.stage = @reward_hacking_cell`):
  1. makes sure the demo's reward model exists: the lifecycle root
     `base_root` run with `lifecycle.until='reward'` (pretraining, SFT and
     the reward stage of lifecycle/default.gin; built once, under a file
     lock, by the first cell that needs it, and shared with other
     experiments);
  2. runs the `ppo` stage (lifejax/stages/rl.py) in the gin scope
     `rh_ppo/` (so the lifecycle's own `ppo/` settings are untouched): the
     policy and its frozen reference are the SFT model, the reward is the
     reward model's normalized score of each rollout (the proxy). Every
     iteration the stage also logs the world's programmatic judge on the
     same rollouts (`true_judge`, rl.rollout.rollout_metrics), which PPO
     does not train on;
  3. answers every test prompt greedily with the final policy and with the
     SFT model (policy_eval.PolicyEvaluator: the same decoding, the SFT
     answers are the paired reference) and scores each answer with the true
     judge and the reward model; KL to SFT along the policy's answers (8
     prompts at a time: the exact KL's full-vocabulary log-probabilities of
     all 120 prompts at once take several GB).

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
from lifejax.stages.rl import ppo

TEST_EVAL = "test_eval.json"
TEST_ANSWERS = "test_answers.jsonl"
PPO_DIR = "ppo"
SCOPE = "rh_ppo"


@gin.configurable
def reward_hacking_cell(
    root: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    test_records: int = 0,
    rm_seq_len: int = 256,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """PPO against the learned reward model (gin scope `rh_ppo/`), then the
  test split; returns (and writes) `<root>/test_eval.json`.

  root: the cell directory. base_root: the lifecycle root holding the demo's
  SFT and reward runs (None: <sweep root>/base). test_records: how many test
  prompts (0: all). rm_seq_len: the reward model's row length for the test
  answers (= the reward stage's seq_len). generation_spec: the test split's
  greedy decoding (max_new_tokens = the rollouts', so a policy that learned
  to run long is measured as it trained).
  """
  checks.at_least("reward_hacking_cell.test_records", test_records, 0)
  checks.at_least("reward_hacking_cell.rm_seq_len", rm_seq_len, 1)
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              "reward")
  sft_run, reward_run = lr.stage("sft").root, lr.stage("reward").root
  run_dir = os.path.join(root, PPO_DIR)
  with gin.config_scope(SCOPE):
    summary = ppo(run_dir=run_dir, sft_run=sft_run, reward_run=reward_run,
                  prompt_files=[lr.world_instructions("train")], model=model,
                  mesh=mesh, seed=seed)

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
