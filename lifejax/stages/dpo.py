"""The DPO family (DPO / cDPO / IPO / SimPO / ORPO / RPO) from an SFT run;
the frozen reference is the SFT model, its log-probs precomputed once. The
reference-free losses (SimPO, ORPO) load no reference and compute no
reference log-probs: the lineage records no reference and summary.json
says `"reference_logps": "none (reference-free loss)"`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin

from lifejax import sharding
from lifejax.data import validation
from lifejax.data.batching import example_pair_batch
from lifejax.data.preference import PairBatches
from lifejax.eval import instruct, reward_eval
from lifejax.losses import dpo as dpo_lib, registry
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.run import artifacts
from lifejax.stages import pairs as pairs_lib, runner
from lifejax.stages.pairs import (
    NO_REFERENCE, attach_ref_logps, load_prompt_records, preference_evals)
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

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
  """DPO / cDPO / IPO / SimPO / ORPO from an SFT run; the reference is the
  SFT model.

  loss: a registered loss of kind "preference"; loss_hparams e.g.
  {"beta": 0.1} (keys the loss does not take are an error).
  Reference log-probs are precomputed once into the dataset, except for a
  reference-free loss (SimPO, ORPO: `dpo.needs_reference`), which gets
  none and records so in the lineage and summary.json. Evals: held-out
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
  with_ref = dpo_lib.needs_reference(make_loss)
  pairs = pairs_lib.prepare("dpo", mesh, batch_size, init_from, train_files,
                            eval_file, seq_len, bad_records, bad_eval_records)
  if pairs is None:  # only checking (runner.checking_only)
    return {}
  template, tokenizer, render, inputs = (pairs.template, pairs.tokenizer,
                                         pairs.render, pairs.log)
  train_records, eval_records = pairs.train, pairs.eval
  prompt_records = load_prompt_records(prompt_file, eval_prompts, template,
                                       bad_eval_records, inputs)
  rows: dict[str, Any] = {}

  def start_params(ctx: runner.Context) -> Any:
    """The SFT params on the host, loaded once: the reference of the
    reference-based losses and the policy evaluation's baseline."""
    if "start" not in rows:
      _, params = artifacts.load_params(
          init_from, transformer.Transformer, model, ctx.mesh,
          ctx.training.mesh.rules)
      rows["start"] = sharding.fetch(params)
    return rows["start"]

  def data(ctx: runner.Context) -> PairBatches:
    for name, records in (("train", train_records), ("eval", eval_records)):
      c, r = reward_eval.pair_rows(records, render, seq_len)
      if with_ref:
        attach_ref_logps(ctx.trainer.graphdef, start_params(ctx), c, r,
                         batch_size)
      rows[name] = (c, r)
    return PairBatches(*rows["train"], batch_size, seed)

  def evals(ctx: runner.Context) -> engine.Evals:
    ec, er = rows["eval"]
    return preference_evals(ctx, {"chosen": ec, "rejected": er}, batch_size,
                            prompt_records, eval_prompts,
                            lambda: start_params(ctx), generation)

  def finish(ctx: runner.Context, _: Any) -> dict[str, Any]:
    del ctx
    out = inputs.summary(loss)
    if not with_ref:
      out["reference_logps"] = NO_REFERENCE
    return out

  spec = runner.StageSpec(
      name=loss, model_kind="policy", model=model, loss=loss,
      loss_kind="preference", loss_kwargs=loss_hparams or {},
      example_batch=example_pair_batch(batch_size, seq_len,
                                       with_ref_logp=with_ref),
      data=data, evals=evals, tokenizer=tokenizer, template=template,
      tokens_per_step=2 * batch_size * seq_len, init_from=init_from,
      reference=init_from if with_ref else None,
      # Roles named as the stage's arguments: a card's rerun command binds
      # dpo.<role> from them.
      inputs={"train_files": train_files, "eval_file": [eval_file],
              "prompt_file": [prompt_file] if prompt_file else []},
      details={"train_pairs": len(train_records),
               **({} if with_ref else {"reference": NO_REFERENCE})},
      finish=finish)
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, lora=lora))
