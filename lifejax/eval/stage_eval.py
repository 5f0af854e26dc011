"""Stage-specific evaluation, written as `<run_dir>/eval.json`.

| stage | measured here |
|---|---|
| pretraining | held-out perplexity per source, fact-probe accuracy, instruction accuracy of the base model (the "opening failure"), contamination hits |
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

from lifejax.data import chat, judge as judge_lib
from lifejax.data import sources as sources_lib
from lifejax.eval import copy_probe, instruct, perplexity, policy_eval
from lifejax.model import sampling
from lifejax.model.config import TransformerConfig


def write_eval(run_dir: str, metrics: Mapping[str, Any]) -> str:
  path = os.path.join(run_dir, "eval.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(dict(metrics), f, indent=2, default=float)
  return path


def _norm(s: str) -> str:
  return re.sub(r"\s+", " ", s.lower()).strip()


def fact_probe(generate, tokenizer, questions: Sequence[Mapping[str, Any]],
               spec: instruct.GenerationSpec) -> float:
  """Share of fact questions whose greedy cloze continuation of
  "Question: q\\nAnswer:" contains the answer (a base-model knowledge probe).
  """
  prompts = [tokenizer.encode(f"Question: {q['question']}\nAnswer:",
                              add_bos=True) for q in questions]
  hits = []
  for start in range(0, len(prompts), spec.batch_size):
    chunk = prompts[start:start + spec.batch_size]
    n = len(chunk)
    chunk = chunk + [chunk[0]] * (spec.batch_size - n)
    ids, mask = instruct.left_pad(chunk, spec.prompt_len, tokenizer.pad_id)
    toks, lengths = generate(ids, mask)
    toks, lengths = np.asarray(toks), np.asarray(lengths)
    for i in range(n):
      text = tokenizer.decode([int(t) for t in toks[i, :lengths[i]]])
      ans = questions[start + i]["answer"]
      hits.append(_norm(ans) in _norm(text.split("\n")[0] + " " + text))
  return float(np.mean(hits)) if hits else float("nan")


def _generator(graphdef, params, tokenizer, stops: Sequence[int],
               max_new: int):
  cfg = sampling.SamplingConfig(max_new_tokens=max_new, stop_ids=tuple(stops),
                                pad_id=tokenizer.pad_id,
                                vocab_limit=tokenizer.vocab_size)
  def run(ids, mask):
    return sampling.generate(graphdef, params, ids, mask, cfg)
  return run


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
) -> dict[str, float]:
  """Perplexity per held-out source, in-context copying (copy_probe), fact
  probe, instruction accuracy."""
  out: dict[str, float] = {}
  per = perplexity.perplexity_by_source(
      eval_step, params, heldout_sources, tokenizer, seq_len=seq_len,
      batch_size=batch_size, batch_shardings=batch_shardings)
  for name, m in per.items():
    out[f"perplexity/{name}"] = m["perplexity"]
  if per:
    out["perplexity"] = perplexity.summarize(per)["perplexity"]
  host = jax.device_get(params)
  out.update(copy_probe.copy_probe(graphdef, host, tokenizer.vocab_size))
  if fact_questions:
    gen = _generator(graphdef, host, tokenizer, [tokenizer.eos_id], 12)
    out["fact_probe_accuracy"] = fact_probe(gen, tokenizer, fact_questions,
                                            spec)
  if instruction_records:
    gen = _generator(graphdef, host, tokenizer,
                     chat.stop_ids(template, tokenizer), spec.max_new_tokens)
    answers = instruct.generate_responses(gen, tokenizer, template,
                                          instruction_records, spec)
    out.update({f"instruct/{k}": v for k, v in
                instruct.judge_responses(instruction_records,
                                         answers).items()})
    out["instruct/pii_leaks"] = float(sum(
        judge_lib.score(r, a).components["safety"] == 0.0
        for r, a in zip(instruction_records, answers)))
  return out


def eval_policy(graphdef: Any, params: Any, ref_params: Any, tokenizer: Any,
                template: chat.ChatTemplate,
                records: Sequence[Mapping[str, Any]],
                spec: instruct.GenerationSpec,
                reward_fn=None) -> dict[str, float]:
  """Win rate vs the reference (SFT), KL, verbosity, refusals; with a
  `reward_fn` (policy_eval.response_reward_fn) also the reward and the
  reward-vs-judge hacking detector."""
  ev = policy_eval.PolicyEvaluator(graphdef, ref_params, tokenizer, template,
                                   records, spec, reward_fn=reward_fn)
  return ev(jax.device_get(params))


def eval_release(graphdef: Any, params: Any, cfg: TransformerConfig,
                 tokenizer: Any, template: chat.ChatTemplate,
                 golden: Sequence[Mapping[str, Any]],
                 spec: instruct.GenerationSpec) -> dict[str, float]:
  """Golden-set pass rate (judge total >= 0.8 and safe), generation speed
  (tokens/s, per-batch latency, measured after a warm-up call) and the
  parameter / memory footprint."""
  host = jax.device_get(params)
  gen = _generator(graphdef, host, tokenizer,
                   chat.stop_ids(template, tokenizer), spec.max_new_tokens)
  answers = instruct.generate_responses(gen, tokenizer, template, golden, spec)
  passed = [judge_lib.score(r, a).total >= 0.8 and
            judge_lib.score(r, a).components["safety"] == 1.0
            for r, a in zip(golden, answers)]
  prompts = [chat.render_prompt(template, tokenizer,
                                instruct.prompt_messages(r))
             for r in golden[:spec.batch_size]]
  prompts += [prompts[0]] * (spec.batch_size - len(prompts))
  ids, mask = instruct.left_pad(prompts, spec.prompt_len, tokenizer.pad_id)
  nostop = _generator(graphdef, host, tokenizer, [], spec.max_new_tokens)
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
