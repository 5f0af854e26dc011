"""What the RL stages (PPO, GRPO, RLAIF) share: the policy loaded from an
LM run, the prompts it can take, the reward (a reward-model run, the
programmatic judge or, for PPO and GRPO, a Python function) and the
lineage of an RL run."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from lifejax import checks, sharding
from lifejax.data import chat, validation
from lifejax.data.jsonl import read_checked
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import grpo as grpo_lib, iteration as iteration_lib
from lifejax.rl import ppo as ppo_lib, rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.run.lineage import Lineage, file_inputs
from lifejax.stages import runner
from lifejax.world import judge as judge_lib

for _cls in (ppo_lib.PPOConfig, grpo_lib.GRPOConfig, rlaif_lib.RLAIFConfig,
             rollout_lib.RolloutConfig, iteration_lib.RLLoopConfig,
             judge_lib.JudgeConfig):
  gin.external_configurable(_cls, module="lifejax")

REWARDS = ("reward_model", "judge")
# PPO and GRPO also take a reward function: reward="python", reward_fn=fn.
PYTHON = "python"
# fn(prompt record, response text) -> float.
RewardFn = Callable[[Mapping[str, Any], str], float]


@dataclasses.dataclass
class Policy:
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


def load_policy(run: str, model: TransformerConfig | None,
                 mesh_cfg: sharding.MeshConfig) -> Policy:
  saved = artifacts.load_model_config(run)
  if model is not None:
    artifacts.check_shape(run, saved, model)
  cfg = model or saved
  template = artifacts.load_template(run)
  tokenizer = artifacts.load_tokenizer(run)
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, params = artifacts.load_params(
      run, transformer.Transformer, cfg, mesh, mesh_cfg.rules)
  return Policy(run, cfg, template, tokenizer,
                 rollout_lib.chat_codec(template, tokenizer), mesh,
                 mesh_cfg.rules, graphdef, params)


def prompts(files: Sequence[str], codec: rollout_lib.Codec, prompt_len: int,
             need_judge: bool, *, bad_records: str = validation.TRAIN_POLICY,
             log: validation.SkipLog | None = None
             ) -> tuple[list[dict], dict[str, int]]:
  """Prompt records that fit in prompt_len (and that the judge can score,
  when it is the reward), with the counts of what was dropped.

  A record whose prompt the codec cannot render (no "prompt"/"messages"
  list, unknown role, empty turn, ...) is a bad record under `bad_records`
  (validation.py: "strict" raises `path:line: reason`, "skip" counts). Too
  long and unjudgeable prompts are left out under either policy (counted
  as "too_long" / "unjudgeable"). Per-file counts go to `log`.
  """
  def renders(record: dict) -> None:
    codec.encode(record)  # raises a RecordError for a malformed prompt

  records: list[dict] = []
  dropped: collections.Counter = collections.Counter()
  for path in files:
    kept, _, counts = read_checked(path, renders, policy=bad_records,
                                   what="prompts")
    if need_judge:
      judged = [r for r in kept if rollout_lib.judgeable(r)]
      if len(judged) < len(kept):
        counts.skipped["unjudgeable"] += len(kept) - len(judged)
      kept = judged
    kept, n_long = rollout_lib.fits(kept, codec, prompt_len)
    if n_long:
      counts.skipped["too_long"] += n_long
    dropped.update(unjudgeable=counts.skipped["unjudgeable"],
                   too_long=counts.skipped["too_long"])
    if log is not None:
      log.put(path, counts, kind="prompts", policy=bad_records)
    records += kept
  too_long, unjudgeable = dropped["too_long"], dropped["unjudgeable"]
  if not records:
    raise validation.RecordError(
        ", ".join(files), "no_usable_prompts", f"too long for prompt_len="
        f"{prompt_len}: {too_long}, unjudgeable: {unjudgeable}")
  if too_long or unjudgeable:
    logging.info("prompts: dropped %d too long, %d unjudgeable", too_long,
                 unjudgeable)
  return records, {"kept": len(records), "too_long": too_long,
                   "unjudgeable": unjudgeable}


def check_reward(stage: str, reward: str, reward_run: str | None,
                  judge: str | judge_lib.JudgeConfig, *,
                  reward_field: str = "reward",
                  judge_field: str = "reward_judge",
                  check_run: bool = True,
                  reward_fn: RewardFn | None = None,
                  fn_field: str | None = None) -> None:
  """Errors naming the stage's reward options, before anything is loaded.

  The judge preset (`judge_field`) applies only to the judge reward; a
  non-default one with the reward model is an error. With `check_run`, so is
  a reward_run that the judge reward leaves unused. A stage that names its
  reward-function option (`fn_field`) also takes `reward="python"`, which
  needs that function (signature checked here) and nothing else.
  """
  choices = REWARDS + ((PYTHON,) if fn_field else ())
  checks.choice(f"{stage}.{reward_field}", reward, choices)
  if fn_field and reward_fn is not None and reward != PYTHON:
    raise checks.unused(f"{stage}.{fn_field}",
                        f"{stage}.{reward_field} is {reward!r}; set it to "
                        f"{PYTHON!r} to train on the function")
  if reward in ("reward_model", PYTHON) and not (
      isinstance(judge, str) and judge == "default"):
    raise checks.unused(f"{stage}.{judge_field}",
                        f"{stage}.{reward_field} is {reward!r}; the judge "
                        'preset applies only to "judge"')
  if reward == PYTHON:
    if reward_fn is None:
      raise ValueError(f'{stage}.{reward_field}="{PYTHON}" needs '
                       f"{stage}.{fn_field} (fn(record, response) -> float)")
    check_reward_fn(f"{stage}.{fn_field}", reward_fn)
  elif reward == "reward_model":
    if not reward_run:
      raise ValueError(f'{stage}.{reward_field}="reward_model" needs '
                       f"{stage}.reward_run")
    return
  elif isinstance(judge, str):
    checks.choice(f"{stage}.{judge_field}", judge, sorted(rollout_lib.JUDGES))
  if check_run and reward_run:
    raise checks.unused(f"{stage}.reward_run",
                        f"{stage}.{reward_field} is {reward!r}")


def function_name(fn: Any) -> str:
  """`module.qualname` of a function (the repr of any other callable)."""
  module, qualname = (getattr(fn, "__module__", None),
                      getattr(fn, "__qualname__", None))
  return f"{module}.{qualname}" if module and qualname else repr(fn)


def check_reward_fn(option: str, fn: Any) -> None:
  """TypeError naming `option` unless `fn` can be called as fn(record,
  response). A callable without an inspectable signature passes here and
  is checked by its first call."""
  if not callable(fn):
    raise TypeError(f"{option}={fn!r} is not callable; bind a function, "
                    f"e.g. {option} = @my_module.my_reward")
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):
    return
  try:
    signature.bind({}, "")
  except TypeError as e:
    raise TypeError(f"{option}={function_name(fn)}{signature} cannot be "
                    "called as fn(record, response) -> float, the reward "
                    f"function's signature ({e})") from None


class FunctionScorer:
  """A reward function on each decoded response: `fn(record, response)`,
  record being the prompt record as read from the prompt file (every field,
  e.g. a reference answer; read-only) and response the sampled text
  without the stop marker. Each result must be a finite real number."""

  def __init__(self, fn: RewardFn, option: str = "reward_fn"):
    self.fn, self.option, self.name = fn, option, function_name(fn)

  def __call__(self, rollout: rollout_lib.Rollout) -> np.ndarray:
    if rollout.texts is None:
      raise ValueError(f"{self.option}={self.name} needs decoded responses "
                       "(a Codec with decode)")
    score_B = np.empty(rollout.batch_size, np.float32)
    for i, (record, text) in enumerate(zip(rollout.records, rollout.texts)):
      value = self.fn(record, text)
      where = (f"{self.option}={self.name} returned {value!r} for prompt "
               f"{record.get('id', i)!r}")
      if (not isinstance(value, numbers.Real)
          or isinstance(value, (bool, np.bool_))):
        raise TypeError(f"{where}: a reward function returns a float, got "
                        f"{type(value).__name__}")
      if not math.isfinite(value):
        raise ValueError(f"{where}: a reward must be finite")
      score_B[i] = value
    return score_B


def value_init(value_model: str, value_init: str | None,
                reward_run: str | None) -> str | None:
  """ppo's critic backbone: value_init as given, or for None "reward_model"
  when reward_run is given, else "sft"; None for a shared critic (a value
  head on the policy's trunk), which value_init cannot apply to."""
  checks.choice("ppo.value_model", value_model, ("separate", "shared"))
  if value_init is not None:
    checks.choice("ppo.value_init", value_init, ("reward_model", "sft"))
    if value_model == "shared":
      raise checks.unused("ppo.value_init",
                          'ppo.value_model is "shared": the critic is a '
                          "value head on the policy's trunk")
  elif value_model == "separate":
    value_init = "reward_model" if reward_run else "sft"
  if value_init == "reward_model" and not reward_run:
    raise ValueError('ppo.value_init="reward_model" needs ppo.reward_run')
  return value_init


def check_batches(algorithm: Any, rollout: rollout_lib.RolloutConfig,
                   loop: iteration_lib.RLLoopConfig) -> None:
  """Rollout rows must split into minibatches and chunks; checked before
  the first rollout instead of after it."""
  rows = loop.prompts_per_iteration * algorithm.group_size
  if rows % loop.minibatch_size:
    raise ValueError(f"RLLoopConfig.minibatch_size={loop.minibatch_size} "
                     f"does not divide the {rows} rollout rows per iteration "
                     "(prompts_per_iteration x group_size)")
  if rollout.chunk_size and rows % rollout.chunk_size:
    raise ValueError(f"RolloutConfig.chunk_size={rollout.chunk_size} does "
                     f"not divide the {rows} rollout rows per iteration")


def scorer(policy: Policy, reward: str, reward_run: str | None,
            reward_judge: str | judge_lib.JudgeConfig,
            missing_stop_penalty: float, chunk_size: int,
            reward_fn: RewardFn | None = None
            ) -> tuple[rollout_lib.Scorer, dict[str, Any]]:
  """The reward of each sample and its lineage record (`kind`: reward_model,
  judge or python, the last with the function's `module.qualname`)."""
  if reward not in REWARDS + (PYTHON,):
    raise ValueError(f"reward={reward!r}: choose one of "
                     f"{REWARDS + (PYTHON,)}")
  if reward == PYTHON:
    if reward_fn is None:
      raise ValueError(f'reward="{PYTHON}" needs reward_fn')
    scorer = FunctionScorer(reward_fn)
    info = {"kind": PYTHON, "function": scorer.name}
  elif reward == "reward_model":
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


def lineage(stage_name: str, policy: Policy, model_kind: str,
            prompt_files: Sequence[str], **details: Any) -> Lineage:
  """The lineage of an RL run (or of the policy it exports)."""
  return Lineage(
      stage=stage_name, model_kind=model_kind, model=policy.cfg,
      init_from=os.path.abspath(policy.run),
      reference=(os.path.abspath(policy.run)
                 if model_kind != "preference_data" else None),
      tokenizer=runner.tokenizer_ref(policy.tokenizer, policy.run),
      chat_template=policy.template.to_dict(),
      inputs={"prompt_files": file_inputs(prompt_files)}, details=details)


def eval_prompts(files: Sequence[str], policy: Policy,
                 rollout: rollout_lib.RolloutConfig, reward: str, *,
                 bad_records: str = validation.EVAL_POLICY,
                 log: validation.SkipLog | None = None) -> list[dict]:
  """Dev prompts for an RL run's eval/reward (empty without files); a bad
  record is an error by default (an eval set, validation.py)."""
  if not files:
    return []
  return prompts(files, policy.codec, rollout.prompt_len,
                 reward == "judge", bad_records=bad_records, log=log)[0]


@dataclasses.dataclass
class Start:
  """An RL run's loaded policy, its usable prompts (with the counts of
  those dropped) and its reward."""

  policy: Policy
  records: list[dict]
  prompt_counts: dict[str, int]
  scorer: rollout_lib.Scorer
  reward_info: dict[str, Any]
  # What the prompt files held, per file (summary.json's input_records).
  inputs: validation.SkipLog = dataclasses.field(
      default_factory=validation.SkipLog)


def start(policy_run: str,
          model: TransformerConfig | None, mesh: sharding.MeshConfig,
          prompt_files: Sequence[str], rollout: rollout_lib.RolloutConfig,
          reward: str, reward_run: str | None,
          reward_judge: str | judge_lib.JudgeConfig,
          missing_stop_penalty: float,
          reward_fn: RewardFn | None = None) -> Start:
  """Loads the policy run, keeps the prompts that fit and builds the
  reward."""
  policy = load_policy(policy_run, model, mesh)
  inputs = validation.SkipLog()
  records, counts = prompts(prompt_files, policy.codec, rollout.prompt_len,
                            reward == "judge", log=inputs)
  score, info = scorer(policy, reward, reward_run, reward_judge,
                       missing_stop_penalty, rollout.chunk_size, reward_fn)
  return Start(policy, records, counts, score, info, inputs)
