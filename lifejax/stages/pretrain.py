"""The pretraining stage (and continued pretraining via `init_from`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax import checks, sharding
from lifejax.data import files, pipeline, tokenizer as tok_lib, validation
from lifejax.data.batching import example_lm_batch
from lifejax.data.jsonl import write_jsonl
from lifejax.eval.forgetting import ForgettingPanel
from lifejax.losses import registry
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.stages import runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.state import LossScaleConfig


@gin.configurable
def world_corpus_files(out_dir: str = "runs/world", seed: int = 0,
                       scale: float = 1.0,
                       corpus_sources: Sequence[str] = ("wiki", "support_chat",
                                                        "records")
                       ) -> list[str]:
  """Generates the embedded world once and returns its corpus files."""
  from lifejax.world import generator  # the world is optional here
  if not os.path.exists(os.path.join(out_dir, "manifest.json")):
    generator.generate_world(out_dir, seed=seed, scale=scale)
  return [os.path.join(out_dir, "corpus", f"{s}.jsonl")
          for s in corpus_sources]


def _tokenizer(run: Any, init_from: str | None, tokenizer_path: str | None,
               tokenizer_type: str, vocab_size: int, train_srcs: list,
               text_field: str) -> Any:
  """init_from's tokenizer, the one at tokenizer_path, or one trained on
  the training documents into the run directory (once)."""
  if init_from is not None:
    return artifacts.load_tokenizer(init_from)
  if tokenizer_path is None:
    tokenizer_path = run.tokenizer_model
    # One process trains it; the others load it once it is written.
    if sharding.is_main_process() and not os.path.exists(tokenizer_path):
      logging.info("training a %d-piece %s tokenizer", vocab_size,
                   tokenizer_type)
      tok_lib.train_sentencepiece(
          files.texts(train_srcs, text_field),
          tokenizer_path[:-len(".model")], vocab_size=vocab_size,
          model_type=tokenizer_type)
    sharding.sync(f"lifejax tokenizer trained: {tokenizer_path}")
  return tok_lib.load_tokenizer(tokenizer_path)


@gin.configurable
def pretrain(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_files: Sequence[str] = (),
    source_weights: Sequence[float] | None = None,
    text_field: str = "text",
    tokenizer_path: str | None = None,
    tokenizer_type: str | None = None,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 256,
    num_microbatches: int = 1,
    loss: str = "lm",
    z_loss: float = 1e-4,
    loss_scale: LossScaleConfig | None = None,
    eval_holdout: float | None = None,
    seed: int = 0,
    init_from: str | None = None,
    general_eval_files: Sequence[str] = (),
    forgetting_margin: float | None = None,
    bad_records: str = validation.TRAIN_POLICY,
    bad_eval_records: str = validation.EVAL_POLICY,
    stage_name: str = "pretrain",
) -> dict[str, Any]:
  """Next-token pretraining, or continued pretraining with `init_from`.

  init_from: an earlier run directory or a HF Llama checkpoint directory;
  its params start the run (fresh optimizer) and its tokenizer is used.
  Otherwise a SentencePiece tokenizer (`tokenizer_type`, default "unigram")
  is trained on the training files into the run directory unless
  `tokenizer_path` is given. Without `eval_files`, a deterministic
  `eval_holdout` share (default 0.02) of the training documents is held out
  and kept in the run's heldout/ directory.
  loss: a registered loss of kind "lm", built with `z_loss` (0 for evals).
  general_eval_files: frozen general holdouts evaluated beside the run's own
    eval set at every eval (eval/general_<name>/perplexity): continued
    pretraining's forgetting panel, which warns when general perplexity rises
    by more than `forgetting_margin` (default 0.1) while the domain loss falls.
  bad_records / bad_eval_records: the skip policy (data/validation.py) of
    train_files (default "skip": bad records are dropped, counted in
    summary.json's input_records and logged) and of eval_files and
    general_eval_files (default "strict": the first one is an error).
  An option that cannot take effect with the others is an error.
  """
  registry.get_loss(loss, kind="lm", option="pretrain.loss")  # fail early
  runner.preflight(stage_name, mesh, batch_size, num_microbatches,
                   pipeline_model=model)
  if init_from is not None and tokenizer_path is not None:
    raise checks.unused("pretrain.tokenizer_path",
                        "with init_from, init_from's tokenizer is used")
  if tokenizer_type is not None and (init_from is not None
                                     or tokenizer_path is not None):
    raise checks.unused("pretrain.tokenizer_type",
                        "a tokenizer is trained only without tokenizer_path "
                        "and init_from")
  if eval_holdout is not None and eval_files:
    raise checks.unused("pretrain.eval_holdout",
                        "eval_files are given, so nothing is held out")
  if forgetting_margin is not None and not general_eval_files:
    raise checks.unused("pretrain.forgetting_margin",
                        "the forgetting panel needs general_eval_files")
  tokenizer_type = "unigram" if tokenizer_type is None else tokenizer_type
  checks.choice("pretrain.tokenizer_type", tokenizer_type, ("unigram", "bpe"))
  validation.check_policy("pretrain.bad_records", bad_records)
  validation.check_policy("pretrain.bad_eval_records", bad_eval_records)
  if runner.only_checking():
    return {}
  run = runner.start_run(run_dir, stage_name)

  inputs = validation.SkipLog()

  def source(path: str, policy: str) -> Any:
    return inputs.watch(files.source_from_path(path, text_field,
                                               policy=policy),
                        kind="documents", policy=policy)

  train_srcs = [source(p, bad_records) for p in train_files]
  eval_srcs = [source(p, bad_eval_records) for p in eval_files]
  if not eval_srcs:
    train_srcs, eval_srcs = files.holdout_split(
        train_srcs, text_field, 0.02 if eval_holdout is None else eval_holdout)
    # Later evaluations (per-source perplexity) must use exactly these.
    for src in eval_srcs if sharding.is_main_process() else ():
      write_jsonl(run.heldout_file(src.name),
                  ({text_field: r[text_field]} for r in src))
  tokenizer = _tokenizer(run, init_from, tokenizer_path, tokenizer_type,
                         model.vocab_size, train_srcs, text_field)

  def lm_eval(ctx: runner.Context, srcs: list) -> Any:
    return lambda: iter(pipeline.lm_eval_dataset(
        srcs, tokenizer, seq_len=seq_len, batch_size=ctx.local_batch(
            batch_size), text_field=text_field, **ctx.shard))

  def data(ctx: runner.Context) -> Any:
    return pipeline.JsonStateIterator(iter(pipeline.lm_dataset(
        train_srcs, tokenizer, seq_len=seq_len,
        batch_size=ctx.local_batch(batch_size), seed=seed,
        weights=source_weights, text_field=text_field, **ctx.shard)))

  panel = ForgettingPanel(0.1 if forgetting_margin is None
                          else forgetting_margin)

  def evals(ctx: runner.Context) -> engine.Evals:
    if not general_eval_files:
      return engine.Evals(sets=lm_eval(ctx, eval_srcs))
    sets = {"": lm_eval(ctx, eval_srcs)}  # the run's own set keeps eval/loss
    for p in general_eval_files:
      src = source(p, bad_eval_records)
      sets[f"general_{src.name}"] = lm_eval(ctx, [src])
    return engine.Evals(sets=sets, hooks=(panel,))

  def finish() -> dict[str, Any]:
    out = inputs.summary(stage_name)
    if general_eval_files:
      out["forgetting_warnings"] = panel.warnings
    return out

  spec = runner.StageSpec(
      name=stage_name, model_kind="lm", model=model, loss=loss,
      loss_kind="lm", loss_kwargs={"z_loss": z_loss},
      # Eval loss = cross-entropy, so perplexity = exp(loss).
      eval_loss_kwargs={"z_loss": 0.0, **(
          {"moe_losses": False} if model.num_experts else {})},
      example_batch=example_lm_batch(batch_size, seq_len), data=data,
      evals=evals, tokenizer=tokenizer,
      tokens_per_step=batch_size * seq_len, init_from=init_from,
      inputs={"train_files": train_files, "eval_files": eval_files,
              "general_eval_files": general_eval_files},
      details={"source_weights": (list(source_weights) if source_weights
                                  else None),
               "num_params": model.num_params()},
      finish=lambda ctx, _: finish())
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, num_microbatches=num_microbatches, loss_scale=loss_scale))
