"""The pretraining stage (and continued pretraining via `init_from`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import gin
import jax

from lifejax import sharding
from lifejax.data import pipeline, tokenizer as tok_lib
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model.config import TransformerConfig
from lifejax.train import loop as loop_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.state import LossScaleConfig
from lifejax.train.trainer import build_trainer, example_lm_batch
from lifejax.stages.common import (
    JsonStateIterator, file_digest, holdout_split, load_initial_params,
    finish_stage, source_from_path, texts, tokenizer_of, write_json)


@gin.configurable
def world_corpus_files(out_dir: str = "runs/world", seed: int = 0,
                       scale: float = 1.0,
                       corpus_sources: Sequence[str] = ("wiki", "support_chat",
                                                        "records")
                       ) -> list[str]:
  """Generates the embedded world once and returns its corpus files."""
  from lifejax.data import synthetic  # the world generator is optional here
  manifest = os.path.join(out_dir, "manifest.json")
  if not os.path.exists(manifest):
    synthetic.generate_world(out_dir, seed=seed, scale=scale)
  return [os.path.join(out_dir, "corpus", f"{s}.jsonl")
          for s in corpus_sources]


@gin.configurable
def pretrain(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_files: Sequence[str] = (),
    source_weights: Sequence[float] | None = None,
    text_field: str = "text",
    tokenizer_path: str | None = None,
    tokenizer_type: str = "unigram",
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: loop_lib.LoopConfig = loop_lib.LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 256,
    num_microbatches: int = 1,
    z_loss: float = 1e-4,
    loss_scale: LossScaleConfig | None = None,
    eval_holdout: float = 0.02,
    seed: int = 0,
    init_from: str | None = None,
    general_eval_files: Sequence[str] = (),
    forgetting_margin: float = 0.1,
    stage_name: str = "pretrain",
) -> dict[str, Any]:
  """Next-token pretraining, or continued pretraining with `init_from`.

  init_from: an earlier run directory or a HF Llama checkpoint directory;
  its params start the run (fresh optimizer) and its tokenizer is used.
  Otherwise a SentencePiece tokenizer is trained on the training files into
  the run directory unless `tokenizer_path` is given. Without `eval_files`, a
  deterministic `eval_holdout` share of the training documents is held out.
  general_eval_files: frozen general holdouts evaluated beside the run's own
    eval set at every eval (eval/general_<name>/perplexity): continued
    pretraining's forgetting panel, which warns when general perplexity rises
    by more than `forgetting_margin` while the domain loss falls.
  """
  os.makedirs(run_dir, exist_ok=True)
  write_json(os.path.join(run_dir, "stage.json"), {"stage": stage_name})
  with open(os.path.join(run_dir, "config.gin"), "w") as f:
    f.write(gin.config_str())

  train_srcs = [source_from_path(p, text_field) for p in train_files]
  eval_srcs = [source_from_path(p, text_field) for p in eval_files]
  if not eval_srcs:
    train_srcs, eval_srcs = holdout_split(train_srcs, text_field, eval_holdout)
    # Keep the held-out documents beside the run: later evaluations
    # (per-source perplexity) must use exactly these.
    held_dir = os.path.join(run_dir, "heldout")
    os.makedirs(held_dir, exist_ok=True)
    for src in eval_srcs:
      with open(os.path.join(held_dir, f"{src.name}.jsonl"), "w",
                encoding="utf-8") as f:
        for r in src:
          f.write(json.dumps({text_field: r[text_field]}) + "\n")

  if tokenizer_path is None and init_from is not None:
    tokenizer = tokenizer_of(init_from)
    tokenizer_path = getattr(tokenizer, "model_path", init_from)
  if tokenizer_path is None:
    tokenizer_path = os.path.join(run_dir, "tokenizer.model")
    if not os.path.exists(tokenizer_path):
      logging.info("training a %d-piece %s tokenizer", model.vocab_size,
                   tokenizer_type)
      tok_lib.train_sentencepiece(
          texts(train_srcs, text_field), tokenizer_path[:-len(".model")],
          vocab_size=model.vocab_size, model_type=tokenizer_type)
  tokenizer = (tokenizer_of(init_from) if init_from is not None
               else tok_lib.load_tokenizer(tokenizer_path))
  if tokenizer.vocab_size > model.vocab_size:
    raise ValueError(
        f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} pieces but "
        f"model.vocab_size={model.vocab_size}; raise the model's vocab_size")

  jax_mesh = sharding.make_mesh(mesh)
  trainer = build_trainer(
      run_dir=run_dir, model_cfg=model,
      make_loss=lambda g: make_lm_loss_fn(g, z_loss=z_loss),
      make_eval_loss=lambda g: make_lm_loss_fn(g, z_loss=0.0),
      optimizer_cfg=optimizer, mesh=jax_mesh, rules=mesh.rules,
      example_batch=example_lm_batch(batch_size, seq_len),
      checkpoint_cfg=checkpoint, seed=seed,
      num_microbatches=num_microbatches, loss_scale=loss_scale,
      initial_params=(load_initial_params(init_from, model)
                      if init_from else None))

  n_proc, idx = jax.process_count(), jax.process_index()
  train_ds = pipeline.lm_dataset(
      train_srcs, tokenizer, seq_len=seq_len, batch_size=batch_size // n_proc,
      seed=seed, weights=source_weights, text_field=text_field,
      shard_index=idx, shard_count=n_proc)
  train_iter = JsonStateIterator(iter(train_ds))
  if trainer.restored_data_state is not None:
    train_iter.set_state(trainer.restored_data_state)

  def eval_batches():
    return iter(pipeline.lm_eval_dataset(
        eval_srcs, tokenizer, seq_len=seq_len, batch_size=batch_size // n_proc,
        text_field=text_field, shard_index=idx, shard_count=n_proc))

  write_json(os.path.join(run_dir, "lineage.json"), {
      "stage": stage_name,
      "init_from": os.path.abspath(init_from) if init_from else None,
      "model": dataclasses.asdict(model),
      "tokenizer": {"path": os.path.abspath(tokenizer_path),
                    "sha256_16": (file_digest(tokenizer_path)
                                  if os.path.isfile(tokenizer_path) else None),
                    "vocab_size": tokenizer.vocab_size},
      "train_files": {os.path.abspath(p): file_digest(p)
                      for p in train_files},
      "eval_files": {os.path.abspath(p): file_digest(p) for p in eval_files},
      "general_eval_files": {os.path.abspath(p): file_digest(p)
                             for p in general_eval_files},
      "source_weights": list(source_weights) if source_weights else None,
      "num_params": model.num_params(),
  })
  eval_sets: Any = eval_batches
  hooks = ()
  if general_eval_files:
    from lifejax.stages.sft import ForgettingPanel  # pylint: disable=g-import-not-at-top
    eval_sets = {"": eval_batches}  # the run's own set keeps eval/loss
    for p in general_eval_files:
      src = source_from_path(p, text_field)
      eval_sets[f"general_{src.name}"] = (
          lambda s=src: iter(pipeline.lm_eval_dataset(
              [s], tokenizer, seq_len=seq_len,
              batch_size=batch_size // n_proc, text_field=text_field,
              shard_index=idx, shard_count=n_proc)))
    hooks = (ForgettingPanel(forgetting_margin),)
  summary = loop_lib.train_loop(
      run_dir=run_dir, state=trainer.state, train_step=trainer.train_step,
      train_iter=train_iter, batch_shardings=trainer.batch_shardings,
      checkpointer=trainer.checkpointer, cfg=loop,
      eval_step=trainer.eval_step, eval_batches=eval_sets, eval_hooks=hooks,
      tokens_per_step=batch_size * seq_len,
      restored_extra=trainer.restored_extra)
  if hooks:
    summary["forgetting_warnings"] = hooks[0].warnings
  return finish_stage(run_dir, summary, trainer.checkpointer)
