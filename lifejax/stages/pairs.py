"""What the reward, DPO, KTO and online-DPO stages share: the SFT run's
template and tokenizer, the preference records of their train and eval
files (pairs, or KTO's unpaired completions), each file checked under its
policy and counted; reference log-probs computed once; and the evals of a
preference stage (held-out loss, policy evaluation against the start)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lifejax import sharding
from lifejax.data import chat, preference, prompts as prompts_lib
from lifejax.data import sft as sft_data, unpaired, validation
from lifejax.data.batching import map_padded, num_rows
from lifejax.eval import instruct, policy_eval, samples as eval_samples
from lifejax.losses import dpo as dpo_lib
from lifejax.run import artifacts
from lifejax.stages import runner
from lifejax.train import engine


@dataclasses.dataclass
class PairInputs:
  template: chat.ChatTemplate
  tokenizer: Any
  render: sft_data.ChatRender
  log: validation.SkipLog
  train: list[dict[str, Any]]
  eval: list[dict[str, Any]]


def _check(stage: str, mesh: sharding.MeshConfig, batch_size: int,
           bad_records: str, bad_eval_records: str) -> bool:
  """Checks the stage's mesh, batch and policy options; False when the
  stage is only being checked (runner.checking_only)."""
  runner.preflight(stage, mesh, batch_size)
  validation.check_policy(f"{stage}.bad_records", bad_records)
  validation.check_policy(f"{stage}.bad_eval_records", bad_eval_records)
  return not runner.only_checking()


def _chat(init_from: str) -> tuple[chat.ChatTemplate, Any,
                                   sft_data.ChatRender]:
  template = artifacts.load_template(init_from)
  tokenizer = artifacts.load_tokenizer(init_from)
  return template, tokenizer, sft_data.ChatRender(template, tokenizer)


def prepare(stage: str, mesh: sharding.MeshConfig, batch_size: int,
            init_from: str, train_files: Sequence[str], eval_file: str,
            seq_len: int, bad_records: str, bad_eval_records: str
            ) -> PairInputs | None:
  """Checks the stage's mesh, batch and policy options, then (unless the
  stage is only being checked: None) loads its pairs."""
  if not _check(stage, mesh, batch_size, bad_records, bad_eval_records):
    return None
  template, tokenizer, render = _chat(init_from)
  log = validation.SkipLog()
  train, eval_ = preference.load_pair_sets(
      train_files, eval_file, template=template, render=render,
      seq_len=seq_len, train_policy=bad_records,
      eval_policy=bad_eval_records, log=log)
  return PairInputs(template, tokenizer, render, log, train, eval_)


def prepare_unpaired(stage: str, mesh: sharding.MeshConfig, batch_size: int,
                     init_from: str, train_files: Sequence[str],
                     eval_file: str, seq_len: int, bad_records: str,
                     bad_eval_records: str, from_pairs: bool
                     ) -> PairInputs | None:
  """`prepare` for unpaired completions: the files hold unpaired records
  (`data.unpaired`), or with `from_pairs` preference pairs, each pair
  read (and checked) as a pair and then split into a desirable and an
  undesirable record."""
  if from_pairs:
    inputs = prepare(stage, mesh, batch_size, init_from, train_files,
                     eval_file, seq_len, bad_records, bad_eval_records)
    if inputs is not None:
      inputs.train = unpaired.unpaired_from_pairs(inputs.train)
      inputs.eval = unpaired.unpaired_from_pairs(inputs.eval)
    return inputs
  if not _check(stage, mesh, batch_size, bad_records, bad_eval_records):
    return None
  template, tokenizer, render = _chat(init_from)
  log = validation.SkipLog()

  def load(path: str, policy: str) -> list[dict[str, Any]]:
    records, counts = unpaired.load_unpaired(
        path, policy=policy, template=template, render=render,
        seq_len=seq_len)
    log.put(path, counts, kind="unpaired completions", policy=policy)
    return records

  train = [r for p in train_files for r in load(p, bad_records)]
  return PairInputs(template, tokenizer, render, log, train,
                    load(eval_file, bad_eval_records))


NO_REFERENCE = "none (reference-free loss)"


def attach_ref_logps(graphdef: Any, ref_params: Any, chosen: dict,
                     rejected: dict, batch_size: int,
                     ref_fn: Callable[..., Any] | None = None) -> None:
  """Adds `ref_logp` (N,) to both sides, computed once with the frozen
  reference (the DPO paper's recipe: the reference never changes).
  ref_fn: a jitted `dpo.make_reference_fn(graphdef)` to reuse (a caller
  that attaches several times compiles it once)."""
  ref_fn = ref_fn or jax.jit(dpo_lib.make_reference_fn(graphdef))
  lc, lr = map_padded(lambda pair, _: ref_fn(ref_params, pair),
                      {"chosen": chosen, "rejected": rejected}, batch_size)
  chosen["ref_logp"] = lc.astype(np.float32)
  rejected["ref_logp"] = lr.astype(np.float32)


def load_prompt_records(prompt_file: str | None, eval_prompts: int,
                        template: Any, policy: str,
                        log: validation.SkipLog) -> list[dict[str, Any]]:
  """The instruction prompts of the policy evaluation ([] without
  prompt_file or eval_prompts), counted in `log`."""
  if not (prompt_file and eval_prompts):
    return []
  records, counts = prompts_lib.load_prompts(prompt_file, template,
                                             policy=policy)
  log.put(prompt_file, counts, kind="prompts", policy=policy)
  return records


def preference_evals(ctx: runner.Context, halves: dict[str, dict] | None,
                     batch_size: int, prompt_records: Sequence[dict],
                     eval_prompts: int, start_params: Callable[[], Any],
                     generation: instruct.GenerationSpec) -> engine.Evals:
  """A preference stage's evals: the held-out loss on the eval rows
  `halves` ({half name: rows (N, ...)}, cut to whole batches; None: no
  eval set) and, with prompt records, the policy evaluation on the first
  `eval_prompts` that carry a "reference": judge win rate against the
  starting model (`start_params()`, host params), KL to it, verbosity and
  refusal rate (eval/policy/...)."""
  n_eval = 0 if halves is None else (
      num_rows(halves) // batch_size) * batch_size

  def eval_batches():
    for s in range(0, n_eval, batch_size):
      yield {h: {k: v[s:s + batch_size] for k, v in rows.items()}
             for h, rows in halves.items()}

  sets = eval_batches if n_eval else None
  prompts = [r for r in prompt_records if "reference" in r][:eval_prompts]
  if not prompts:
    return engine.Evals(sets=sets)
  evaluator = policy_eval.PolicyEvaluator(
      ctx.trainer.graphdef, start_params(), ctx.tokenizer, ctx.template,
      prompts, generation)

  def policy(state, step):
    m = evaluator(sharding.fetch(ctx.model_params(state)))
    eval_samples.write_policy_answers(
        ctx.run.root, step, evaluator.records, evaluator.last_answers,
        evaluator.ref_answers)
    return {f"eval/policy/{k}": v for k, v in m.items()}

  return engine.Evals(sets=sets, evaluators=(policy,))
