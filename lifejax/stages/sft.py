"""Supervised fine-tuning: chat template, assistant-only loss, general-data
mix against forgetting, optional LoRA, and a forgetting panel at every eval.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import sharding
from lifejax.data import chat, judge, pipeline, sft as sft_data
from lifejax.data import sources as sources_lib
from lifejax.eval import instruct
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import sampling
from lifejax.model.config import TransformerConfig
from lifejax.stages.common import (
    JsonStateIterator, file_digest, finish_stage, load_initial_params,
    source_from_path, tokenizer_of, write_json)
from lifejax.train import loop as loop_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import build_trainer, example_lm_batch
from lifejax.data.sources import read_jsonl as _read_jsonl


class MixedIterator:
  """Each step draws the general-data batch with probability `share`.

  The choice is a pure function of (seed, step), and both sub-iterators'
  states are saved, so a resumed run sees exactly the same batches.
  """

  def __init__(self, main: Any, general: Any | None, share: float, seed: int):
    if general is None and share > 0:
      raise ValueError("general_share > 0 needs general_files")
    self.main, self.general, self.share, self.seed = main, general, share, seed
    self.step = 0

  def __iter__(self):
    return self

  def __next__(self):
    u = np.random.default_rng([self.seed, self.step]).random()
    self.step += 1
    if self.general is not None and u < self.share:
      return next(self.general)
    return next(self.main)

  def get_state(self) -> dict:
    state = {"step": self.step, "main": self.main.get_state()}
    if self.general is not None:
      state["general"] = self.general.get_state()
    return state

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])
    self.main.set_state(state["main"])
    if self.general is not None:
      self.general.set_state(state["general"])


def make_generate(graphdef, cfg: sampling.SamplingConfig):
  """generate(params) -> fn(prompt_ids, mask) with the model's sampler."""
  def for_params(params):
    def gen(ids, mask):
      return sampling.generate(graphdef, params, ids, mask, cfg)
    return gen
  return for_params


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
    skip_bad: bool = False,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: loop_lib.LoopConfig = loop_lib.LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 256,
    num_microbatches: int = 1,
    seed: int = 0,
    eval_generation_records: int = 64,
    generation: instruct.GenerationSpec = instruct.GenerationSpec(),
    forgetting_margin: float = 0.1,
    stage_name: str = "sft",
) -> dict[str, Any]:
  """Fine-tunes `init_from` (params only, fresh optimizer) on conversations.

  train_files/eval_files: JSONL records with a "messages" list.
  general_files: plain-text records mixed in with probability
    `general_share` per step (retained pretraining text against forgetting).
  general_eval_files: the frozen general holdout of the forgetting panel
    (perplexity); eval_files also feed generation-based instruction accuracy
    judged by the world's judge.
  """
  os.makedirs(run_dir, exist_ok=True)
  write_json(os.path.join(run_dir, "stage.json"), {"stage": stage_name})
  with open(os.path.join(run_dir, "config.gin"), "w") as f:
    f.write(gin.config_str())
  tmpl = chat.get_template(template)
  chat.save_template(run_dir, tmpl)
  tokenizer = tokenizer_of(init_from)
  if tokenizer.vocab_size > model.vocab_size:
    raise ValueError(f"tokenizer of {init_from} has {tokenizer.vocab_size} "
                     f"pieces but model.vocab_size={model.vocab_size}")

  jax_mesh = sharding.make_mesh(mesh)
  trainer = build_trainer(
      run_dir=run_dir, model_cfg=model, make_loss=make_lm_loss_fn,
      optimizer_cfg=optimizer, mesh=jax_mesh, rules=mesh.rules,
      example_batch=example_lm_batch(batch_size, seq_len),
      checkpoint_cfg=checkpoint, seed=seed, num_microbatches=num_microbatches,
      initial_params=load_initial_params(init_from, model))

  def conv_source(path: str) -> sources_lib.Source:
    return sources_lib.JsonlSource(path, fields={"messages": list})

  train_src = [conv_source(p) for p in train_files]
  main_it = JsonStateIterator(iter(sft_data.sft_dataset(
      train_src[0] if len(train_src) == 1 else train_src, tokenizer, tmpl,
      seq_len=seq_len, batch_size=batch_size, seed=seed, skip_bad=skip_bad,
      train_on=train_on)))
  general_it = None
  if general_files:
    general_it = JsonStateIterator(iter(pipeline.lm_dataset(
        [source_from_path(p) for p in general_files], tokenizer,
        seq_len=seq_len, batch_size=batch_size, seed=seed + 1)))
  train_iter = MixedIterator(main_it, general_it, general_share, seed)
  if trainer.restored_data_state is not None:
    train_iter.set_state(trainer.restored_data_state)

  eval_sets = {}
  for p in eval_files:
    src = conv_source(p)
    eval_sets[f"sft_{src.name}"] = (
        lambda s=src: iter(sft_data.sft_dataset(
            s, tokenizer, tmpl, seq_len=seq_len, batch_size=batch_size,
            seed=0, shuffle=False, num_epochs=1, skip_bad=True,
            train_on=train_on)))
  for p in general_eval_files:
    src = source_from_path(p)
    eval_sets[f"general_{src.name}"] = (
        lambda s=src: iter(pipeline.lm_eval_dataset(
            s, tokenizer, seq_len=seq_len, batch_size=batch_size)))

  evaluators = []
  if eval_files and eval_generation_records:
    records = []
    for p in eval_files:
      records += [r for r in _read_jsonl(p) if "reference" in r]
    records = records[:eval_generation_records]
    gen_cfg = sampling.SamplingConfig(
        max_new_tokens=generation.max_new_tokens,
        stop_ids=tuple(chat.stop_ids(tmpl, tokenizer)),
        pad_id=tokenizer.pad_id, vocab_limit=tokenizer.vocab_size)
    generate_for = make_generate(trainer.graphdef, gen_cfg)

    def instruction_eval(state, step):
      params = jax.device_get(state["params"])
      responses = instruct.generate_responses(
          generate_for(params), tokenizer, tmpl, records, generation)
      m = instruct.judge_responses(records, responses)
      _write_samples(run_dir, step, records, responses)
      return {f"eval/instruct/{k}": v for k, v in m.items()}

    evaluators.append(instruction_eval)
  panel = ForgettingPanel(forgetting_margin)

  write_json(os.path.join(run_dir, "lineage.json"), {
      "stage": stage_name,
      "init_from": os.path.abspath(init_from),
      "model": dataclasses.asdict(model),
      "tokenizer": {"path": getattr(tokenizer, "model_path", init_from),
                    "vocab_size": tokenizer.vocab_size},
      "chat_template": tmpl.to_dict(),
      "train_files": {os.path.abspath(p): file_digest(p) for p in train_files},
      "eval_files": {os.path.abspath(p): file_digest(p) for p in eval_files},
      "general_files": {os.path.abspath(p): file_digest(p)
                        for p in general_files},
      "general_eval_files": {os.path.abspath(p): file_digest(p)
                             for p in general_eval_files},
      "general_share": general_share,
  })
  summary = loop_lib.train_loop(
      run_dir=run_dir, state=trainer.state, train_step=trainer.train_step,
      train_iter=train_iter, batch_shardings=trainer.batch_shardings,
      checkpointer=trainer.checkpointer, cfg=loop,
      eval_step=trainer.eval_step, eval_batches=eval_sets or None,
      evaluators=evaluators, eval_hooks=(panel,),
      tokens_per_step=batch_size * seq_len,
      restored_extra=trainer.restored_extra)
  summary["forgetting_warnings"] = panel.warnings
  if evaluators:
    side = write_side_by_side(run_dir, records)
    if side:
      summary["side_by_side"] = os.path.relpath(side, run_dir)
  return finish_stage(run_dir, summary, trainer.checkpointer)


class ForgettingPanel:
  """Tracks task quality against general quality across evals.

  Warns (and records `eval/forgetting_warning` = 1) when general perplexity
  has risen by more than `margin` (relative) since the first eval while the
  task metric improved.
  """

  def __init__(self, margin: float):
    self.margin = margin
    self.first: dict[str, float] | None = None
    self.warnings: list[str] = []
    self.latest: dict[str, float] = {}

  def observe(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    general = [v for k, v in metrics.items()
               if k.startswith("eval/general_") and k.endswith("/perplexity")]
    task = metrics.get("eval/instruct/accuracy", None)
    if task is None:
      task_losses = [v for k, v in metrics.items()
                     if k.startswith("eval/sft_") and k.endswith("/loss")]
      task = -float(np.mean(task_losses)) if task_losses else None
    if task is None and "eval/loss" in metrics:  # continued pretraining
      task = -float(metrics["eval/loss"])
    if not general or task is None:
      return {}
    cur = {"general_ppl": float(np.mean(general)), "task": float(task)}
    if self.first is None:
      self.first = cur
      return {"eval/forgetting_warning": 0.0}
    rise = cur["general_ppl"] / self.first["general_ppl"] - 1.0
    warn = rise > self.margin and cur["task"] > self.first["task"]
    if warn:
      msg = (f"step {step}: general perplexity rose {rise:.1%} (> "
             f"{self.margin:.0%}) while the task metric improved "
             f"{self.first['task']:.3f} -> {cur['task']:.3f}: forgetting")
      logging.warning(msg)
      self.warnings.append(msg)
    return {"eval/forgetting_warning": float(warn),
            "eval/general_ppl_rise": rise}

  def __call__(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    return self.observe(step, metrics)


def write_side_by_side(run_dir: str, records: Sequence[dict]) -> str | None:
  """side_by_side.md: the model SFT started from (the step-0 eval samples)
  next to the final SFT model, on the same prompts, each scored by the
  world's judge. Returns its path, or None without step-0 and later samples.
  """
  d = os.path.join(run_dir, "samples")
  steps = sorted(int(f[len("step_"):-len(".jsonl")]) for f in (
      os.listdir(d) if os.path.isdir(d) else ())
                 if f.startswith("step_") and f.endswith(".jsonl"))
  if len(steps) < 2 or steps[0] != 0:
    return None

  def load(step):
    path = os.path.join(d, f"step_{step:06d}.jsonl")
    return {r["id"]: r for r in _read_jsonl(path)}

  base, last = load(0), load(steps[-1])
  by_id = {r.get("id"): r for r in records}
  lines = ["# Base vs SFT on the same prompts", "",
           f"Base: the model SFT started from (step 0). SFT: step "
           f"{steps[-1]}. Greedy generations; judge = the world's judge "
           "(0-1, correctness, format, politeness, length, safety).", ""]

  def quote(text: str) -> list[str]:
    rows = (text or "(empty)").split("\n")
    return [f"> {ln}" if ln else ">" for ln in rows]

  for rid, b in base.items():
    if rid not in last:
      continue
    rec = by_id.get(rid)
    prompt = b["prompt"][-1]["content"] if b.get("prompt") else ""
    lines += [f"## {rid} ({b.get('task')})", "", "Prompt (last user turn):",
              ""] + quote(prompt) + [""]
    for name, r in (("Base", b), ("SFT", last[rid])):
      tag = ""
      if rec is not None:
        tag = f" (judge {judge.score(rec, r['response']).total:.2f})"
      lines += [f"**{name}**{tag}:", ""] + quote(r["response"]) + [""]
  path = os.path.join(run_dir, "side_by_side.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def _write_samples(run_dir: str, step: int, records, responses) -> None:
  import json
  path = os.path.join(run_dir, "samples", f"step_{step:06d}.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r, resp in zip(records, responses):
      f.write(json.dumps({"id": r.get("id"), "task": r.get("task"),
                          "prompt": instruct.prompt_messages(r),
                          "response": resp}) + "\n")
