"""Stage-specific evaluation, written as `<run_dir>/eval.json`.

| stage | measured here |
|---|---|
| pretraining | held-out perplexity per source, fact-probe accuracy, fact ranking (what the base model stores: knowledge.py), instruction accuracy of the base model (the "opening failure"), contamination hits |
| SFT | instruction accuracy per task, format compliance, refusal correctness, general perplexity |
| reward model | pairwise accuracy by flaw kind, calibration (from the stage) |
| DPO / PPO | judge win rate vs SFT, KL to reference, verbosity, refusal rate |
| release | golden-set pass rate, generation tokens/s and latency, parameter and memory footprint |
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lifejax import sharding
from lifejax.data import batching, chat, prompts
from lifejax.data.jsonl import write_jsonl
from lifejax.data import sources as sources_lib
from lifejax.eval import copy_probe, generation, instruct, knowledge
from lifejax.eval import perplexity, policy_eval
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import RunDir
from lifejax.world import judge as judge_lib


def write_eval(run_dir: str, metrics: Mapping[str, Any]) -> str:
  """Writes the stage's eval.json; returns its path."""
  path = RunDir(run_dir).eval
  with open(path, "w", encoding="utf-8") as f:
    json.dump(dict(metrics), f, indent=2, default=float)
  return path


def write_json(path: str, obj: Any) -> str:
  """Replaces `path` with `obj` as JSON, atomically; returns the path."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f)
  os.replace(tmp, path)
  return path


def _norm(s: str) -> str:
  return re.sub(r"\s+", " ", s.lower()).strip()


def fact_probe(generate, tokenizer, questions: Sequence[Mapping[str, Any]],
               spec: instruct.GenerationSpec) -> float:
  """Share of fact questions whose greedy cloze continuation of
  "Question: q\\nAnswer:" contains the answer (a base-model knowledge probe).
  """
  if not questions:
    return float("nan")
  rows = [tokenizer.encode(f"Question: {q['question']}\nAnswer:",
                           add_bos=True) for q in questions]
  toks, lengths = generation.generate_ids(generate, rows, spec.prompt_len,
                                          spec.batch_size, tokenizer.pad_id)
  hits = []
  for i, q in enumerate(questions):
    text = tokenizer.decode([int(t) for t in toks[i, :lengths[i]]])
    first_line = text.split("\n")[0]
    hits.append(_norm(q["answer"]) in _norm(first_line + " " + text))
  return float(np.mean(hits))


def eval_lm(
    *,
    graphdef: Any,
    params: Any,
    tokenizer: Any,
    eval_step: Any,
    batch_shardings: Any,
    heldout_sources: Sequence[sources_lib.Source],
    seq_len: int,
    batch_size: int,
    template: chat.ChatTemplate,
    instruction_records: Sequence[Mapping[str, Any]] = (),
    fact_questions: Sequence[Mapping[str, Any]] = (),
    spec: instruct.GenerationSpec = instruct.GenerationSpec(),
    baseline_records: Sequence[Mapping[str, Any]] = (),
    baseline: Mapping[str, float] | None = None,
    ranking_items: Sequence[Mapping[str, Any]] = (),
    details_dir: str | None = None,
) -> dict[str, float]:
  """Perplexity per held-out source, in-context copying (copy_probe), fact
  probe, fact ranking (knowledge.fact_ranking of `ranking_items`),
  instruction accuracy.

  details_dir: a run directory to write the per-item data behind the
  aggregates into, for paired comparisons across stages (eval.chain):
  eval_answers.jsonl, one row per instruction prompt (instruct.answer_rows),
  and eval_rows.json, each held-out source's per-row (summed loss, token
  weight) of its packed rows (the eval step's loss must emit per-row
  metrics: losses.lm.lm_loss(per_row=True)), and fact_rank.json, the
  ranking's per-fact hits (knowledge.per_fact).

  baseline_records: dev prompts whose answers set the judge baseline
  (`judge_baseline/<task>`: this model's mean judge total per task, the
  base model's when this is pretraining); the instruction metrics are then
  also calibrated against it (judge_calibrated). baseline: a baseline
  measured earlier (a later stage's evaluation uses pretraining's)."""
  out: dict[str, float] = {}
  per = perplexity.perplexity_by_source(
      eval_step, params, heldout_sources, tokenizer, seq_len=seq_len,
      batch_size=batch_size, batch_shardings=batch_shardings,
      per_row=bool(details_dir))
  for name, m in per.items():
    out[f"perplexity/{name}"] = m["perplexity"]
  if details_dir and per:
    write_json(RunDir(details_dir).eval_rows,
               {name: m["rows"] for name, m in per.items()})
  if per:
    out["perplexity"] = perplexity.summarize(per)["perplexity"]
  host = sharding.fetch(params)
  out.update(copy_probe.copy_probe(graphdef, host, tokenizer.vocab_size))
  if ranking_items:
    ranking, facts = knowledge.fact_ranking(graphdef, host, tokenizer,
                                            ranking_items, spec.batch_size)
    out.update(ranking)
    if details_dir:
      write_json(RunDir(details_dir).fact_rank, {"facts": facts})
  if fact_questions:
    gen = generation.make_generate(graphdef, host, generation.greedy_config(
        tokenizer, [tokenizer.eos_id], 12), devices=spec.devices)
    out["fact_probe_accuracy"] = fact_probe(gen, tokenizer, fact_questions,
                                            spec)
    out["fact_probe_questions"] = float(len(fact_questions))
  if instruction_records or baseline_records:
    gen = generation.make_generate(graphdef, host, generation.chat_config(
        template, tokenizer, spec.max_new_tokens), devices=spec.devices)
  if baseline_records:
    dev_answers = generation.generate_responses(gen, tokenizer, template,
                                                baseline_records, spec)
    per_task = instruct.judge_responses(baseline_records, dev_answers)
    baseline = {k[len("judge/"):]: v for k, v in per_task.items()
                if k.startswith("judge/")}
    out.update({instruct.BASELINE_PREFIX + t: v for t, v in baseline.items()})
  if instruction_records:
    answers = generation.generate_responses(gen, tokenizer, template,
                                            instruction_records, spec)
    out.update({f"instruct/{k}": v for k, v in
                instruct.judge_responses(instruction_records, answers,
                                         baseline=baseline).items()})
    out["instruct/pii_leaks"] = float(sum(
        judge_lib.score(r, a).components["safety"] == 0.0
        for r, a in zip(instruction_records, answers)))
    out["instruct/prompts"] = float(len(instruction_records))
    if details_dir:
      write_jsonl(RunDir(details_dir).eval_answers,
                  instruct.answer_rows(instruction_records, answers))
  return out


def eval_policy(graphdef: Any, params: Any, ref_params: Any, tokenizer: Any,
                template: chat.ChatTemplate,
                records: Sequence[Mapping[str, Any]],
                spec: instruct.GenerationSpec,
                reward_fn=None,
                baseline: Mapping[str, float] | None = None,
                details_dir: str | None = None,
                ref_answers: Sequence[str] | None = None
                ) -> dict[str, float]:
  """Win rate vs the reference (SFT), KL, verbosity, refusals; with a
  `reward_fn` (policy_eval.response_reward_fn) also the reward and the
  reward-vs-judge hacking detector. ref_answers: the reference's answers
  to `records`, if already generated (else they are generated here).

  details_dir: a run directory to write eval_answers.jsonl into, one row
  per prompt (instruct.answer_rows of the policy's answer, with the
  reference's row under "sft"): the paired data behind the report's
  flaw-rate comparison."""
  ev = policy_eval.PolicyEvaluator(graphdef, ref_params, tokenizer, template,
                                   records, spec, reward_fn=reward_fn,
                                   baseline=baseline, ref_answers=ref_answers)
  out = ev(sharding.fetch(params))
  out["instruct/prompts"] = float(len(records))
  if details_dir:
    rows = instruct.answer_rows(records, ev.last_answers)
    refs = instruct.answer_rows(records, ev.ref_answers)
    write_jsonl(RunDir(details_dir).eval_answers, [
        {**row, "sft": {k: v for k, v in ref.items()
                        if k not in ("id", "task", "group")}}
        for row, ref in zip(rows, refs)])
  return out


def eval_release(graphdef: Any, params: Any, cfg: TransformerConfig,
                 tokenizer: Any, template: chat.ChatTemplate,
                 golden: Sequence[Mapping[str, Any]],
                 spec: instruct.GenerationSpec) -> dict[str, float]:
  """Golden-set pass rate (judge total >= 0.8 and safe), generation speed
  (tokens/s, per-batch latency, measured after a warm-up call) and the
  parameter / memory footprint."""
  host = sharding.fetch(params)
  gen = generation.make_generate(graphdef, host, generation.chat_config(
      template, tokenizer, spec.max_new_tokens), devices=spec.devices)
  answers = generation.generate_responses(gen, tokenizer, template, golden,
                                          spec)
  scores = [judge_lib.score(r, a) for r, a in zip(golden, answers)]
  passed = [s.total >= 0.8 and s.components["safety"] == 1.0 for s in scores]
  # One full batch of golden prompts (padded with copies of the first).
  rows = [prompts.prompt_ids(template, tokenizer, r)
          for r in golden[:spec.batch_size]]
  ids, mask = batching.pad_rows(
      prompts.left_pad(rows, spec.prompt_len, tokenizer.pad_id),
      spec.batch_size)
  nostop = generation.make_generate(graphdef, host, generation.greedy_config(
      tokenizer, [], spec.max_new_tokens), devices=spec.devices)
  jax.block_until_ready(nostop(ids, mask))
  t0 = time.perf_counter()
  toks, _ = nostop(ids, mask)
  jax.block_until_ready(toks)
  dt = time.perf_counter() - t0
  n_params = cfg.num_params()
  return {
      "golden_pass_rate": float(np.mean(passed)),
      "golden_size": float(len(golden)),
      "generation_tokens_per_sec": spec.batch_size * spec.max_new_tokens / dt,
      "generation_latency_sec_per_batch": dt,
      "num_params": float(n_params),
      "param_bytes": float(sum(np.asarray(x).nbytes
                               for x in jax.tree.leaves(host))),
  }
