"""RL stages from an SFT run: PPO, GRPO and AI-judged preferences (RLAIF).

The SFT run supplies the policy's initial params, the frozen reference, the
tokenizer and the chat template (prompts are rendered with it, generation
stops at its end-of-turn marker). The reward is a reward-model run
(`reward="reward_model"`, normalized with its reward_stats.json), the
programmatic judge (`reward="judge"`, a named preset) or a Python function
(`reward="python"`, `reward_fn`). Whatever the reward,
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
import functools
import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax import checks, sharding
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
from lifejax.world import judge as judge_lib, tools as tools_lib


def rl_stage(
    run_dir: str = gin.REQUIRED,
    sft_run: str = gin.REQUIRED,
    prompt_files: Sequence[str] = gin.REQUIRED,
    *,
    algorithm: str,
    reward: str,
    reward_run: str | None = None,
    reward_judge: str | judge_lib.JudgeConfig = "default",
    reward_fn: rl_common.RewardFn | None = None,
    ppo_config: ppo_lib.PPOConfig | None = None,
    value_model: str | None = None,
    value_init: str | None = None,
    grpo_config: grpo_lib.GRPOConfig | None = None,
    model: TransformerConfig | None = None,
    loop: iteration_lib.RLLoopConfig = iteration_lib.RLLoopConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    missing_stop_penalty: float = 0.0,
    seed: int = 0,
    stage_name: str | None = None,
    loss: str | None = None,
    lora: LoraConfig | None = None,
    loss_scale: LossScaleConfig | None = None,
    eval_prompt_files: Sequence[str] = (),
    tool: str | None = None,
    tool_world: str | None = None,
) -> dict[str, Any]:
  """PPO or GRPO from `sft_run` (the policy and its frozen reference) on
  prompt records; gin binds it as `ppo` and `grpo`.

  reward: "reward_model" (reward_run's model, normalized; ppo's default),
    "judge" (grpo's default: the `reward_judge` preset, default |
    length_hackable | safety_hackable, or a JudgeConfig, e.g.
    `ppo.reward_judge = @JudgeConfig()` in gin) or "python" (`reward_fn`).
  reward_fn: with reward="python", called as reward_fn(record, response)
    -> float on each sample (record: the prompt record as read, every
    field; response: the decoded text); a gin-registered function, bound
    as `grpo.reward_fn = @my_module.my_reward` after `import my_module`.
  ppo only: ppo_config; value_model "separate" (a ValueModel, the default)
    or "shared" (a value head on the policy's trunk); value_init, the
    separate critic's backbone: "reward_model" (reward_run's backbone) or
    "sft" (the SFT LM's); None: "reward_model" when reward_run is given,
    else "sft". A shared critic has no backbone of its own.
  grpo only: grpo_config (group_size samples per prompt, group-relative
    advantages, k3 KL to the reference in the loss, no critic).
  model: None = the SFT run's config (override dtypes or remat; shapes must
    match). loss: a registered loss of kind "ppo" / "grpo" (default: the
    algorithm's name). stage_name: default the algorithm's name.
  eval_prompt_files: dev prompts for eval/reward (keep-best, early stop).
  tool: a tool the policy may call between turns ("directory": the
    company directory of the world at `tool_world`, a generated world's
    directory); needs RolloutConfig.max_turns > 1 (multi-turn rollouts,
    `rl.multiturn`: observations are loss-masked, the final answer is
    scored).
  """
  stage_name, loss = stage_name or algorithm, loss or algorithm
  if algorithm == "ppo":
    if grpo_config is not None:
      raise checks.unused("ppo.grpo_config", "PPO takes ppo_config")
    value_model = value_model or "separate"
    value_init = rl_common.value_init(value_model, value_init, reward_run)
    algo: Any = ppo_lib.PPO(ppo_config or ppo_lib.PPOConfig(), loss=loss)
    layout_kind, config = value_model, {"ppo": algo.cfg}
  else:
    for name, value in (("ppo_config", ppo_config),
                        ("value_model", value_model),
                        ("value_init", value_init)):
      if value is not None:
        raise checks.unused(f"grpo.{name}", "GRPO has no critic")
    algo = grpo_lib.GRPO(grpo_config or grpo_lib.GRPOConfig(), loss=loss)
    layout_kind, config = "policy", {"grpo": algo.cfg}
  # PPO's reward_run may also start the critic: an unused one is fine.
  rl_common.check_reward(algorithm, reward, reward_run, reward_judge,
                         check_run=algorithm != "ppo", reward_fn=reward_fn,
                         fn_field="reward_fn")
  if (tool is None) != (tool_world is None):
    raise ValueError(f"{stage_name}.tool and {stage_name}.tool_world go "
                     "together (the tool reads the world's fact table)")
  the_tool = (tools_lib.make_tool(tool, tool_world) if tool is not None
              else None)
  iteration_lib.collect_fn(rollout, the_tool)  # a tool needs max_turns > 1
  rl_common.check_batches(algo, rollout, loop)
  runner.preflight(stage_name, mesh, loop.minibatch_size,
                   loop.num_microbatches)
  fit.check_checkpoint(checkpoint)
  if runner.only_checking():
    return {}
  st = rl_common.start(sft_run, model, mesh, prompt_files, rollout, reward,
                       reward_run, reward_judge, missing_stop_penalty,
                       reward_fn)
  policy = st.policy
  value_cfg, details = None, {}
  if algorithm == "ppo":
    critic_from = "sft" if value_model == "separate" else "policy trunk"
    if value_init == "reward_model":
      value_cfg = artifacts.load_model_config(reward_run)
      critic_from = os.path.abspath(reward_run)
    details = {"critic": {"layout": value_model, "init_from": critic_from},
               "policy_dir": os.path.abspath(RunDir(run_dir).policy.root)}

  def value_backbone() -> Any:
    """The critic's starting backbone: the reward model's (None: the SFT
    LM's); loaded only when there is no checkpoint to resume."""
    if value_cfg is None:
      return None
    _, rm = artifacts.load_params(reward_run, heads.RewardModel, value_cfg,
                                  policy.mesh, policy.rules)
    return rm["backbone"]

  job = fit.RLJob.create(
      layout_kind=layout_kind, policy_cfg=policy.cfg, value_cfg=value_cfg,
      algorithm=algo, lm_params=policy.params, mesh=policy.mesh,
      rules=policy.rules, prompts=iteration_lib.PromptBatches(
          st.records, loop.prompts_per_iteration, seed=seed),
      codec=policy.codec, scorer=st.scorer, rollout_cfg=rollout,
      loop_cfg=loop, seed=seed, value_backbone=value_backbone,
      samples_dir=RunDir(run_dir).samples, lora_cfg=lora,
      eval_records=rl_common.eval_prompts(eval_prompt_files, policy, rollout,
                                          reward, log=st.inputs),
      tool=the_tool)

  def finish(ctx: runner.Context, result: Any) -> dict[str, Any]:
    summary = job.finish(ctx.run.root, result).summary
    summary.update(st.inputs.summary(stage_name))
    if algorithm == "ppo":  # the policy LM as a plain LM run directory
      out = ctx.run.policy.root
      fit.export_policy(out, job.layout.lm_params(ctx.model_params(
          result.state)), summary["final_iteration"])
      if sharding.is_main_process():
        artifacts.save_template(out, policy.template)
        write_lineage(out, rl_common.lineage(
            f"{stage_name}_policy", policy, "policy", prompt_files,
            rl_run=ctx.run.root))
      summary["policy_dir"] = out
    return summary

  loop_cfg, checkpoint_cfg = job.engine_configs(checkpoint)
  spec = runner.StageSpec(
      name=stage_name, model_kind=("policy" if layout_kind == "policy" else
                                   f"policy_value_{layout_kind}"),
      model=policy.cfg, loss=loss, loss_kind=algo.loss_kind,
      loss_kwargs=algo.loss_kwargs, example_batch=job.example_batch,
      data=lambda ctx: job.make_source(ctx.trainer),
      evals=lambda ctx: job.make_evals(ctx.trainer),
      tokenizer=policy.tokenizer, template=policy.template,
      tokens_per_step=job.tokens_per_step, init_from=sft_run,
      reference=sft_run, initial_params=lambda _, plan: job.initial_params(
          plan), inputs={"prompt_files": prompt_files},
      details={"reward": st.reward_info, "prompts": st.prompt_counts,
               **({"tool": {"name": tool,
                            "world": os.path.abspath(tool_world)}}
                  if tool is not None else {}),
               **{k: dataclasses.asdict(v) for k, v in config.items()},
               **details},
      finish=finish, params_tree=job.params_tree,
      loss_graphdefs=lambda _: algo.loss_graphdefs(job.layout))
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop_cfg,
      checkpoint=checkpoint_cfg, seed=seed,
      num_microbatches=loop.num_microbatches, loss_scale=loss_scale,
      lora=lora))


# One implementation, two gin names: `ppo.<arg>` and `grpo.<arg>` bind the
# same arguments; each name fixes its algorithm and default reward.
ppo = gin.external_configurable(
    functools.partial(rl_stage, algorithm="ppo", reward="reward_model"),
    name="ppo", module="lifejax.stages.rl", denylist=["algorithm"])
grpo = gin.external_configurable(
    functools.partial(rl_stage, algorithm="grpo", reward="judge"),
    name="grpo", module="lifejax.stages.rl", denylist=["algorithm"])
