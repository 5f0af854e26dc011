"""An RL run on the one training engine: the layout's params tree, its
starting params, the rollout source, dev-prompt evaluation, and the
engine's loop settings derived from the RL loop config."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lifejax import sharding
from lifejax.eval import generation
from lifejax.model import lora as lora_lib
from lifejax.model.config import TransformerConfig
from lifejax.rl import layout as layout_lib, rollout as rollout_lib
from lifejax.rl.iteration import (
    Algorithm, PromptBatches, RLLoopConfig, RolloutSource)
from lifejax.rl.layout import Layout, PolicyForwards
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.train import engine, loop as loop_lib, optim
from lifejax.train import trainer as trainer_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.metrics import plot_curves
from lifejax.train.state import LossScaleConfig, base_params_key


@dataclasses.dataclass
class RLRun:
  """What an RL run leaves: its summary and final train state, the layout
  of the trained params, the frozen reference and the jitted step. With
  LoRA (`lora_cfg`), state["params"] holds only the trainable tree over
  state["frozen"]; `params()` and `policy_params()` merge them."""

  summary: dict[str, Any]
  state: Any
  layout: Layout
  ref_params: Any
  train_step: Callable[..., Any]
  lora_cfg: lora_lib.LoraConfig | None = None

  def params(self) -> Any:
    """The full trained params tree (the layout's), adapters merged."""
    return lora_lib.full_params(self.state, self.lora_cfg)

  def policy_params(self) -> Any:
    return self.layout.lm_params(self.params())


def train(*, run_dir: str, algorithm: Algorithm, layout_kind: str,
          policy_cfg: TransformerConfig, lm_params: Any, mesh: Any,
          rules: sharding.Rules, prompts: PromptBatches,
          codec: rollout_lib.Codec, scorer: rollout_lib.Scorer,
          rollout_cfg: rollout_lib.RolloutConfig, loop_cfg: RLLoopConfig,
          optimizer_cfg: optim.OptimizerConfig,
          checkpoint_cfg: CheckpointConfig, seed: int = 0,
          value_cfg: TransformerConfig | None = None,
          value_backbone: Callable[[], Any] = lambda: None,
          samples_dir: str | None = None,
          generate: generation.SampleFn | None = None,
          lora_cfg: lora_lib.LoraConfig | None = None,
          loss_scale: LossScaleConfig | None = None,
          eval_records: Sequence[rollout_lib.Record] = (),
          ) -> RLRun:
  """Trains `algorithm` from the LM params `lm_params` (also the frozen
  reference) on the one engine; resumes a checkpoint in `run_dir`.

  The trained tree is the `layout_kind` layout (see `layout.make_layout`);
  its critic backbone is `value_backbone()` (None: the LM's), called only
  when there is nothing to resume. One engine step is one minibatch; the
  engine logs one row per iteration and checkpoints every
  `loop_cfg.checkpoint_every` iterations (and at the end). With
  `lora_cfg`, the engine trains adapters on every LM trunk of the tree
  (heads in full; see `model.lora`) and rollouts use the merged params.
  `loss_scale`: dynamic loss scaling (fp16). `eval_records`: dev prompts;
  every `loop_cfg.eval_every` iterations (and at the end) the greedy
  policy's mean score on them is `eval/reward`, which picks the best
  checkpoint (best/) and drives early stopping.
  """
  layout, abstract, specs = layout_lib.make_layout(
      layout_kind, policy_cfg, mesh, rules, value_cfg)
  per_iter = loop_cfg.steps_per_iteration(algorithm.group_size)
  every = loop_cfg.checkpoint_every or max(loop_cfg.num_iterations, 1)
  made: dict[str, RolloutSource] = {}

  def make_source(trainer: trainer_lib.Trainer) -> RolloutSource:
    base_sh = trainer.state_shardings[base_params_key(trainer.state)]
    ref = jax.device_put(lm_params, layout.lm_params(base_sh))
    trained = lambda s: s["params"]  # noqa: E731
    if lora_cfg is not None:  # sample and score with the merged weights
      merged = jax.jit(lambda f, p: lora_lib.merge(f, p, lora_cfg),
                       out_shardings=base_sh)
      trained = lambda s: merged(s["frozen"], s["params"])  # noqa: E731
    made["source"] = RolloutSource(
        forwards=PolicyForwards(layout, mesh, rules, ref,
                                rollout_cfg.chunk_size, generate),
        algorithm=algorithm, prompts=prompts, codec=codec, scorer=scorer,
        rollout_cfg=rollout_cfg, loop_cfg=loop_cfg, seed=seed,
        samples_dir=samples_dir, trained_params=trained,
        shard=(jax.process_index(), jax.process_count()))
    return made["source"]

  def make_evals(_: trainer_lib.Trainer) -> engine.Evals:
    if not eval_records:
      return engine.Evals()
    source = made["source"]
    greedy = dataclasses.replace(rollout_cfg, temperature=0.0).sampling_config(
        codec.stop_ids, codec.pad_id, codec.vocab_limit)

    def dev_reward(state: Any, step: int) -> dict[str, float]:
      del step
      params = source.trained_params(state)
      ro = rollout_lib.collect(
          eval_records, codec=codec, cfg=rollout_cfg,
          sample=source.forwards.sampler(params, greedy),
          rng=jax.random.PRNGKey(seed), scorer=scorer)
      return {"eval/reward": float(np.mean(ro.score_B))}

    return engine.Evals(evaluators=(dev_reward,))

  with_evals = bool(eval_records)
  if not with_evals and (loop_cfg.eval_every or loop_cfg.early_stop_patience):
    raise ValueError("RLLoopConfig.eval_every / early_stop_patience need "
                     "eval prompts (the stage's eval_prompt_files)")

  result = engine.fit(
      run_dir=run_dir,
      loop_cfg=loop_lib.LoopConfig(
          num_steps=loop_cfg.num_iterations * per_iter, log_every=per_iter,
          eval_every=loop_cfg.eval_every * per_iter,
          early_stop_patience=loop_cfg.early_stop_patience,
          early_stop_metric="eval/reward", early_stop_mode="max",
          progress=loop_cfg.progress, tensorboard=loop_cfg.tensorboard),
      checkpoint_cfg=dataclasses.replace(
          checkpoint_cfg, every_steps=every * per_iter,
          best_metric="eval/reward", best_mode="max"),
      make_data=make_source, make_evals=make_evals,
      initial_params=lambda plan: jax.device_put(
          layout_lib.assemble_params(layout, abstract, lm_params,
                                     value_backbone()),
          plan.state_shardings[base_params_key(plan.state_shardings)]),
      tokens_per_step=loop_cfg.minibatch_size * rollout_cfg.seq_len,
      model_cfg=policy_cfg, params_tree=(abstract, specs),
      make_loss=lambda _: algorithm.make_loss(layout),
      optimizer_cfg=optimizer_cfg, mesh=mesh, rules=rules,
      example_batch=algorithm.example_minibatch(loop_cfg.minibatch_size,
                                                rollout_cfg.seq_len),
      seed=seed, num_microbatches=loop_cfg.num_microbatches,
      lora_cfg=lora_cfg, loss_scale=loss_scale)
  source, summary = made["source"], result.summary
  run = RunDir(run_dir)
  if os.path.exists(run.metrics):
    plot_curves(run.metrics, run.rl_curves, keys=("reward", "true_judge",
                                                  "kl"))
  restored = result.trainer.restored_data_state
  summary.update(final_iteration=source.iteration,
                 resumed_from=int(restored["iteration"]) if restored else 0,
                 last_metrics=summary["last_train_metrics"])
  return RLRun(summary=summary, state=result.state, layout=layout,
               ref_params=source.forwards.ref_params,
               train_step=result.trainer.train_step, lora_cfg=lora_cfg)


def export_policy(out_dir: str, policy_params: Any, step: int) -> None:
  """Writes policy LM params as a plain LM run's checkpoint
  (`out_dir/checkpoints/<step>/state` = {"params": LM params}), which
  `train.checkpoint.restore_params` and every `init_from` read."""
  artifacts.export_params(out_dir, policy_params, step)
