"""Supervised fine-tuning: chat template, assistant-only loss, general-data
mix against forgetting, optional LoRA, and a forgetting panel at every eval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax import checks, sharding
from lifejax.data import chat, chat_render, files, pipeline, sft as sft_data
from lifejax.data import file_sources, sources as sources_lib, validation
from lifejax.data.batching import example_lm_batch
from lifejax.data.mixture import MixedIterator
from lifejax.eval import generation as generation_lib, instruct
from lifejax.eval import samples as eval_samples
from lifejax.eval.forgetting import ForgettingPanel
from lifejax.losses import registry
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.run import artifacts
from lifejax.stages import runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig


@gin.configurable
def sft(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    init_from: str = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_files: Sequence[str] = (),
    general_files: Sequence[str] = (),
    general_eval_files: Sequence[str] = (),
    general_share: float = 0.0,
    template: str = "lifejax",
    train_on: str = "all_assistant",
    skip_bad: bool | None = None,
    bad_records: str | None = None,
    bad_eval_records: str = validation.EVAL_POLICY,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 256,
    num_microbatches: int = 1,
    seed: int = 0,
    eval_generation_records: int = 64,
    generation: instruct.GenerationSpec = instruct.GenerationSpec(),
    forgetting_margin: float | None = None,
    loss: str = "lm",
    lora: LoraConfig | None = None,
    stage_name: str = "sft",
) -> dict[str, Any]:
  """Fine-tunes `init_from` (params only, fresh optimizer) on conversations.

  train_files/eval_files: JSONL records with a "messages" list.
  general_files: plain-text records mixed in with probability
    `general_share` per step (retained pretraining text against forgetting).
  general_eval_files: the frozen general holdout of the forgetting panel
    (perplexity; it warns past `forgetting_margin`, default 0.1); eval_files
    also feed generation-based instruction accuracy judged by the world's
    judge.
  loss: a registered loss of kind "lm". lora: train low-rank adapters
    instead of every weight.
  bad_records / bad_eval_records: the skip policy (data/validation.py) of
    the training files (train_files, general_files; default "skip": bad
    records are dropped, counted in summary.json's input_records and
    logged) and of the eval sets (default "strict": the first bad record is
    an error). skip_bad: the older spelling of bad_records (True: "skip",
    False: "strict").
  """
  registry.get_loss(loss, kind="lm", option="sft.loss")  # fail early
  runner.preflight(stage_name, mesh, batch_size, num_microbatches,
                   pipeline_model=model)
  if mesh.stage > 1 and eval_generation_records:
    raise checks.ConfigError(
        f"{stage_name}: mesh.stage={mesh.stage} with "
        f"eval_generation_records={eval_generation_records}: generation "
        "(KV-cache sampling) has no pipelined path; set "
        "sft.eval_generation_records=0 or mesh.stage=1")
  policy = validation.training_policy("sft", bad_records, skip_bad)
  validation.check_policy("sft.bad_eval_records", bad_eval_records)
  checks.in_range("sft.general_share", general_share, 0.0, 1.0)
  if general_share > 0 and not general_files:
    raise ValueError(f"sft.general_share={general_share} needs "
                     "sft.general_files")
  checks.choice("sft.train_on", train_on, chat_render.TRAIN_ON)
  if forgetting_margin is not None and not general_eval_files:
    raise checks.unused("sft.forgetting_margin",
                        "the forgetting panel needs general_eval_files")
  tmpl = chat.get_template(template)
  if runner.only_checking():
    return {}
  tokenizer = artifacts.load_tokenizer(init_from)
  inputs = validation.SkipLog()

  def load(paths: Sequence[str], pol: str) -> dict[str, list[dict]]:
    out = {}
    for p in paths:
      out[p], counts = sft_data.load_conversations(
          p, tmpl, policy=pol, tokenizer=tokenizer, seq_len=seq_len,
          train_on=train_on)
      inputs.put(p, counts, kind="conversations", policy=pol)
    return out

  train_records = load(train_files, policy)
  eval_records = load(eval_files, bad_eval_records)

  def conv_source(paths: Sequence[str], loaded: dict[str, list[dict]]
                  ) -> sources_lib.Source:
    return sources_lib.InMemorySource(
        [r for p in paths for r in loaded[p]],
        name=file_sources.stem(paths[0]), fields={"messages": list})

  def conversations(ctx: runner.Context, src: Any, **kw: Any) -> Any:
    return sft_data.sft_dataset(
        src, tokenizer, tmpl, seq_len=seq_len, train_on=train_on,
        batch_size=ctx.local_batch(batch_size), **ctx.shard, **kw)

  def data(ctx: runner.Context) -> MixedIterator:
    # Loaded records are valid; skip_bad drops the too_long ones (counted
    # by load_conversations under either policy).
    main = pipeline.JsonStateIterator(iter(conversations(
        ctx, conv_source(train_files, train_records), seed=seed,
        skip_bad=True)))
    general = None
    if general_files:
      general = pipeline.JsonStateIterator(iter(pipeline.lm_dataset(
          [inputs.watch(files.source_from_path(p, policy=policy),
                        kind="documents", policy=policy)
           for p in general_files], tokenizer,
          seq_len=seq_len, batch_size=ctx.local_batch(batch_size),
          seed=seed + 1, **ctx.shard)))
    return MixedIterator(main, general, general_share, seed)

  records = [r for p in eval_files for r in eval_records[p]
             if "reference" in r][:eval_generation_records]
  panel = ForgettingPanel(0.1 if forgetting_margin is None
                          else forgetting_margin)

  def evals(ctx: runner.Context) -> engine.Evals:
    sets = {}
    for p in eval_files:
      src = conv_source([p], eval_records)
      sets[f"sft_{src.name}"] = (
          lambda s=src: iter(conversations(ctx, s, seed=0, shuffle=False,
                                           num_epochs=1, skip_bad=True,
                                           drop_remainder=False)))
    for p in general_eval_files:
      src = inputs.watch(files.source_from_path(p, policy=bad_eval_records),
                         kind="documents", policy=bad_eval_records)
      sets[f"general_{src.name}"] = (
          lambda s=src: iter(pipeline.lm_eval_dataset(
              s, tokenizer, seq_len=seq_len,
              batch_size=ctx.local_batch(batch_size), **ctx.shard)))
    gen_cfg = generation_lib.chat_config(tmpl, tokenizer,
                                         generation.max_new_tokens)

    def instruction_eval(state, step):
      responses = generation_lib.generate_responses(
          generation_lib.make_generate(
              ctx.trainer.graphdef, sharding.fetch(ctx.model_params(state)),
              gen_cfg, devices=generation.devices), tokenizer, tmpl, records, generation)
      eval_samples.write_samples(ctx.run.root, step, records, responses)
      return {f"eval/instruct/{k}": v
              for k, v in instruct.judge_responses(records, responses).items()}

    return engine.Evals(sets=sets or None,
                        evaluators=(instruction_eval,) if records else (),
                        hooks=(panel,))

  def finish(ctx: runner.Context, _) -> dict[str, Any]:
    out: dict[str, Any] = {"forgetting_warnings": panel.warnings,
                           **inputs.summary(stage_name)}
    side = (eval_samples.write_side_by_side(ctx.run.root, records)
            if records else None)
    if side:
      out["side_by_side"] = os.path.relpath(side, ctx.run.root)
    return out

  spec = runner.StageSpec(
      name=stage_name, model_kind="lm", model=model, loss=loss,
      loss_kind="lm", example_batch=example_lm_batch(batch_size, seq_len),
      # Eval loss = cross-entropy, so perplexity = exp(loss).
      eval_loss_kwargs={"moe_losses": False} if model.num_experts else None,
      data=data, evals=evals, tokenizer=tokenizer, template=tmpl,
      tokens_per_step=batch_size * seq_len, init_from=init_from,
      inputs={"train_files": train_files, "eval_files": eval_files,
              "general_files": general_files,
              "general_eval_files": general_eval_files},
      details={"general_share": general_share}, finish=finish)
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, num_microbatches=num_microbatches, lora=lora))
