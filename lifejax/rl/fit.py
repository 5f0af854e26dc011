"""An RL run on the one training engine: the layout's params tree, its
starting params, the rollout source, dev-prompt evaluation, and the
engine's loop settings derived from the RL loop config.

Several processes (`lifejax.launch`) sample together: generation and the
log-prob / value / reward forwards are SPMD programs over the global mesh.
Every process feeds them the same prompts (the prompt order and the
sampling keys are functions of the seed and the iteration) and fetches
their whole outputs (`sharding.fetch`), so every process holds the same
rollout, scores it alike and queues the same global minibatches, of which
the engine places each process's rows (`sharding.put`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lifejax import checks, sharding
from lifejax.eval import generation
from lifejax.model import lora as lora_lib
from lifejax.model.config import TransformerConfig
from lifejax.rl import iteration as iteration_lib, layout as layout_lib
from lifejax.rl import rollout as rollout_lib
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
from lifejax.world import tools as tools_lib


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


@dataclasses.dataclass
class RLJob:
  """An RL run's pieces for the one engine, shared by `train` (an RL run
  without a stage) and the PPO/GRPO stage specs (`stages.rl`).

  The trained tree is the `layout` (see `layout.make_layout`): its params
  start from the LM params `lm_params` (also the frozen reference) and, for
  a separate critic, `value_backbone()` (None: the LM's), called only when
  there is nothing to resume. One engine step is one minibatch; the engine
  logs one row per iteration and checkpoints every
  `loop_cfg.checkpoint_every` iterations (and at the end). With `lora_cfg`,
  rollouts use the merged params. `eval_records`: dev prompts; every
  `loop_cfg.eval_every` iterations (and at the end) the greedy policy's mean
  score on them is `eval/reward`, which picks the best checkpoint (best/)
  and drives early stopping.
  """

  algorithm: Algorithm
  layout: Layout
  params_tree: tuple[Any, Any]
  lm_params: Any
  mesh: Any
  rules: sharding.Rules
  prompts: PromptBatches
  codec: rollout_lib.Codec
  scorer: rollout_lib.Scorer
  rollout_cfg: rollout_lib.RolloutConfig
  loop_cfg: RLLoopConfig
  seed: int = 0
  value_backbone: Callable[[], Any] = lambda: None
  samples_dir: str | None = None
  generate: generation.SampleFn | None = None
  lora_cfg: lora_lib.LoraConfig | None = None
  eval_records: Sequence[rollout_lib.Record] = ()
  tool: tools_lib.Tool | None = None
  source: RolloutSource | None = None

  @classmethod
  def create(cls, *, layout_kind: str, policy_cfg: TransformerConfig,
             value_cfg: TransformerConfig | None = None, **kwargs: Any
             ) -> RLJob:
    rollout_cfg, algorithm = kwargs["rollout_cfg"], kwargs["algorithm"]
    dist = rollout_cfg.learner_distribution(kwargs["codec"].vocab_limit)
    # The loss, the rollout's log-probs and the reference's all take the
    # same distribution (RolloutConfig.ratio_distribution).
    algorithm.logprob_dist = dist
    if rollout_cfg.max_turns > 1 and kwargs["loop_cfg"].rollout_lag:
      raise ValueError("RLLoopConfig.rollout_lag > 0 with multi-turn "
                       "rollouts (RolloutConfig.max_turns > 1) is not "
                       "supported: a pending multi-turn rollout is not "
                       "saved with the checkpoint")
    iteration_lib.collect_fn(rollout_cfg, kwargs.get("tool"))  # checks
    if rollout_cfg.sampler == "exact" and jax.process_count() > 1:
      raise ValueError("RolloutConfig.sampler='exact' runs in one process "
                       "(it steps the sampler from the host)")
    layout, abstract, specs = layout_lib.make_layout(
        layout_kind, policy_cfg, kwargs["mesh"], kwargs["rules"], value_cfg,
        dist)
    job = cls(layout=layout, params_tree=(abstract, specs), **kwargs)
    if not job.eval_records and (job.loop_cfg.eval_every
                                 or job.loop_cfg.early_stop_patience):
      raise ValueError("RLLoopConfig.eval_every / early_stop_patience need "
                       "eval prompts (the stage's eval_prompt_files)")
    return job

  @property
  def example_batch(self) -> dict[str, np.ndarray]:
    batch = self.algorithm.example_minibatch(self.loop_cfg.minibatch_size,
                                             self.rollout_cfg.seq_len)
    if self.loop_cfg.rollout_lag:  # the off-policy importance weights
      batch["is_weight"] = np.zeros_like(batch["loss_mask"])
    return batch

  @property
  def tokens_per_step(self) -> int:
    return self.loop_cfg.minibatch_size * self.rollout_cfg.seq_len

  def engine_configs(self, checkpoint_cfg: CheckpointConfig
                     ) -> tuple[loop_lib.LoopConfig, CheckpointConfig]:
    """The engine's loop and checkpoint settings, in minibatch steps."""
    check_checkpoint(checkpoint_cfg)
    cfg = self.loop_cfg
    per_iter = cfg.steps_per_iteration(self.algorithm.group_size)
    every = cfg.checkpoint_every or max(cfg.num_iterations, 1)
    loop = loop_lib.LoopConfig(
        num_steps=cfg.num_iterations * per_iter, log_every=per_iter,
        eval_every=cfg.eval_every * per_iter,
        early_stop_patience=cfg.early_stop_patience,
        early_stop_metric="eval/reward", early_stop_mode="max",
        progress=cfg.progress, tensorboard=cfg.tensorboard,
        max_nonfinite_steps=cfg.max_nonfinite_steps, extend=cfg.extend)
    return loop, dataclasses.replace(
        checkpoint_cfg, every_steps=every * per_iter,
        best_metric="eval/reward", best_mode="max")

  def initial_params(self, plan: trainer_lib.Plan) -> Any:
    return jax.device_put(
        layout_lib.assemble_params(self.layout, self.params_tree[0],
                                   self.lm_params, self.value_backbone()),
        plan.state_shardings[base_params_key(plan.state_shardings)])

  def make_source(self, trainer: trainer_lib.Trainer) -> RolloutSource:
    base_sh = trainer.state_shardings[base_params_key(trainer.state)]
    ref = jax.device_put(self.lm_params, self.layout.lm_params(base_sh))
    trained = lambda s: s["params"]  # noqa: E731
    lora_cfg = self.lora_cfg
    if lora_cfg is not None:  # sample and score with the merged weights
      merged = jax.jit(lambda f, p: lora_lib.merge(f, p, lora_cfg),
                       out_shardings=base_sh)
      trained = lambda s: merged(s["frozen"], s["params"])  # noqa: E731
    self.source = RolloutSource(
        forwards=PolicyForwards(self.layout, self.mesh, self.rules, ref,
                                self.rollout_cfg.chunk_size, self.generate,
                                self.rollout_cfg.sampler,
                                self.rollout_cfg.sampling_devices),
        algorithm=self.algorithm, prompts=self.prompts, codec=self.codec,
        scorer=self.scorer, rollout_cfg=self.rollout_cfg,
        loop_cfg=self.loop_cfg, seed=self.seed, samples_dir=self.samples_dir,
        trained_params=trained, tool=self.tool)
    return self.source

  def make_evals(self, _: trainer_lib.Trainer) -> engine.Evals:
    if not self.eval_records:
      return engine.Evals()
    source, codec = self.source, self.codec
    greedy = dataclasses.replace(
        self.rollout_cfg, temperature=0.0).sampling_config(
            codec.stop_ids, codec.pad_id, codec.vocab_limit)

    def dev_reward(state: Any, step: int) -> dict[str, float]:
      del step
      ro = iteration_lib.collect_fn(self.rollout_cfg, self.tool)(
          self.eval_records, codec=codec, cfg=self.rollout_cfg,
          sample=source.forwards.sampler(source.trained_params(state),
                                         greedy),
          rng=jax.random.PRNGKey(self.seed), scorer=self.scorer)
      return {"eval/reward": float(np.mean(ro.score_B))}

    return engine.Evals(evaluators=(dev_reward,))

  def finish(self, run_dir: str, result: engine.FitResult) -> RLRun:
    """Plots the curves, completes the summary (final_iteration,
    resumed_from, last_metrics) and returns the run."""
    run, summary = RunDir(run_dir), result.summary
    if sharding.is_main_process() and os.path.exists(run.metrics):
      plot_curves(run.metrics, run.rl_curves,
                  keys=("reward", "true_judge", "kl"))
    restored = result.trainer.restored_data_state
    summary.update(final_iteration=self.source.iteration,
                   resumed_from=int(restored["iteration"]) if restored else 0,
                   last_metrics=summary["last_train_metrics"])
    return RLRun(summary=summary, state=result.state, layout=self.layout,
                 ref_params=self.source.forwards.ref_params,
                 train_step=result.trainer.train_step, lora_cfg=self.lora_cfg)


def check_checkpoint(cfg: CheckpointConfig) -> None:
  """An RL run checkpoints every RLLoopConfig.checkpoint_every iterations
  and keeps the best by eval/reward: the CheckpointConfig fields it sets
  itself must stay at their defaults (else they would be ignored)."""
  default = CheckpointConfig()
  for field, why in (
      ("every_steps", "an RL run checkpoints every "
       "RLLoopConfig.checkpoint_every iterations"),
      ("best_metric", "an RL run keeps the best by eval/reward"),
      ("best_mode", "an RL run keeps the highest eval/reward")):
    if getattr(cfg, field) != getattr(default, field):
      raise checks.unused(f"CheckpointConfig.{field}", why)


def train(*, run_dir: str, policy_cfg: TransformerConfig, layout_kind: str,
          optimizer_cfg: optim.OptimizerConfig,
          checkpoint_cfg: CheckpointConfig,
          value_cfg: TransformerConfig | None = None,
          loss_scale: LossScaleConfig | None = None, **job_kwargs: Any
          ) -> RLRun:
  """An RL run without a stage (no lineage, tokenizer or template): trains
  `job_kwargs["algorithm"]` on the one engine, resuming a checkpoint in
  `run_dir`. job_kwargs: the `RLJob` fields (lm_params, mesh, rules,
  prompts, codec, scorer, rollout_cfg, loop_cfg, seed, value_backbone,
  samples_dir, generate, lora_cfg, eval_records). `loss_scale`: dynamic
  loss scaling (fp16). The PPO/GRPO stages run the same `RLJob` through the
  stage runner."""
  job = RLJob.create(layout_kind=layout_kind, policy_cfg=policy_cfg,
                     value_cfg=value_cfg, **job_kwargs)
  loop_cfg, ckpt_cfg = job.engine_configs(checkpoint_cfg)
  result = engine.fit(
      run_dir=run_dir, loop_cfg=loop_cfg, checkpoint_cfg=ckpt_cfg,
      make_data=job.make_source, make_evals=job.make_evals,
      initial_params=job.initial_params, tokens_per_step=job.tokens_per_step,
      model_cfg=policy_cfg, params_tree=job.params_tree,
      make_loss=lambda _: job.algorithm.make_loss(job.layout),
      optimizer_cfg=optimizer_cfg, mesh=job.mesh, rules=job.rules,
      example_batch=job.example_batch, seed=job.seed,
      num_microbatches=job.loop_cfg.num_microbatches,
      lora_cfg=job.lora_cfg, loss_scale=loss_scale)
  return job.finish(run_dir, result)


def export_policy(out_dir: str, policy_params: Any, step: int) -> None:
  """Writes policy LM params as a plain LM run's checkpoint
  (`out_dir/checkpoints/<step>/state` = {"params": LM params}), which
  `train.checkpoint.restore_params` and every `init_from` read."""
  artifacts.export_params(out_dir, policy_params, step)
