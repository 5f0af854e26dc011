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

import copy
import json
import os
from typing import Any

import gin
import numpy as np

from lifejax import checks, sharding, sweep
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import instruct, lifecycle_evals, policy_eval
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.stages.rl import grpo
from lifejax.world import judge as judge_lib

TEST_EVAL = "test_eval.json"
TEST_ANSWERS = "test_answers.jsonl"
GRPO_DIR = "grpo"
SCOPE = "gf_grpo"


def rm_scores(scorer: rollout_lib.RewardModelScorer, template: Any,
              tokenizer: Any, records: list, answers: list[str],
              seq_len: int) -> np.ndarray:
  """The reward model's normalized score of each (prompt, answer)."""
  fn = policy_eval.response_reward_fn(
      lambda rows: (scorer.raw(rows) - scorer.mean) / scorer.std,
      template, tokenizer, records, seq_len)
  return np.asarray(fn(answers), np.float64)


class ChunkedPolicyEvaluator(policy_eval.PolicyEvaluator):
  """PolicyEvaluator whose KL to the reference runs `kl_batch` prompts at a
  time (the exact KL's full-vocabulary log-probabilities of the whole test
  split at once take several GB)."""

  def __init__(self, *args, kl_batch: int = 8, **kwargs):
    checks.at_least("ChunkedPolicyEvaluator.kl_batch", kl_batch, 1)
    self.kl_batch = kl_batch
    super().__init__(*args, **kwargs)

  def kl_to_reference(self, params, answers) -> float:
    total, n = 0.0, len(self.records)
    for i in range(0, n, self.kl_batch):
      view = copy.copy(self)
      view.records = self.records[i:i + self.kl_batch]
      kl = super(ChunkedPolicyEvaluator, view).kl_to_reference(
          params, answers[i:i + self.kl_batch])
      total += kl * len(view.records)
    return total / n


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
  sft_run, reward_run = lr.stage("sft").root, lr.stage("reward").root
  run_dir = os.path.join(root, GRPO_DIR)
  with gin.config_scope(SCOPE):
    summary = grpo(run_dir=run_dir, sft_run=sft_run,
                   prompt_files=[lr.world_instructions("train")],
                   model=model, mesh=mesh, seed=seed)

  tests = read_jsonl(lr.world_instructions("test"))
  if not tests:
    raise ValueError(f"{lr.world_instructions('test')}: no test prompts")
  tests = tests[:test_records] if test_records else tests
  jmesh = sharding.make_mesh(mesh)
  graphdef, ref = artifacts.load_params(
      sft_run, transformer.Transformer, model, jmesh, mesh.rules)
  _, params = lifecycle_evals.lm_params(run_dir, model, jmesh, mesh.rules)
  tokenizer = artifacts.load_tokenizer(sft_run)
  template = artifacts.load_template(sft_run)
  ev = ChunkedPolicyEvaluator(
      graphdef, sharding.fetch(ref), tokenizer, template, tests,
      generation_spec, kl_batch=min(8, len(tests)))
  metrics = ev(sharding.fetch(params))
  answers, ref_answers = ev.last_answers, ev.ref_answers
  scorer = rollout_lib.load_reward_scorer(reward_run, jmesh, mesh.rules)
  rm = rm_scores(scorer, template, tokenizer, tests, answers, rm_seq_len)
  rm_ref = rm_scores(scorer, template, tokenizer, tests, ref_answers,
                     rm_seq_len)
  rows = []
  for i, rec in enumerate(tests):
    rows.append({
        "id": rec.get("id"), "task": rec["task"],
        "answer": answers[i], "sft_answer": ref_answers[i],
        "judge": judge_lib.score(rec, answers[i]).total,
        "sft_judge": judge_lib.score(rec, ref_answers[i]).total,
        "rm": float(rm[i]), "sft_rm": float(rm_ref[i]),
        "words": len(answers[i].split()),
        "sft_words": len(ref_answers[i].split())})
  write_jsonl(os.path.join(root, TEST_ANSWERS), rows)
  result = {
      "seed": seed, "base": os.path.relpath(lr.root, root),
      "test_records": len(tests),
      "final_iteration": summary.get("final_iteration"),
      "test": {
          "judge": float(np.mean([r["judge"] for r in rows])),
          "sft_judge": float(np.mean([r["sft_judge"] for r in rows])),
          "rm": float(np.mean(rm)), "sft_rm": float(np.mean(rm_ref)),
          "words": float(np.mean([r["words"] for r in rows])),
          "sft_words": float(np.mean([r["sft_words"] for r in rows])),
          "kl_to_sft": metrics["kl_to_ref"],
          "refusal_rate": metrics["refusal_rate"],
          "paired_judge": policy_eval.paired_stats(
              [r["judge"] for r in rows], [r["sft_judge"] for r in rows]),
          "paired_rm": policy_eval.paired_stats(
              [r["rm"] for r in rows], [r["sft_rm"] for r in rows])}}
  with open(os.path.join(root, TEST_EVAL), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
