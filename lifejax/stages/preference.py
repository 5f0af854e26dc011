"""Preference stages: the reward model and the DPO family.

Both start from an SFT run and read the world's preference pairs rendered
through the SFT run's saved chat template.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np
from flax import nnx

from lifejax import sharding
from lifejax.data import chat, pipeline, sft as sft_data
from lifejax.data import sources as sources_lib
from lifejax.eval import instruct, policy_eval, reward_eval
from lifejax.losses import dpo as dpo_lib, reward as reward_lib
from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig
from lifejax.stages.common import (
    JsonStateIterator, file_digest, finish_stage, tokenizer_of, write_json)
from lifejax.train import loop as loop_lib
from lifejax.train.checkpoint import CheckpointConfig, restore_params
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import build_trainer, example_lm_batch
from lifejax.data.sources import read_jsonl

PAIR_FIELDS = {"prompt": list, "chosen": str, "rejected": str}


def lm_params_from(run_dir: str, cfg: TransformerConfig, mesh: Any,
                   rules: sharding.Rules) -> Any:
  """An LM run's latest params, placed by the logical-axis rules."""
  _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  return restore_params(run_dir, nnx.to_pure_dict(abstract),
                        sharding.named(mesh, specs))


def _start(run_dir: str, stage: str, init_from: str):
  os.makedirs(run_dir, exist_ok=True)
  write_json(os.path.join(run_dir, "stage.json"), {"stage": stage})
  with open(os.path.join(run_dir, "config.gin"), "w") as f:
    f.write(gin.config_str())
  template = chat.load_template(init_from)
  chat.save_template(run_dir, template)
  return template, tokenizer_of(init_from)


def pair_example(batch_size: int, seq_len: int) -> dict:
  return {"chosen": example_lm_batch(batch_size, seq_len),
          "rejected": example_lm_batch(batch_size, seq_len)}


@gin.configurable
def reward(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    init_from: str = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_file: str = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: loop_lib.LoopConfig = loop_lib.LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 384,
    seed: int = 0,
) -> dict[str, Any]:
  """Trains a scalar reward head + backbone (from the SFT LM) with the
  Bradley-Terry loss; evaluates pairwise accuracy by flaw kind and
  calibration; writes reward_stats.json for PPO."""
  template, tokenizer = _start(run_dir, "reward", init_from)
  render = sft_data.ChatRender(template, tokenizer)
  jax_mesh = sharding.make_mesh(mesh)

  def initial_params(plan):
    lm = lm_params_from(init_from, model, jax_mesh, mesh.rules)

    def fresh():
      with nnx.use_eager_sharding(False):
        m = heads.RewardModel(model, nnx.Rngs(params=seed))
      return nnx.to_pure_dict(nnx.state(m, nnx.Param))

    with jax.set_mesh(jax_mesh):
      init = jax.jit(fresh, out_shardings=plan.state_shardings["params"])()
    return heads.scalar_params_from_lm(init, lm)

  trainer = build_trainer(
      run_dir=run_dir, model_cfg=model, model_cls=heads.RewardModel,
      make_loss=reward_lib.make_reward_loss_fn, optimizer_cfg=optimizer,
      mesh=jax_mesh, rules=mesh.rules,
      example_batch=pair_example(batch_size, seq_len),
      checkpoint_cfg=checkpoint, seed=seed, initial_params=initial_params)

  train_src = sources_lib.JsonlSource(list(train_files), fields=PAIR_FIELDS)
  eval_src = sources_lib.JsonlSource(eval_file, fields=PAIR_FIELDS)
  train_iter = JsonStateIterator(iter(pipeline.preference_dataset(
      train_src, tokenizer, seq_len=seq_len, batch_size=batch_size, seed=seed,
      render=render)))
  if trainer.restored_data_state is not None:
    train_iter.set_state(trainer.restored_data_state)

  def eval_batches():
    return iter(pipeline.preference_dataset(
        eval_src, tokenizer, seq_len=seq_len, batch_size=batch_size, seed=0,
        render=render, shuffle=False, num_epochs=1))

  records = read_jsonl(eval_file)
  chosen_rows, rejected_rows = reward_eval.pair_rows(records, render, seq_len)
  score_fn = reward_lib.make_score_fn(trainer.graphdef)
  last: dict[str, Any] = {}

  def pairwise(state, step):
    params = jax.device_get(state["params"])
    rc = reward_eval.score_rows(score_fn, params, chosen_rows, batch_size)
    rr = reward_eval.score_rows(score_fn, params, rejected_rows, batch_size)
    res = reward_eval.evaluate_pairs(records, rc, rr)
    last.update(res, r_chosen=rc, r_rejected=rr)
    out = {"eval/pair_accuracy": res["accuracy"], "eval/ece": res["ece"],
           "eval/mean_margin": res["mean_margin"]}
    out.update({f"eval/pair_accuracy/{k}": v
                for k, v in res["accuracy_by_flaw"].items()})
    return out

  write_json(os.path.join(run_dir, "lineage.json"), {
      "stage": "reward", "model_kind": "reward",
      "init_from": os.path.abspath(init_from),
      "model": dataclasses.asdict(model),
      "tokenizer": {"path": getattr(tokenizer, "model_path", init_from),
                    "vocab_size": tokenizer.vocab_size},
      "chat_template": template.to_dict(),
      "train_files": {os.path.abspath(p): file_digest(p) for p in train_files},
      "eval_file": {os.path.abspath(eval_file): file_digest(eval_file)},
  })
  summary = loop_lib.train_loop(
      run_dir=run_dir, state=trainer.state, train_step=trainer.train_step,
      train_iter=train_iter, batch_shardings=trainer.batch_shardings,
      checkpointer=trainer.checkpointer, cfg=loop,
      eval_step=trainer.eval_step, eval_batches=eval_batches,
      evaluators=(pairwise,), tokens_per_step=2 * batch_size * seq_len,
      restored_extra=trainer.restored_extra)
  if "r_chosen" in last:
    reward_eval.plot_rewards(last["r_chosen"], last["r_rejected"],
                             last["reliability"],
                             os.path.join(run_dir, "reward_eval.png"))
    write_json(os.path.join(run_dir, "reward_stats.json"),
               {"mean": last["reward_mean"], "std": last["reward_std"]})
    write_json(os.path.join(run_dir, "reward_eval.json"), {
        k: v for k, v in last.items() if k not in ("r_chosen", "r_rejected")})
  return finish_stage(run_dir, summary, trainer.checkpointer)


class PairBatches:
  """Shuffled fixed-size batches over precomputed pair rows (+ ref logps).

  Deterministic from (seed, epoch); the state is (epoch, position), so a
  resumed run continues with exactly the next batch.
  """

  def __init__(self, chosen: dict, rejected: dict, batch_size: int, seed: int):
    self.chosen, self.rejected = chosen, rejected
    self.n = next(iter(chosen.values())).shape[0]
    if self.n < batch_size:
      raise ValueError(f"{self.n} preference pairs < batch_size {batch_size}")
    self.batch_size, self.seed = batch_size, seed
    self.epoch, self.pos = 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.pos + self.batch_size > self.n:
      self.epoch, self.pos = self.epoch + 1, 0
    order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
    idx = order[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    return {"chosen": {k: v[idx] for k, v in self.chosen.items()},
            "rejected": {k: v[idx] for k, v in self.rejected.items()}}

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, s: dict) -> None:
    self.epoch, self.pos = int(s["epoch"]), int(s["pos"])


def attach_ref_logps(graphdef: Any, ref_params: Any, chosen: dict,
                     rejected: dict, batch_size: int) -> None:
  """Adds `ref_logp` (N,) to both sides, computed once with the frozen
  reference (the DPO paper's recipe: the reference never changes)."""
  ref_fn = jax.jit(dpo_lib.make_reference_fn(graphdef))
  n = next(iter(chosen.values())).shape[0]
  out_c, out_r = [], []
  for start in range(0, n, batch_size):
    sl = slice(start, start + batch_size)
    c = {k: v[sl] for k, v in chosen.items()}
    r = {k: v[sl] for k, v in rejected.items()}
    real = c["tokens"].shape[0]
    if real < batch_size:
      pad = lambda d: {k: np.concatenate(  # noqa: E731
          [v, np.repeat(v[:1], batch_size - real, 0)]) for k, v in d.items()}
      c, r = pad(c), pad(r)
    lc, lr = ref_fn(ref_params, {"chosen": c, "rejected": r})
    out_c.append(np.asarray(lc)[:real])
    out_r.append(np.asarray(lr)[:real])
  chosen["ref_logp"] = np.concatenate(out_c).astype(np.float32)
  rejected["ref_logp"] = np.concatenate(out_r).astype(np.float32)


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
    loop: loop_lib.LoopConfig = loop_lib.LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 384,
    seed: int = 0,
    eval_prompts: int = 32,
    generation: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """DPO / cDPO / IPO / SimPO from an SFT run; the reference is the SFT model.

  loss: a registered preference loss; loss_hparams e.g. {"beta": 0.1}.
  Reference log-probs are precomputed once into the dataset. Evals: held-out
  implicit-reward accuracy and margins (eval/...), and on `prompt_file`
  instruction prompts: judge win rate vs the SFT model, KL to reference,
  verbosity and refusal rate (eval/policy/...).
  """
  template, tokenizer = _start(run_dir, loss, init_from)
  render = sft_data.ChatRender(template, tokenizer)
  jax_mesh = sharding.make_mesh(mesh)
  trainer = build_trainer(
      run_dir=run_dir, model_cfg=model,
      make_loss=lambda g: dpo_lib.make_preference_loss_fn(
          loss, g, **(loss_hparams or {})),
      optimizer_cfg=optimizer, mesh=jax_mesh, rules=mesh.rules,
      example_batch=_with_ref(pair_example(batch_size, seq_len)),
      checkpoint_cfg=checkpoint, seed=seed,
      initial_params=lambda plan: lm_params_from(init_from, model, jax_mesh,
                                                 mesh.rules))
  ref_params = jax.device_get(
      lm_params_from(init_from, model, jax_mesh, mesh.rules))

  train_records = [r for p in train_files for r in read_jsonl(p)]
  eval_records = read_jsonl(eval_file)
  tc, tr = reward_eval.pair_rows(train_records, render, seq_len)
  ec, er = reward_eval.pair_rows(eval_records, render, seq_len)
  attach_ref_logps(trainer.graphdef, ref_params, tc, tr, batch_size)
  attach_ref_logps(trainer.graphdef, ref_params, ec, er, batch_size)
  train_iter = PairBatches(tc, tr, batch_size, seed)
  if trainer.restored_data_state is not None:
    train_iter.set_state(trainer.restored_data_state)
  n_eval = (len(eval_records) // batch_size) * batch_size

  def eval_batches():
    for s in range(0, n_eval, batch_size):
      yield {"chosen": {k: v[s:s + batch_size] for k, v in ec.items()},
             "rejected": {k: v[s:s + batch_size] for k, v in er.items()}}

  evaluators = []
  if prompt_file and eval_prompts:
    prompts = [r for r in read_jsonl(prompt_file) if "reference" in r]
    evaluator = policy_eval.PolicyEvaluator(
        trainer.graphdef, ref_params, tokenizer, template,
        prompts[:eval_prompts], generation)

    def policy(state, step):
      m = evaluator(jax.device_get(state["params"]))
      _save_answers(run_dir, step, evaluator)
      return {f"eval/policy/{k}": v for k, v in m.items()}

    evaluators.append(policy)

  write_json(os.path.join(run_dir, "lineage.json"), {
      "stage": loss, "model_kind": "policy",
      "init_from": os.path.abspath(init_from),
      "reference": os.path.abspath(init_from),
      "loss": loss, "loss_hparams": loss_hparams or {},
      "model": dataclasses.asdict(model),
      "tokenizer": {"path": getattr(tokenizer, "model_path", init_from),
                    "vocab_size": tokenizer.vocab_size},
      "chat_template": template.to_dict(),
      "train_files": {os.path.abspath(p): file_digest(p) for p in train_files},
      "eval_file": {os.path.abspath(eval_file): file_digest(eval_file)},
      "prompt_file": ({os.path.abspath(prompt_file): file_digest(prompt_file)}
                      if prompt_file else None),
      "train_pairs": len(train_records),
  })
  summary = loop_lib.train_loop(
      run_dir=run_dir, state=trainer.state, train_step=trainer.train_step,
      train_iter=train_iter, batch_shardings=trainer.batch_shardings,
      checkpointer=trainer.checkpointer, cfg=loop,
      eval_step=trainer.eval_step,
      eval_batches=eval_batches if n_eval else None, evaluators=evaluators,
      tokens_per_step=2 * batch_size * seq_len,
      restored_extra=trainer.restored_extra)
  return finish_stage(run_dir, summary, trainer.checkpointer)


def _with_ref(pair: dict) -> dict:
  b = pair["chosen"]["tokens"].shape[0]
  for side in ("chosen", "rejected"):
    pair[side] = {**pair[side], "ref_logp": np.zeros((b,), np.float32)}
  return pair


def _save_answers(run_dir: str, step: int,
                  evaluator: policy_eval.PolicyEvaluator) -> None:
  path = os.path.join(run_dir, "samples", f"step_{step:06d}.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for rec, ans, ref in zip(evaluator.records, evaluator.last_answers,
                             evaluator.ref_answers):
      f.write(json.dumps({"id": rec.get("id"), "task": rec.get("task"),
                          "response": ans, "reference_response": ref}) + "\n")

