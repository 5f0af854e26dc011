"""The lifecycle's evaluation of each finished stage (its eval.json).

An LM stage (pretraining, SFT) gets perplexities, the fact probe and
instruction accuracy; a tuned policy (DPO, PPO) its win rate, KL and reward
against SFT; the release candidate its golden set and footprint; the reward
model the pairwise metrics its stage wrote. The release candidate is picked
on the dev prompts (`dev_judge`, `pick_release`), never on the test prompts
its metrics are reported on. Each driver loads the run's
params, tokenizer and template through `run.artifacts`; `stage_eval`
computes the metrics.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lifejax import sharding
from lifejax.data import chat, files
from lifejax.data.batching import example_lm_batch
from lifejax.data.jsonl import read_jsonl
from lifejax.eval import generation, instruct, policy_eval, reward_eval
from lifejax.eval import stage_eval
from lifejax.losses.registry import get_loss
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run import lineage as lineage_lib
from lifejax.run.layout import RunDir
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training

Record = Mapping[str, Any]
# rows (reward-model row layout) -> normalized rewards (B,)
ScoreRows = Callable[[dict[str, np.ndarray]], np.ndarray]


def lm_params(run_dir: str, model: TransformerConfig, mesh: Any,
              rules: sharding.Rules) -> tuple[Any, Any]:
  """(graphdef, params) of a stage's LM: the policy an RL run exported
  (policy/) if it has one, else the run's own latest checkpoint."""
  return artifacts.load_params(RunDir(run_dir).lm_run().root,
                               transformer.Transformer, model, mesh, rules)


class LMEvaluator:
  """Evaluates an LM run: perplexities, fact probe, instruction accuracy.

  The eval step is planned once (an LM loss over example_lm_batch shapes)
  and reused for every run it evaluates.
  """

  def __init__(self, model: TransformerConfig, mesh: Any,
               rules: sharding.Rules, seq_len: int, batch_size: int):
    self.model, self.mesh, self.rules = model, mesh, rules
    self.seq_len, self.batch_size = seq_len, batch_size
    # Its loss also emits per-row sums: eval_rows.json, the rows the
    # forgetting link's paired CI resamples.
    self.plan = plan_training(
        model_cfg=model, make_loss=functools.partial(
            get_loss("lm", kind="lm"), per_row=True),
        optimizer_cfg=OptimizerConfig(), mesh=mesh, rules=rules,
        example_batch=example_lm_batch(batch_size, seq_len))

  def __call__(self, run_dir: str, tokenizer_run: str,
               eval_files: Sequence[str], template: chat.ChatTemplate,
               instructions: Sequence[Record], facts: Sequence[Record],
               spec: instruct.GenerationSpec,
               baseline_records: Sequence[Record] = (),
               baseline: Mapping[str, float] | None = None,
               ranking: Sequence[Record] = ()
               ) -> dict[str, float]:
    _, params = artifacts.load_params(run_dir, transformer.Transformer,
                                      self.model, self.mesh, self.rules)
    return stage_eval.eval_lm(
        graphdef=self.plan.graphdef, params=params,
        tokenizer=artifacts.load_tokenizer(tokenizer_run),
        eval_step=self.plan.eval_step,
        batch_shardings=self.plan.batch_shardings,
        heldout_sources=[files.source_from_path(p) for p in eval_files],
        seq_len=self.seq_len, batch_size=self.batch_size, template=template,
        instruction_records=instructions, fact_questions=facts, spec=spec,
        baseline_records=baseline_records, baseline=baseline,
        ranking_items=ranking, details_dir=run_dir)


class PolicyEval:
  """Win rate / KL / verbosity / refusals of a tuned run against SFT.

  score_rows: the reward model's normalized score of reward-model rows
  (e.g. a reward run's scorer, loaded by the caller: this layer does not
  load RL pieces); with it the metrics add the reward and the
  reward-vs-judge gap.
  """

  def __init__(self, model: TransformerConfig, mesh: Any,
               rules: sharding.Rules, sft_run: str,
               records: Sequence[Record], spec: instruct.GenerationSpec,
               score_rows: ScoreRows | None = None, seq_len: int = 384,
               baseline: Mapping[str, float] | None = None):
    self.baseline = baseline
    self.model, self.mesh, self.rules = model, mesh, rules
    self.sft_run, self.records, self.spec = sft_run, records, spec
    self.score_rows, self.seq_len = score_rows, seq_len

  def __call__(self, run_dir: str) -> dict[str, float]:
    graphdef, ref = artifacts.load_params(
        self.sft_run, transformer.Transformer, self.model, self.mesh,
        self.rules)
    _, params = lm_params(run_dir, self.model, self.mesh, self.rules)
    tokenizer = artifacts.load_tokenizer(self.sft_run)
    template = artifacts.load_template(self.sft_run)
    reward_fn = None
    if self.score_rows is not None:
      reward_fn = policy_eval.response_reward_fn(
          self.score_rows, template, tokenizer, self.records, self.seq_len)
    out = stage_eval.eval_policy(
        graphdef, sharding.fetch(params), sharding.fetch(ref), tokenizer,
        template, self.records, self.spec, reward_fn, baseline=self.baseline,
        details_dir=run_dir, ref_answers=sft_answers(self.sft_run,
                                                     self.records))
    out["eval_judge_is_training_reward"] = float(
        trained_on_eval_judge(run_dir))
    return out


def sft_answers(sft_run: str, records: Sequence[Record]
                ) -> list[str] | None:
  """SFT's answers to `records` from its own evaluation (eval_answers.jsonl,
  written with the same generation spec, template and parameters the
  policy evaluation uses), in `records` order; None when that file is
  missing or does not cover exactly these prompts (they are then
  generated again)."""
  path = RunDir(sft_run).eval_answers
  if not os.path.exists(path):
    return None
  rows = read_jsonl(path)
  if [r.get("id") for r in rows] != [r.get("id") for r in records]:
    return None
  return [r["answer"] for r in rows]


def trained_on_eval_judge(run_dir: str) -> bool:
  """Whether an RL run was rewarded by the programmatic judge that also
  scores the evaluation (its lineage's reward kind is "judge"): its judge
  win rate is then circular evidence."""
  if not os.path.exists(RunDir(run_dir).lineage):
    return False
  reward = lineage_lib.read_lineage(run_dir).details.get("reward") or {}
  return isinstance(reward, Mapping) and reward.get("kind") == "judge"


def dev_judge(run_dir: str, model: TransformerConfig, mesh: Any,
              rules: sharding.Rules, sft_run: str, dev: Sequence[Record],
              spec: instruct.GenerationSpec) -> float:
  """Mean judge total of a candidate's greedy answers to the dev prompts
  (SFT's tokenizer and template): the release selection's score."""
  graphdef, params = lm_params(run_dir, model, mesh, rules)
  tokenizer = artifacts.load_tokenizer(sft_run)
  template = artifacts.load_template(sft_run)
  gen = generation.make_generate(
      graphdef, sharding.fetch(params),
      generation.chat_config(template, tokenizer, spec.max_new_tokens),
      devices=spec.devices)
  answers = generation.generate_responses(gen, tokenizer, template, dev,
                                          spec)
  return instruct.judge_responses(dev, answers)["judge"]


def pick_release(dev_scores: Mapping[str, float]) -> str:
  """The candidate with the best dev score; a tie goes to the earlier stage
  (the simpler pipeline), in the mapping's order."""
  if not dev_scores:
    raise ValueError("no release candidates to pick from")
  best = max(dev_scores.values())
  return next(name for name, v in dev_scores.items() if v == best)


def release_eval(candidate_run: str, model: TransformerConfig, mesh: Any,
                 rules: sharding.Rules, sft_run: str,
                 golden: Sequence[Record], spec: instruct.GenerationSpec
                 ) -> dict[str, float]:
  """Golden-set pass rate, generation speed and footprint of a candidate
  (its exported policy for an RL run), with SFT's tokenizer and template."""
  graphdef, params = lm_params(candidate_run, model, mesh, rules)
  return stage_eval.eval_release(
      graphdef, params, model, artifacts.load_tokenizer(sft_run),
      artifacts.load_template(sft_run), golden, spec)


def reward_metrics(run_dir: str, test_pairs: Sequence[Record] = (),
                   score_rows: ScoreRows | None = None,
                   seq_len: int = 384, tokenizer_run: str | None = None
                   ) -> dict[str, float]:
  """Pairwise accuracy (overall and by flaw kind, with the pair counts),
  ECE and mean margin.

  With `test_pairs` and `score_rows` (the run's raw Bradley-Terry score:
  ECE and the margin are on its scale, not on a normalized one) they are
  measured on those held-out test pairs, each prompt with its chosen and
  its rejected answer rendered as the policy evaluations render answers
  (policy_eval.response_reward_fn); the validation figures the stage wrote
  (reward_eval.json, which the run's own evals chose nothing on but saw)
  stay as dev_pair_accuracy. Without them, the stage's figures are
  reported as they are. tokenizer_run: the run whose tokenizer and chat
  template render the pairs (default: the reward run's own)."""
  with open(RunDir(run_dir).reward_eval, encoding="utf-8") as f:
    r = json.load(f)
  if test_pairs and score_rows is not None:
    reward_fn = policy_eval.response_reward_fn(
        score_rows, artifacts.load_template(tokenizer_run or run_dir),
        artifacts.load_tokenizer(tokenizer_run or run_dir), test_pairs,
        seq_len)
    t = reward_eval.evaluate_pairs(
        test_pairs, np.asarray(reward_fn([p["chosen"] for p in test_pairs])),
        np.asarray(reward_fn([p["rejected"] for p in test_pairs])))
    out = {"dev_pair_accuracy": r["accuracy"], "pair_split": "test"}
  else:
    t, out = r, {"pair_split": "validation"}
  out.update({"pair_accuracy": t["accuracy"], "ece": t["ece"],
              "mean_margin": t["mean_margin"],
              "pairs": float(sum(t["count_by_flaw"].values()))})
  out.update({f"pair_accuracy/{k}": v
              for k, v in t["accuracy_by_flaw"].items()})
  out.update({f"pairs/{k}": float(v) for k, v in t["count_by_flaw"].items()})
  # Per flaw and task ("pair_accuracy_by_task/wrong_fact/fact_qa");
  # reward_eval.json files written before the split have none.
  out.update({f"pair_accuracy_by_task/{k}": v
              for k, v in t.get("accuracy_by_flaw_task", {}).items()})
  out.update({f"pairs_by_task/{k}": float(v)
              for k, v in t.get("count_by_flaw_task", {}).items()})
  return out
