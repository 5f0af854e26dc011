"""KTO from an SFT run, on unpaired completions labelled desirable or
undesirable (`data.unpaired`), or on preference pairs split into one
desirable and one undesirable completion each (`from_pairs`).

A stage of its own (gin name `kto`) rather than `dpo(loss="kto")`: its
records, rows (each completion with a mismatched row for the KL estimate)
and loss kind ("unpaired") all differ from the pair stage's, so a shared
entry point would branch on the loss. What the two do share is shared code:
the SFT run's template and tokenizer and the checked, counted inputs
(`pairs.prepare_unpaired`), the reference log-probs computed once with the
frozen SFT model, the batches (`PairBatches`) and the evals
(`pairs.preference_evals`: held-out loss, policy win rate against SFT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import sharding
from lifejax.data import unpaired, validation
from lifejax.data.batching import example_lm_batch, map_padded
from lifejax.data.preference import PairBatches
from lifejax.eval import instruct
from lifejax.losses import kto as kto_lib, registry
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.run import artifacts
from lifejax.stages import pairs as pairs_lib, runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig


def example_unpaired_batch(batch_size: int, seq_len: int
                           ) -> dict[str, dict[str, np.ndarray]]:
  """A zero KTO batch: {"completion": LM batch + (B,) f32 ref_logp and
  desirable, "kl": LM batch + (B,) f32 ref_logp}."""
  z = np.zeros((batch_size,), np.float32)
  return {"completion": {**example_lm_batch(batch_size, seq_len),
                         "ref_logp": z, "desirable": z},
          "kl": {**example_lm_batch(batch_size, seq_len), "ref_logp": z}}


def kto_rows(records: Sequence[dict[str, Any]], render: Any, seq_len: int,
             seed: int, ref_fn: Any, ref_params: Any, batch_size: int
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The completion and mismatched rows of `records` with their reference
  log-probs ("ref_logp", computed once in batches of batch_size)."""
  completion, kl = unpaired.unpaired_rows(records, render, seq_len, seed)
  lc, lk = map_padded(lambda b, _: ref_fn(ref_params, b),
                      {"completion": completion, "kl": kl}, batch_size)
  completion["ref_logp"] = lc.astype(np.float32)
  kl["ref_logp"] = lk.astype(np.float32)
  return completion, kl


@gin.configurable
def kto(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    init_from: str = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_file: str = gin.REQUIRED,
    prompt_file: str | None = None,
    from_pairs: bool = False,
    loss: str = "kto",
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
  """KTO from an SFT run; the frozen reference is the SFT model.

  train_files / eval_file: unpaired records ({"prompt" or "messages",
  "completion", "label": true/false} per line), or with `from_pairs`
  preference-pair files (each pair: its chosen answer desirable, its
  rejected one undesirable). loss: a registered loss of kind "unpaired";
  loss_hparams e.g. {"beta": 0.1, "desirable_weight": 1.0,
  "undesirable_weight": 1.0}. Reference log-probs of every completion and
  of its mismatched row are precomputed once. Evals: the held-out KTO loss
  and reward margin (eval/...), and on `prompt_file` the policy evaluation
  against the SFT model (eval/policy/...). bad_records / bad_eval_records:
  the skip policies (data/validation.py) of the train and eval files.
  """
  make_loss = registry.get_loss(loss, kind="unpaired", option="kto.loss")
  registry.check_hparams(make_loss, loss_hparams or {}, "kto.loss_hparams",
                         reserved=("ref_params", "ref_graphdef"))
  inputs = pairs_lib.prepare_unpaired(
      "kto", mesh, batch_size, init_from, train_files, eval_file, seq_len,
      bad_records, bad_eval_records, from_pairs)
  if inputs is None:  # only checking (runner.checking_only)
    return {}
  train_records, eval_records = inputs.train, inputs.eval
  prompt_records = pairs_lib.load_prompt_records(
      prompt_file, eval_prompts, inputs.template, bad_eval_records,
      inputs.log)
  rows: dict[str, Any] = {}

  def start_params(ctx: runner.Context) -> Any:
    if "start" not in rows:
      _, params = artifacts.load_params(
          init_from, transformer.Transformer, model, ctx.mesh,
          ctx.training.mesh.rules)
      rows["start"] = sharding.fetch(params)
    return rows["start"]

  def data(ctx: runner.Context) -> PairBatches:
    ref_fn = jax.jit(kto_lib.make_reference_fn(ctx.trainer.graphdef))
    for name, records in (("train", train_records), ("eval", eval_records)):
      rows[name] = kto_rows(records, inputs.render, seq_len, seed, ref_fn,
                            start_params(ctx), batch_size)
    return PairBatches(*rows["train"], batch_size, seed,
                       names=kto_lib.HALVES)

  def evals(ctx: runner.Context) -> engine.Evals:
    return pairs_lib.preference_evals(
        ctx, dict(zip(kto_lib.HALVES, rows["eval"])), batch_size,
        prompt_records, eval_prompts, lambda: start_params(ctx), generation)

  n_desirable = sum(bool(r["label"]) for r in train_records)
  spec = runner.StageSpec(
      name=loss, model_kind="policy", model=model, loss=loss,
      loss_kind="unpaired", loss_kwargs=loss_hparams or {},
      example_batch=example_unpaired_batch(batch_size, seq_len),
      data=data, evals=evals, tokenizer=inputs.tokenizer,
      template=inputs.template, tokens_per_step=2 * batch_size * seq_len,
      init_from=init_from, reference=init_from,
      inputs={"train_files": train_files, "eval_file": [eval_file],
              "prompt_file": [prompt_file] if prompt_file else []},
      details={"from_pairs": from_pairs,
               "train_desirable": n_desirable,
               "train_undesirable": len(train_records) - n_desirable},
      finish=lambda ctx, _: inputs.log.summary(loss))
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, lora=lora))
