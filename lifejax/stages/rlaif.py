"""AI-judged preferences (RLAIF): sample pairs from a policy run, label
them with the programmatic judge or a reward model, keep the decisive ones
as the DPO stage's training data."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax import checks, sharding
from lifejax.data.jsonl import write_jsonl
from lifejax.eval import generation
from lifejax.model.config import TransformerConfig
from lifejax.rl import iteration as iteration_lib, rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run.lineage import write_lineage
from lifejax.stages import rl_common, runner


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
  rl_common.check_reward("rlaif", judge, reward_run, judge_preset,
                reward_field="judge", judge_field="judge_preset")
  checks.at_least("rlaif.num_prompts", num_prompts, 1)
  for rows in ({config.prompts_per_batch * config.samples_per_prompt}
               | ({config.prompts_per_batch} if config.include_greedy
                  else set())):
    if rollout.chunk_size and rows % rollout.chunk_size:
      raise ValueError(f"RolloutConfig.chunk_size={rollout.chunk_size} does "
                       f"not divide the {rows} rows of an RLAIF batch")
  st = rl_common.start(policy_run, model, mesh, prompt_files, rollout,
                       judge, reward_run, judge_preset,
                       missing_stop_penalty=0.0)
  policy, scorer, judge_info = st.policy, st.scorer, st.reward_info
  prompt_counts = st.prompt_counts
  run = runner.start_run(run_dir, stage_name, policy.template)
  # A seeded sample of distinct prompts.
  records = next(iteration_lib.PromptBatches(
      st.records, min(num_prompts, len(st.records)), seed=seed))
  sample = generation.make_sampler(
      generation.default_sample_fn(), policy.graphdef, policy.params,
      rollout.sampling_config(policy.codec.stop_ids, policy.codec.pad_id,
                              policy.codec.vocab_limit),
      rollout.chunk_size, rollout.sampling_devices)
  greedy = None
  if config.include_greedy:
    greedy = generation.make_sampler(
        generation.default_sample_fn(), policy.graphdef, policy.params,
        dataclasses.replace(rollout, temperature=0.0).sampling_config(
            policy.codec.stop_ids, policy.codec.pad_id,
            policy.codec.vocab_limit),
        rollout.chunk_size, rollout.sampling_devices)
  pairs, report = rlaif_lib.generate_preferences(
      records, codec=policy.codec, rollout_cfg=rollout, sample=sample,
      scorer=scorer, cfg=config, seed=seed, id_prefix=stage_name,
      greedy=greedy)
  out = write_jsonl(run.preferences, pairs)
  report.update(path=out, judge=judge_info, prompt_filter=prompt_counts,
                **st.inputs.summary(stage_name))
  with open(run.rlaif_report, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2, default=str)
  write_lineage(run.root, rl_common.lineage(
      stage_name, policy, "preference_data", prompt_files,
      policy_run=os.path.abspath(policy_run), judge=judge_info,
      rlaif=dataclasses.asdict(config),
      output={"path": out, "pairs": len(pairs)}))
  logging.info("rlaif: kept %d of %d pairs; filtered %s", report["kept"],
               report["prompts"], report["filtered_by_reason"])
  return runner.finish_run(run, report)

