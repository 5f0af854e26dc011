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
import logging
import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax import sharding
from lifejax.data import chat, judge as judge_lib
from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import grpo as grpo_lib, learner as learner_lib
from lifejax.rl import ppo as ppo_lib, rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.stages.common import (
    file_digest, finish_stage, tokenizer_of, write_json)
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.data.sources import read_jsonl as _read_jsonl

for _cls in (ppo_lib.PPOConfig, grpo_lib.GRPOConfig, rlaif_lib.RLAIFConfig,
             rollout_lib.RolloutConfig, learner_lib.RLLoopConfig,
             judge_lib.JudgeConfig):
  gin.external_configurable(_cls, module="lifejax")

REWARDS = ("reward_model", "judge")
_SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads",
                 "num_kv_heads", "resolved_head_dim", "mlp_dim",
                 "tie_embeddings")


@dataclasses.dataclass
class _Policy:
  """An LM run loaded for RL: config, template, tokenizer, codec, params."""

  run: str
  cfg: TransformerConfig
  template: chat.ChatTemplate
  tokenizer: Any
  codec: rollout_lib.Codec
  mesh: Any
  rules: sharding.Rules
  graphdef: Any
  params: Any


def _load_policy(run: str, model: TransformerConfig | None,
                 mesh_cfg: sharding.MeshConfig) -> _Policy:
  saved = rollout_lib.config_from_lineage(run)
  if model is not None:
    diff = {k: (getattr(saved, k), getattr(model, k)) for k in _SHAPE_FIELDS
            if getattr(saved, k) != getattr(model, k)}
    if diff:
      raise ValueError(f"model shape differs from {run}'s (saved, "
                       f"configured): {diff}")
  cfg = model or saved
  template, tokenizer = chat.load_template(run), tokenizer_of(run)
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, params = rollout_lib.load_params(
      run, transformer.Transformer, cfg, mesh, mesh_cfg.rules)
  return _Policy(run, cfg, template, tokenizer,
                 rollout_lib.chat_codec(template, tokenizer), mesh,
                 mesh_cfg.rules, graphdef, params)


def _prompts(files: Sequence[str], codec: rollout_lib.Codec, prompt_len: int,
             need_judge: bool) -> tuple[list[dict], dict[str, int]]:
  """Prompt records that fit in prompt_len (and that the judge can score,
  when it is the reward), with the counts of what was dropped."""
  records = [r for p in files for r in _read_jsonl(p)]
  unjudgeable = 0
  if need_judge:
    kept = [r for r in records if rollout_lib.judgeable(r)]
    unjudgeable, records = len(records) - len(kept), kept
  records, too_long = rollout_lib.fits(records, codec, prompt_len)
  if not records:
    raise ValueError(f"no usable prompts in {list(files)} (too long for "
                     f"prompt_len={prompt_len}: {too_long}, unjudgeable: "
                     f"{unjudgeable})")
  if too_long or unjudgeable:
    logging.info("prompts: dropped %d too long, %d unjudgeable", too_long,
                 unjudgeable)
  return records, {"kept": len(records), "too_long": too_long,
                   "unjudgeable": unjudgeable}


def _scorer(policy: _Policy, reward: str, reward_run: str | None,
            reward_judge: str | judge_lib.JudgeConfig,
            missing_stop_penalty: float, chunk_size: int
            ) -> tuple[rollout_lib.Scorer, dict[str, Any]]:
  if reward not in REWARDS:
    raise ValueError(f"reward={reward!r}: choose one of {REWARDS}")
  if reward == "reward_model":
    if not reward_run:
      raise ValueError('reward="reward_model" needs reward_run')
    scorer = rollout_lib.load_reward_scorer(reward_run, policy.mesh,
                                            policy.rules, chunk_size)
    info = {"kind": "reward_model", "run": os.path.abspath(reward_run),
            "mean": scorer.mean, "std": scorer.std}
  else:
    scorer = rollout_lib.JudgeScorer(rollout_lib.judge_config(reward_judge))
    info = {"kind": "judge", "judge": (reward_judge if isinstance(
        reward_judge, str) else "custom"),
            "config": dataclasses.asdict(scorer.config)}
  if missing_stop_penalty:
    scorer = rollout_lib.MissingStopPenalty(scorer, missing_stop_penalty)
  info["missing_stop_penalty"] = missing_stop_penalty
  return scorer, info


def _start(run_dir: str, stage_name: str, policy: _Policy) -> None:
  os.makedirs(run_dir, exist_ok=True)
  write_json(os.path.join(run_dir, "stage.json"), {"stage": stage_name})
  with open(os.path.join(run_dir, "config.gin"), "w") as f:
    f.write(gin.config_str())
  chat.save_template(run_dir, policy.template)


def _lineage(stage_name: str, policy: _Policy, **extra: Any) -> dict:
  return {"stage": stage_name, "init_from": os.path.abspath(policy.run),
          "model": dataclasses.asdict(policy.cfg),
          "tokenizer": {"path": getattr(policy.tokenizer, "model_path",
                                        policy.run),
                        "vocab_size": policy.tokenizer.vocab_size},
          "chat_template": policy.template.to_dict(), **extra}


def _files(paths: Sequence[str]) -> dict[str, str]:
  return {os.path.abspath(p): file_digest(p) for p in paths}


def _train(run_dir: str, policy: _Policy, algorithm: Any, layout_kind: str,
           value_cfg: TransformerConfig | None, value_backbone: Any,
           records: list[dict], scorer: rollout_lib.Scorer,
           rollout: rollout_lib.RolloutConfig,
           loop: learner_lib.RLLoopConfig, optimizer: OptimizerConfig,
           checkpoint: CheckpointConfig, seed: int
           ) -> tuple[learner_lib.Learner, dict]:
  layout, abstract, specs = learner_lib.make_layout(
      layout_kind, policy.cfg, policy.mesh, policy.rules, value_cfg)
  learner = learner_lib.Learner(
      run_dir=run_dir, layout=layout, abstract_params=abstract,
      param_specs=specs,
      initial_params=lambda: learner_lib.assemble_params(
          layout, abstract, policy.params, value_backbone()),
      ref_params=policy.params, loss_fn=algorithm.make_loss(layout),
      optimizer_cfg=optimizer, mesh=policy.mesh, rules=policy.rules,
      example_minibatch=algorithm.example_minibatch(loop.minibatch_size,
                                                    rollout.seq_len),
      num_microbatches=loop.num_microbatches, chunk_size=rollout.chunk_size,
      seed=seed, checkpoint_cfg=checkpoint)
  summary = learner_lib.run(
      run_dir=run_dir, learner=learner, algorithm=algorithm,
      prompts=learner_lib.PromptBatches(records, loop.prompts_per_iteration,
                                        seed=seed),
      codec=policy.codec, scorer=scorer, rollout_cfg=rollout, loop_cfg=loop,
      seed=seed)
  return learner, summary


@gin.configurable
def ppo(
    run_dir: str = gin.REQUIRED,
    sft_run: str = gin.REQUIRED,
    prompt_files: Sequence[str] = gin.REQUIRED,
    reward: str = "reward_model",
    reward_run: str | None = None,
    reward_judge: str | judge_lib.JudgeConfig = "default",
    value_model: str = "separate",
    value_init: str = "reward_model",
    model: TransformerConfig | None = None,
    ppo_config: ppo_lib.PPOConfig = ppo_lib.PPOConfig(),
    loop: learner_lib.RLLoopConfig = learner_lib.RLLoopConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    missing_stop_penalty: float = 0.0,
    seed: int = 0,
    stage_name: str = "ppo",
) -> dict[str, Any]:
  """PPO from `sft_run` (policy and frozen reference) on prompt records.

  reward: "reward_model" (reward_run's model, normalized) or "judge" (the
    `reward_judge` preset: default | length_hackable | safety_hackable, or
    a JudgeConfig, e.g. `ppo.reward_judge = @JudgeConfig()` in gin).
  value_model: "separate" (a ValueModel) or "shared" (a value head on the
    policy's trunk). value_init: the separate critic's backbone, from
    "reward_model" (reward_run's backbone) or "sft" (the SFT LM's).
  model: None = the SFT run's config (override to change dtypes or remat;
    shapes must match).
  """
  if value_model not in ("separate", "shared"):
    raise ValueError(f"value_model={value_model!r}: 'separate' or 'shared'")
  if value_init not in ("reward_model", "sft"):
    raise ValueError(f"value_init={value_init!r}: 'reward_model' or 'sft'")
  policy = _load_policy(sft_run, model, mesh)
  _start(run_dir, stage_name, policy)
  records, prompt_counts = _prompts(prompt_files, policy.codec,
                                    rollout.prompt_len, reward == "judge")
  scorer, reward_info = _scorer(policy, reward, reward_run, reward_judge,
                                missing_stop_penalty, rollout.chunk_size)
  value_cfg = None
  critic_from = "sft" if value_model == "separate" else "policy trunk"
  if value_model == "separate" and value_init == "reward_model":
    if not reward_run:
      raise ValueError('value_init="reward_model" needs reward_run')
    value_cfg = rollout_lib.config_from_lineage(reward_run)
    critic_from = os.path.abspath(reward_run)

  def value_backbone() -> Any:
    """The critic's starting backbone: the reward model's (None: the
    SFT LM's); loaded only when there is no checkpoint to resume."""
    if value_cfg is None:
      return None
    _, rm = rollout_lib.load_params(reward_run, heads.RewardModel, value_cfg,
                                    policy.mesh, policy.rules)
    return rm["backbone"]

  write_json(os.path.join(run_dir, "lineage.json"), _lineage(
      stage_name, policy, model_kind=f"policy_value_{value_model}",
      reference=os.path.abspath(sft_run), reward=reward_info,
      critic={"layout": value_model, "init_from": critic_from},
      policy_dir=os.path.join(os.path.abspath(run_dir), "policy"),
      ppo=dataclasses.asdict(ppo_config), prompt_files=_files(prompt_files),
      prompts=prompt_counts))
  learner, summary = _train(
      run_dir, policy, ppo_lib.PPO(ppo_config), value_model, value_cfg,
      value_backbone, records, scorer, rollout, loop, optimizer, checkpoint,
      seed)
  policy_dir = os.path.join(run_dir, "policy")
  learner.export_policy(policy_dir, summary["final_iteration"])
  chat.save_template(policy_dir, policy.template)
  write_json(os.path.join(policy_dir, "lineage.json"), _lineage(
      f"{stage_name}_policy", policy, model_kind="policy",
      rl_run=os.path.abspath(run_dir), reference=os.path.abspath(sft_run)))
  learner.close()
  summary["policy_dir"] = policy_dir
  return finish_stage(run_dir, summary)


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
    loop: learner_lib.RLLoopConfig = learner_lib.RLLoopConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    missing_stop_penalty: float = 0.0,
    seed: int = 0,
    stage_name: str = "grpo",
) -> dict[str, Any]:
  """GRPO from `sft_run`: group_size samples per prompt, group-relative
  advantages, k3 KL to the SFT reference in the loss, no critic. Rewards
  as in `ppo`. The run's checkpoints hold the policy LM itself."""
  policy = _load_policy(sft_run, model, mesh)
  _start(run_dir, stage_name, policy)
  records, prompt_counts = _prompts(prompt_files, policy.codec,
                                    rollout.prompt_len, reward == "judge")
  scorer, reward_info = _scorer(policy, reward, reward_run, reward_judge,
                                missing_stop_penalty, rollout.chunk_size)
  write_json(os.path.join(run_dir, "lineage.json"), _lineage(
      stage_name, policy, model_kind="policy",
      reference=os.path.abspath(sft_run), reward=reward_info,
      grpo=dataclasses.asdict(grpo_config), prompt_files=_files(prompt_files),
      prompts=prompt_counts))
  learner, summary = _train(
      run_dir, policy, grpo_lib.GRPO(grpo_config), "policy", None,
      lambda: None, records, scorer, rollout, loop, optimizer, checkpoint,
      seed)
  learner.close()
  return finish_stage(run_dir, summary)


@gin.configurable
def rlaif(
    run_dir: str = gin.REQUIRED,
    policy_run: str = gin.REQUIRED,
    prompt_files: Sequence[str] = gin.REQUIRED,
    judge: str = "judge",
    reward_run: str | None = None,
    judge_preset: str = "default",
    num_prompts: int = 256,
    config: rlaif_lib.RLAIFConfig = rlaif_lib.RLAIFConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    model: TransformerConfig | None = None,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    stage_name: str = "rlaif",
) -> dict[str, Any]:
  """Samples two responses per prompt from `policy_run` (any LM run with a
  chat template: SFT, DPO, GRPO, a PPO run's policy/), labels each pair with
  `judge` ("judge": the programmatic judge preset `judge_preset`;
  "reward_model": reward_run's model) and writes the kept pairs to
  <run_dir>/preferences.jsonl (the DPO stage's train_files) with the
  kept/filtered counts in rlaif_report.json."""
  policy = _load_policy(policy_run, model, mesh)
  _start(run_dir, stage_name, policy)
  records, prompt_counts = _prompts(prompt_files, policy.codec,
                                    rollout.prompt_len, judge == "judge")
  # A seeded sample of distinct prompts.
  records = next(learner_lib.PromptBatches(
      records, min(num_prompts, len(records)), seed=seed))
  scorer, judge_info = _scorer(policy, judge, reward_run, judge_preset, 0.0,
                               rollout.chunk_size)
  sample = rollout_lib.make_sampler(
      rollout_lib.default_generate(), policy.graphdef, policy.params,
      rollout.sampling_config(policy.codec.stop_ids, policy.codec.pad_id,
                              policy.codec.vocab_limit),
      rollout.chunk_size)
  greedy = None
  if config.include_greedy:
    greedy = rollout_lib.make_sampler(
        rollout_lib.default_generate(), policy.graphdef, policy.params,
        dataclasses.replace(rollout, temperature=0.0).sampling_config(
            policy.codec.stop_ids, policy.codec.pad_id,
            policy.codec.vocab_limit),
        rollout.chunk_size)
  pairs, report = rlaif_lib.generate_preferences(
      records, codec=policy.codec, rollout_cfg=rollout, sample=sample,
      scorer=scorer, cfg=config, seed=seed, id_prefix=stage_name,
      greedy=greedy)
  out = os.path.join(run_dir, "preferences.jsonl")
  rlaif_lib.write_jsonl(out, pairs)
  report.update(path=out, judge=judge_info, prompt_filter=prompt_counts)
  write_json(os.path.join(run_dir, "rlaif_report.json"), report)
  write_json(os.path.join(run_dir, "lineage.json"), _lineage(
      stage_name, policy, model_kind="preference_data",
      policy_run=os.path.abspath(policy_run), judge=judge_info,
      rlaif=dataclasses.asdict(config), prompt_files=_files(prompt_files),
      output={"path": out, "pairs": len(pairs)}))
  logging.info("rlaif: kept %d of %d pairs; filtered %s", report["kept"],
               report["prompts"], report["filtered_by_reason"])
  return finish_stage(run_dir, report)

