"""The DPO family (DPO / cDPO / IPO / SimPO / RPO) from an SFT run; the
frozen reference is the SFT model, its log-probs precomputed once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import sharding
from lifejax.data import prompts as prompts_lib, validation
from lifejax.data.batching import example_pair_batch, map_padded
from lifejax.data.preference import PairBatches
from lifejax.eval import instruct, policy_eval, reward_eval
from lifejax.eval import samples as eval_samples
from lifejax.losses import dpo as dpo_lib, registry
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.run import artifacts
from lifejax.stages import pairs as pairs_lib, runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig


def attach_ref_logps(graphdef: Any, ref_params: Any, chosen: dict,
                     rejected: dict, batch_size: int) -> None:
  """Adds `ref_logp` (N,) to both sides, computed once with the frozen
  reference (the DPO paper's recipe: the reference never changes)."""
  ref_fn = jax.jit(dpo_lib.make_reference_fn(graphdef))
  lc, lr = map_padded(lambda pair, _: ref_fn(ref_params, pair),
                      {"chosen": chosen, "rejected": rejected}, batch_size)
  chosen["ref_logp"] = lc.astype(np.float32)
  rejected["ref_logp"] = lr.astype(np.float32)


@gin.configurable
def dpo(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    init_from: str = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_file: str = gin.REQUIRED,
    prompt_file: str | None = None,
    loss: str = "dpo",
    loss_hparams: dict | None = None,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 384,
    seed: int = 0,
    eval_prompts: int = 32,
    generation: instruct.GenerationSpec = instruct.GenerationSpec(),
    lora: LoraConfig | None = None,
    bad_records: str = validation.TRAIN_POLICY,
    bad_eval_records: str = validation.EVAL_POLICY,
) -> dict[str, Any]:
  """DPO / cDPO / IPO / SimPO from an SFT run; the reference is the SFT model.

  loss: a registered loss of kind "preference"; loss_hparams e.g.
  {"beta": 0.1} (keys the loss does not take are an error).
  Reference log-probs are precomputed once into the dataset. Evals: held-out
  implicit-reward accuracy and margins (eval/...), and on `prompt_file`
  instruction prompts: judge win rate vs the SFT model, KL to reference,
  verbosity and refusal rate (eval/policy/...). lora: train adapters.
  bad_records / bad_eval_records: the skip policy (data/validation.py) of
  train_files (default "skip": bad pairs, e.g. chosen == rejected, are
  dropped, counted in summary.json's input_records and logged) and of
  eval_file and prompt_file (default "strict": the first is an error).
  """
  make_loss = registry.get_loss(loss, kind="preference", option="dpo.loss")
  # The stage precomputes the reference log-probs: a ref_params hparam
  # would leave them unused.
  registry.check_hparams(make_loss, loss_hparams or {}, "dpo.loss_hparams",
                         reserved=("ref_params", "ref_graphdef"))
  pairs = pairs_lib.prepare("dpo", mesh, batch_size, init_from, train_files,
                            eval_file, seq_len, bad_records, bad_eval_records)
  if pairs is None:  # only checking (runner.checking_only)
    return {}
  template, tokenizer, render, inputs = (pairs.template, pairs.tokenizer,
                                         pairs.render, pairs.log)
  train_records, eval_records = pairs.train, pairs.eval
  prompt_records = []
  if prompt_file and eval_prompts:
    prompt_records, counts = prompts_lib.load_prompts(
        prompt_file, template, policy=bad_eval_records)
    inputs.put(prompt_file, counts, kind="prompts", policy=bad_eval_records)
  n_eval = (len(eval_records) // batch_size) * batch_size
  rows: dict[str, Any] = {}

  def data(ctx: runner.Context) -> PairBatches:
    _, ref = artifacts.load_params(init_from, transformer.Transformer, model,
                                   ctx.mesh, ctx.training.mesh.rules)
    rows["ref"] = jax.device_get(ref)
    for name, records in (("train", train_records), ("eval", eval_records)):
      c, r = reward_eval.pair_rows(records, render, seq_len)
      attach_ref_logps(ctx.trainer.graphdef, rows["ref"], c, r, batch_size)
      rows[name] = (c, r)
    return PairBatches(*rows["train"], batch_size, seed)

  def evals(ctx: runner.Context) -> engine.Evals:
    ec, er = rows["eval"]

    def eval_batches():
      for s in range(0, n_eval, batch_size):
        yield {"chosen": {k: v[s:s + batch_size] for k, v in ec.items()},
               "rejected": {k: v[s:s + batch_size] for k, v in er.items()}}

    if not (prompt_file and eval_prompts):
      return engine.Evals(sets=eval_batches if n_eval else None)
    prompts = [r for r in prompt_records if "reference" in r]
    evaluator = policy_eval.PolicyEvaluator(
        ctx.trainer.graphdef, rows["ref"], tokenizer, template,
        prompts[:eval_prompts], generation)

    def policy(state, step):
      m = evaluator(jax.device_get(ctx.model_params(state)))
      eval_samples.write_policy_answers(
          ctx.run.root, step, evaluator.records, evaluator.last_answers,
          evaluator.ref_answers)
      return {f"eval/policy/{k}": v for k, v in m.items()}

    return engine.Evals(sets=eval_batches if n_eval else None,
                        evaluators=(policy,))

  spec = runner.StageSpec(
      name=loss, model_kind="policy", model=model, loss=loss,
      loss_kind="preference", loss_kwargs=loss_hparams or {},
      example_batch=example_pair_batch(batch_size, seq_len,
                                       with_ref_logp=True),
      data=data, evals=evals, tokenizer=tokenizer, template=template,
      tokens_per_step=2 * batch_size * seq_len, init_from=init_from,
      reference=init_from,
      # Roles named as the stage's arguments: a card's rerun command binds
      # dpo.<role> from them.
      inputs={"train_files": train_files, "eval_file": [eval_file],
              "prompt_file": [prompt_file] if prompt_file else []},
      details={"train_pairs": len(train_records)},
      finish=lambda ctx, _: inputs.summary(loss))
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, lora=lora))
