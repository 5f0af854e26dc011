"""RL stages from an SFT run: PPO, GRPO and AI-judged preferences (RLAIF).

The SFT run supplies the policy's initial params, the frozen reference, the
tokenizer and the chat template (prompts are rendered with it, generation
stops at its end-of-turn marker). The reward is a reward-model run
(`reward="reward_model"`, normalized with its reward_stats.json) or the
programmatic judge (`reward="judge"`, a named preset). Whatever the reward,
every iteration also logs the DEFAULT judge's score of the same responses
(`true_judge`): learned reward rising while it falls is reward hacking.

Run directories: metrics.jsonl (one row per iteration), samples/,
checkpoints/ (train state, prompt position, KL controller), lineage.json,
chat_template.json, rl_curves.png, summary.json. A PPO run also exports its
final policy LM to <run_dir>/policy, a plain LM run directory that
`init_from` / `policy_run` / evaluation read; a GRPO run's checkpoints hold
the LM itself. RLAIF writes preferences.jsonl for the DPO stage.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax import sharding
from lifejax.model import heads
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.rl import fit, grpo as grpo_lib, iteration as iteration_lib
from lifejax.rl import ppo as ppo_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import write_lineage
from lifejax.stages import rl_common, runner
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.state import LossScaleConfig
from lifejax.world import judge as judge_lib


def _train(run_dir: str, policy: rl_common.Policy, algorithm: Any,
           layout_kind: str, value_cfg: TransformerConfig | None,
           value_backbone: Any, records: list[dict],
           scorer: rollout_lib.Scorer, rollout: rollout_lib.RolloutConfig,
           loop: iteration_lib.RLLoopConfig, optimizer: OptimizerConfig,
           checkpoint: CheckpointConfig, seed: int, lora: LoraConfig | None,
           loss_scale: LossScaleConfig | None,
           eval_records: list[dict]) -> fit.RLRun:
  return fit.train(
      run_dir=run_dir, algorithm=algorithm, layout_kind=layout_kind,
      policy_cfg=policy.cfg, lm_params=policy.params, mesh=policy.mesh,
      rules=policy.rules,
      prompts=iteration_lib.PromptBatches(records, loop.prompts_per_iteration,
                                          seed=seed),
      codec=policy.codec, scorer=scorer, rollout_cfg=rollout, loop_cfg=loop,
      optimizer_cfg=optimizer, checkpoint_cfg=checkpoint, seed=seed,
      value_cfg=value_cfg, value_backbone=value_backbone,
      samples_dir=RunDir(run_dir).samples, lora_cfg=lora,
      loss_scale=loss_scale, eval_records=eval_records)


@gin.configurable
def ppo(
    run_dir: str = gin.REQUIRED,
    sft_run: str = gin.REQUIRED,
    prompt_files: Sequence[str] = gin.REQUIRED,
    reward: str = "reward_model",
    reward_run: str | None = None,
    reward_judge: str | judge_lib.JudgeConfig = "default",
    value_model: str = "separate",
    value_init: str | None = None,
    model: TransformerConfig | None = None,
    ppo_config: ppo_lib.PPOConfig = ppo_lib.PPOConfig(),
    loop: iteration_lib.RLLoopConfig = iteration_lib.RLLoopConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    missing_stop_penalty: float = 0.0,
    seed: int = 0,
    stage_name: str = "ppo",
    loss: str = "ppo",
    lora: LoraConfig | None = None,
    loss_scale: LossScaleConfig | None = None,
    eval_prompt_files: Sequence[str] = (),
) -> dict[str, Any]:
  """PPO from `sft_run` (policy and frozen reference) on prompt records.

  reward: "reward_model" (reward_run's model, normalized) or "judge" (the
    `reward_judge` preset: default | length_hackable | safety_hackable, or
    a JudgeConfig, e.g. `ppo.reward_judge = @JudgeConfig()` in gin).
  value_model: "separate" (a ValueModel) or "shared" (a value head on the
    policy's trunk). value_init: the separate critic's backbone, from
    "reward_model" (reward_run's backbone) or "sft" (the SFT LM's); None:
    "reward_model" when reward_run is given, else "sft". A shared critic
    has no backbone of its own: value_init must stay None.
  model: None = the SFT run's config (override to change dtypes or remat;
    shapes must match).
  loss: a registered loss of kind "ppo".
  """
  value_init = rl_common.value_init(value_model, value_init, reward_run)
  # reward_run may also start the critic, so an unused one is not checked.
  rl_common.check_reward("ppo", reward, reward_run, reward_judge,
                         check_run=False)
  algorithm = ppo_lib.PPO(ppo_config, loss=loss)
  rl_common.check_batches(algorithm, rollout, loop)
  st = rl_common.start(run_dir, stage_name, sft_run, model, mesh,
                       prompt_files, rollout, reward, reward_run,
                       reward_judge, missing_stop_penalty)
  policy, records, scorer = st.policy, st.records, st.scorer
  value_cfg = None
  critic_from = "sft" if value_model == "separate" else "policy trunk"
  if value_model == "separate" and value_init == "reward_model":
    value_cfg = artifacts.load_model_config(reward_run)
    critic_from = os.path.abspath(reward_run)

  def value_backbone() -> Any:
    """The critic's starting backbone: the reward model's (None: the
    SFT LM's); loaded only when there is no checkpoint to resume."""
    if value_cfg is None:
      return None
    _, rm = artifacts.load_params(reward_run, heads.RewardModel, value_cfg,
                                  policy.mesh, policy.rules)
    return rm["backbone"]

  run = RunDir(run_dir)
  write_lineage(run_dir, rl_common.lineage(
      stage_name, policy, f"policy_value_{value_model}", prompt_files,
      loss=loss, reward=st.reward_info,
      critic={"layout": value_model, "init_from": critic_from},
      policy_dir=run.policy.root, ppo=dataclasses.asdict(ppo_config),
      prompts=st.prompt_counts))
  result = _train(
      run_dir, policy, algorithm, value_model, value_cfg,
      value_backbone, records, scorer, rollout, loop, optimizer, checkpoint,
      seed, lora, loss_scale,
      rl_common.eval_prompts(eval_prompt_files, policy, rollout, reward))
  summary = result.summary
  fit.export_policy(run.policy.root, result.policy_params(),
                              summary["final_iteration"])
  artifacts.save_template(run.policy.root, policy.template)
  write_lineage(run.policy.root, rl_common.lineage(
      f"{stage_name}_policy", policy, "policy", prompt_files,
      rl_run=run.root))
  summary["policy_dir"] = run.policy.root
  return runner.finish_run(run, summary)


@gin.configurable
def grpo(
    run_dir: str = gin.REQUIRED,
    sft_run: str = gin.REQUIRED,
    prompt_files: Sequence[str] = gin.REQUIRED,
    reward: str = "judge",
    reward_run: str | None = None,
    reward_judge: str | judge_lib.JudgeConfig = "default",
    model: TransformerConfig | None = None,
    grpo_config: grpo_lib.GRPOConfig = grpo_lib.GRPOConfig(),
    loop: iteration_lib.RLLoopConfig = iteration_lib.RLLoopConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    missing_stop_penalty: float = 0.0,
    seed: int = 0,
    stage_name: str = "grpo",
    loss: str = "grpo",
    lora: LoraConfig | None = None,
    loss_scale: LossScaleConfig | None = None,
    eval_prompt_files: Sequence[str] = (),
) -> dict[str, Any]:
  """GRPO from `sft_run`: group_size samples per prompt, group-relative
  advantages, k3 KL to the SFT reference in the loss (`loss`: a registered
  loss of kind "grpo"), no critic. Rewards as in `ppo`. The run's
  checkpoints hold the policy LM itself."""
  rl_common.check_reward("grpo", reward, reward_run, reward_judge)
  algorithm = grpo_lib.GRPO(grpo_config, loss=loss)
  rl_common.check_batches(algorithm, rollout, loop)
  st = rl_common.start(run_dir, stage_name, sft_run, model, mesh,
                       prompt_files, rollout, reward, reward_run,
                       reward_judge, missing_stop_penalty)
  policy, records, scorer = st.policy, st.records, st.scorer
  write_lineage(run_dir, rl_common.lineage(
      stage_name, policy, "policy", prompt_files, loss=loss,
      reward=st.reward_info, grpo=dataclasses.asdict(grpo_config),
      prompts=st.prompt_counts))
  summary = _train(
      run_dir, policy, algorithm, "policy", None,
      lambda: None, records, scorer, rollout, loop, optimizer, checkpoint,
      seed, lora, loss_scale,
      rl_common.eval_prompts(eval_prompt_files, policy, rollout,
                             reward)).summary
  return runner.finish_run(RunDir(run_dir), summary)


