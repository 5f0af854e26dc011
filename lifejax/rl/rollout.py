"""Rollouts: prompt records -> sampled responses -> fixed-shape LM rows with
the policy's and the reference's log-probs, the critic's values and a score.

Row layout (one row per sample; P prompt columns, N = max_new_tokens,
T = P + N - 1): the left-padded prompt followed by the response (padded
after its stop token) is the sequence s (B, P + N);

  tokens = s[:, :-1], targets = s[:, 1:] (int32);
  loss_mask (f32) = 1 where targets[t] is a generated token, the stop token
    included (columns P - 1 .. P - 2 + length);
  segment_ids = 1 on real tokens, 0 on padding; positions count real tokens.

That is exactly what the sampler attends to, so teacher-forced log-probs of
a row are the sampling log-probs, and every shape is fixed by
(prompt_len, max_new_tokens): each jitted function compiles once.

A score per row comes from a `Scorer`: the programmatic judge on the decoded
response (`JudgeScorer`) or a reward model read at the last response token
and normalized with the reward run's statistics (`RewardModelScorer`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx

from lifejax import checks, sharding
from lifejax.data import batching, chat, chat_render, prompts as prompts_lib
from lifejax.eval import instruct
from lifejax.losses import common
from lifejax.model import heads, sampling
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import read_lineage
from lifejax.world import judge as judge_lib

Record = Mapping[str, Any]
Rows = dict[str, np.ndarray]
# The inputs a forward pass reads (and the targets its log-probs need).
FORWARD_KEYS = ("tokens", "targets", "positions", "segment_ids")

JUDGES: dict[str, judge_lib.JudgeConfig] = {
    "default": judge_lib.DEFAULT,
    "length_hackable": judge_lib.LENGTH_HACKABLE,
    "safety_hackable": judge_lib.SAFETY_HACKABLE,
}


def judge_config(name: str | judge_lib.JudgeConfig) -> judge_lib.JudgeConfig:
  """A judge preset by name (JUDGES), or a JudgeConfig as is."""
  if isinstance(name, judge_lib.JudgeConfig):
    return name
  if name not in JUDGES:
    raise KeyError(f"unknown judge {name!r}; choose one of {sorted(JUDGES)}")
  return JUDGES[name]


RATIO_DISTRIBUTIONS = ("full", "sampled")
SAMPLERS = ("kv_cache", "exact")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Sampling shapes and knobs.

  prompt_len: P, prompts are left-padded to it (longer prompts are an
    error: filter them with `fits`). chunk_size: rows per sampler / forward
    call (0 = the whole rollout batch at once); bounds memory on big models.

  ratio_distribution: which policy the learner's log-probs (the importance
    ratio, the KL to the reference, PPO's KL reward) are taken under.
    "full": the model's own softmax at temperature 1 (the default; what
    TRL and verl compute). "sampled": the distribution the sampler draws
    from (vocab limit, temperature, top-k, top-p, renormalized), so the
    ratio is against the truncated distribution actually sampled and is 1
    at the sampling params; needs temperature > 0. The reference is then
    scored at the same temperature and vocab limit but never truncated
    (a truncated reference makes the KL infinite on any draw outside its
    nucleus), so with top-k / top-p the KL starts above 0.
  sampler: "kv_cache" (default: prefill + cached decode steps) or "exact"
    (`sampling.generate_exact`: the learner's forward at the learner's row
    shape, N full forwards; its log-probs equal the learner's bit for bit).
  sampling_devices: the local devices the "kv_cache" sampler runs on, data
    parallel with the policy's params replicated on each (1: the default
    device, -1: all; `generation.Placement`). The learner's forwards stay
    on the training mesh.
  max_turns: assistant turns per sample (> 1: multi-turn rollouts with a
    tool, `rl.multiturn`); observation_len: the most ids one observation
    turn may take (a longer tool result is cut at word boundaries).
  Every rollout records the sampler's own log-probs (`Rollout.sample_logp`)
  and logs how far the learner's recomputation is from them
  (`rollout_metrics`: logp_mismatch_max, logp_mismatch_mean,
  behaviour_kl).
  """

  prompt_len: int = 256
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  chunk_size: int = 0
  ratio_distribution: str = "full"
  sampler: str = "kv_cache"
  sampling_devices: int = 1
  max_turns: int = 1
  observation_len: int = 96

  def __post_init__(self):
    checks.at_least("RolloutConfig.prompt_len", self.prompt_len, 1)
    checks.at_least("RolloutConfig.max_new_tokens", self.max_new_tokens, 1)
    # A negative temperature sampled as if greedy; a top_p above 1 (or 0)
    # was treated as "off" and a negative top_k failed inside the sampler.
    checks.at_least("RolloutConfig.temperature", self.temperature, 0.0)
    checks.at_least("RolloutConfig.top_k", self.top_k, 0)
    checks.in_range("RolloutConfig.top_p", self.top_p, 0.0, 1.0,
                    low_open=True)
    checks.at_least("RolloutConfig.chunk_size", self.chunk_size, 0)
    checks.choice("RolloutConfig.ratio_distribution",
                  self.ratio_distribution, RATIO_DISTRIBUTIONS)
    checks.choice("RolloutConfig.sampler", self.sampler, SAMPLERS)
    if self.sampling_devices == 0 or self.sampling_devices < -1:
      raise ValueError(f"RolloutConfig.sampling_devices="
                       f"{self.sampling_devices}: use a device count >= 1, "
                       "or -1 for all local devices")
    checks.at_least("RolloutConfig.max_turns", self.max_turns, 1)
    checks.at_least("RolloutConfig.observation_len", self.observation_len, 1)
    if self.ratio_distribution == "sampled" and self.temperature == 0:
      raise ValueError("RolloutConfig.ratio_distribution='sampled' needs "
                       "temperature > 0: greedy decoding has no log-probs")

  def learner_distribution(self, vocab_limit: int = 0
                           ) -> sampling.Distribution | None:
    """The distribution the learner scores targets under (None: the
    model's full softmax; see ratio_distribution)."""
    if self.ratio_distribution == "full":
      return None
    return sampling.Distribution(temperature=self.temperature,
                                 top_k=self.top_k, top_p=self.top_p,
                                 vocab_limit=vocab_limit)

  @property
  def response_len(self) -> int:
    """Columns after the prompt: every turn and every observation."""
    t = self.max_turns
    return t * self.max_new_tokens + (t - 1) * self.observation_len

  @property
  def context_len(self) -> int:
    """The widest context a turn is sampled from (the prompt, then every
    earlier turn and observation)."""
    return self.prompt_len + self.response_len - self.max_new_tokens

  @property
  def seq_len(self) -> int:
    return self.prompt_len + self.response_len - 1

  def sampling_config(self, stop_ids: Sequence[int], pad_id: int,
                      vocab_limit: int = 0) -> sampling.SamplingConfig:
    return sampling.SamplingConfig(
        max_new_tokens=self.max_new_tokens, temperature=self.temperature,
        top_k=self.top_k, top_p=self.top_p, stop_ids=tuple(stop_ids),
        pad_id=pad_id, vocab_limit=vocab_limit)


@dataclasses.dataclass(frozen=True)
class Codec:
  """How records become prompt ids and response ids become text.

  decode is None for token-level toys (no judge, no refusal metrics).
  """

  encode: Callable[[Record], list[int]]
  decode: Callable[[Sequence[int]], str] | None
  stop_ids: tuple[int, ...]
  pad_id: int
  vocab_limit: int = 0  # ids the tokenizer can decode (0 = any)
  # text -> ids following a generated assistant turn that add an
  # observation (user) turn and the next assistant prefix (multi-turn).
  observation: Callable[[str], list[int]] | None = None


def chat_codec(template: chat.ChatTemplate, tokenizer: chat_render.Tokenizer
               ) -> Codec:
  """Prompts rendered with a run's saved chat template; generation stops at
  the end-of-turn marker (or EOS)."""
  stops = tuple(chat_render.stop_ids(template, tokenizer))

  def encode(record: Record) -> list[int]:
    return prompts_lib.prompt_ids(template, tokenizer, record)

  def decode(ids: Sequence[int]) -> str:
    return tokenizer.decode([int(t) for t in ids if int(t) not in stops])

  def observation(text: str) -> list[int]:
    return chat_render.render_continuation(template, tokenizer, "user", text)

  return Codec(encode=encode, decode=decode, stop_ids=stops,
               pad_id=tokenizer.pad_id, vocab_limit=tokenizer.vocab_size,
               observation=observation)


def fits(records: Sequence[Record], codec: Codec, prompt_len: int
         ) -> tuple[list[Record], int]:
  """(records whose prompt fits in prompt_len tokens, number dropped)."""
  kept = [r for r in records if len(codec.encode(r)) <= prompt_len]
  return kept, len(records) - len(kept)


def build_rows(prompt_BxP: np.ndarray, mask_BxP: np.ndarray,
               response_BxN: np.ndarray, lengths_B: np.ndarray) -> Rows:
  """LM rows (B, P + N - 1) of left-padded prompts + responses (see the
  module docstring)."""
  b, p = prompt_BxP.shape
  n = response_BxN.shape[1]
  resp_mask_BxN = np.arange(n)[None, :] < np.asarray(lengths_B)[:, None]
  seq = np.concatenate([prompt_BxP, response_BxN], axis=1).astype(np.int32)
  real = np.concatenate([np.asarray(mask_BxP) > 0, resp_mask_BxN], axis=1)
  positions = np.maximum(np.cumsum(real, axis=1) - 1, 0).astype(np.int32)
  loss_mask = np.zeros((b, p + n - 1), np.float32)
  loss_mask[:, p - 1:] = resp_mask_BxN
  return {"tokens": seq[:, :-1], "targets": seq[:, 1:],
          "loss_mask": loss_mask,
          "positions": positions[:, :-1],
          "segment_ids": real[:, :-1].astype(np.int32)}


@dataclasses.dataclass
class Rollout:
  """One batch of samples, host arrays. Rows b*G .. b*G + G - 1 share a
  prompt when sampled with group_size G."""

  records: list[Record]
  rows: Rows
  response_BxN: np.ndarray
  lengths_B: np.ndarray
  stopped_B: np.ndarray
  texts: list[str] | None = None
  sample_logp: np.ndarray | None = None  # (B, T): the sampler's own
  old_logp: np.ndarray | None = None
  ref_logp: np.ndarray | None = None
  values: np.ndarray | None = None
  score_B: np.ndarray | None = None
  # Multi-turn rollouts (rl.multiturn): assistant turns and tool calls per
  # sample, whether an observation was cut, the exchange as messages.
  turns_B: np.ndarray | None = None
  tool_calls_B: np.ndarray | None = None
  observation_cut_B: np.ndarray | None = None
  transcripts: list[list[dict[str, str]]] | None = None

  @property
  def batch_size(self) -> int:
    return len(self.records)


def rollout_state(rollout: Rollout, **extra: Any) -> dict[str, Any]:
  """A JSON-ready copy of a sampled rollout (for an off-policy run's
  checkpoint): records, responses, lengths, scores and the sampling-time
  log-probs of the response tokens (f32 values survive JSON exactly).
  Values and reference log-probs are not kept: they are recomputed."""
  p = rollout.rows["tokens"].shape[1] - rollout.response_BxN.shape[1] + 1
  n = rollout.response_BxN.shape[1]

  def response_part(x):
    return None if x is None else np.asarray(
        x, np.float32)[:, p - 1:p - 1 + n].tolist()

  return {"records": [dict(r) for r in rollout.records],
          "response": rollout.response_BxN.tolist(),
          "lengths": rollout.lengths_B.tolist(),
          "score": (None if rollout.score_B is None
                    else np.asarray(rollout.score_B, np.float32).tolist()),
          "old_logp": response_part(rollout.old_logp),
          "sample_logp": response_part(rollout.sample_logp), **extra}


def rollout_from_state(state: Mapping[str, Any], codec: Codec,
                       cfg: RolloutConfig) -> Rollout:
  """The rollout `rollout_state` saved, rows rebuilt from its records with
  `codec` (ref_logp and values None: recompute them)."""
  records = list(state["records"])
  prompt_BxP, mask_BxP = prompts_lib.left_pad(
      [codec.encode(r) for r in records], cfg.prompt_len, codec.pad_id)
  response = np.asarray(state["response"], np.int32)
  lengths = np.asarray(state["lengths"], np.int32)
  rows = build_rows(prompt_BxP, mask_BxP, response, lengths)
  last = response[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
  p, n = prompt_BxP.shape[1], response.shape[1]

  def full(x):
    if x is None:
      return None
    out = np.zeros(rows["targets"].shape, np.float32)
    out[:, p - 1:p - 1 + n] = np.asarray(x, np.float32)
    return out

  texts = None if codec.decode is None else [
      codec.decode(response[i, :lengths[i]]) for i in range(len(lengths))]
  return Rollout(
      records=records, rows=rows, response_BxN=response, lengths_B=lengths,
      stopped_B=(lengths > 0) & np.isin(last, codec.stop_ids), texts=texts,
      sample_logp=full(state.get("sample_logp")),
      old_logp=full(state.get("old_logp")),
      score_B=(None if state.get("score") is None
               else np.asarray(state["score"], np.float32)))


class Scorer(Protocol):
  """rollout -> (B,) f32 scores (the reward of each sample)."""

  def __call__(self, rollout: Rollout) -> np.ndarray: ...


def group_prompts(records: Sequence[Record], codec: Codec, prompt_len: int,
                  group_size: int
                  ) -> tuple[list[Record], list[list[int]], np.ndarray,
                             np.ndarray]:
  """(records repeated group_size times, their prompt ids, left-padded
  (B, prompt_len) prompts and mask); ValueError on a prompt too long."""
  prompts = [list(codec.encode(r)) for r in records]
  too_long = [len(p) for p in prompts if len(p) > prompt_len]
  if too_long:
    raise ValueError(f"{len(too_long)} prompt(s) exceed prompt_len="
                     f"{prompt_len} tokens (longest {max(too_long)}); "
                     "filter them with rollout.fits")
  rows = [p for p in prompts for _ in range(group_size)]
  prompt_BxP, mask_BxP = prompts_lib.left_pad(rows, prompt_len, codec.pad_id)
  return ([r for r in records for _ in range(group_size)], rows, prompt_BxP,
          mask_BxP)


def collect(
    records: Sequence[Record],
    *,
    codec: Codec,
    cfg: RolloutConfig,
    sample: Callable[[np.ndarray, np.ndarray, jax.Array],
                     tuple[Any, Any]],
    rng: jax.Array,
    group_size: int = 1,
    stats: Callable[[Rows], tuple[np.ndarray, np.ndarray | None]] | None = None,
    ref_logp: Callable[[Rows], np.ndarray] | None = None,
    scorer: Scorer | None = None,
) -> Rollout:
  """Samples `group_size` responses per record and fills a `Rollout`.

  sample(prompt_BxP, mask_BxP, rng) -> (tokens_BxN, lengths_B) or
  (tokens_BxN, lengths_B, logp_BxN) with the sampler's own log-probs of
  the drawn tokens (kept as `sample_logp`, (B, T) aligned with targets);
  stats(rows) -> (policy log-probs, values or None); ref_logp(rows) ->
  reference log-probs; each (B, T).
  """
  rows_records, prompts, prompt_BxP, mask_BxP = group_prompts(
      records, codec, cfg.prompt_len, group_size)
  drawn = sample(prompt_BxP, mask_BxP, rng)
  tokens_BxN, lengths_B = drawn[:2]
  tokens_BxN = np.asarray(tokens_BxN, np.int32)
  lengths_B = np.asarray(lengths_B, np.int32)
  last_B = tokens_BxN[np.arange(len(lengths_B)), np.maximum(lengths_B - 1, 0)]
  stopped_B = (lengths_B > 0) & np.isin(last_B, codec.stop_ids)
  out = Rollout(records=rows_records,
                rows=build_rows(prompt_BxP, mask_BxP, tokens_BxN, lengths_B),
                response_BxN=tokens_BxN, lengths_B=lengths_B,
                stopped_B=stopped_B)
  if len(drawn) > 2:
    p, n = prompt_BxP.shape[1], tokens_BxN.shape[1]
    logp = np.zeros(out.rows["targets"].shape, np.float32)
    logp[:, p - 1:p - 1 + n] = np.asarray(drawn[2], np.float32)
    out.sample_logp = logp * out.rows["loss_mask"]
  if codec.decode is not None:
    out.texts = [codec.decode(tokens_BxN[i, :lengths_B[i]])
                 for i in range(len(lengths_B))]
  forward_rows = {k: out.rows[k] for k in FORWARD_KEYS}
  if stats is not None:
    out.old_logp, out.values = stats(forward_rows)
  if ref_logp is not None:
    out.ref_logp = ref_logp(forward_rows)
  if scorer is not None:
    out.score_B = np.asarray(scorer(out), np.float32)
  return out


# -- scorers -------------------------------------------------------------------


class JudgeScorer:
  """The programmatic judge's total on each decoded response."""

  def __init__(self, config: judge_lib.JudgeConfig = judge_lib.DEFAULT):
    self.config = config

  def __call__(self, rollout: Rollout) -> np.ndarray:
    if rollout.texts is None:
      raise ValueError("the judge needs decoded responses (a Codec with "
                       "decode)")
    return np.asarray([judge_lib.score(r, t, self.config).total
                       for r, t in zip(rollout.records, rollout.texts)],
                      np.float32)


class MissingStopPenalty:
  """Wraps a scorer: subtracts `penalty` from samples that never emitted a
  stop token (truncated at max_new_tokens), so length is not free."""

  def __init__(self, scorer: Scorer, penalty: float):
    self.scorer, self.penalty = scorer, penalty

  def __call__(self, rollout: Rollout) -> np.ndarray:
    score_B = np.asarray(self.scorer(rollout), np.float32)
    return score_B - np.float32(self.penalty) * (~rollout.stopped_B)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _last_scalar(graphdef: nnx.GraphDef, mesh: Any, rules: sharding.Rules,
                 params: Any, rows: Rows) -> jax.Array:
  with sharding.activation_sharding(mesh, rules):
    values_BxT = common.model_forward(graphdef, params, rows)
  return heads.last_token_values(values_BxT, rows["loss_mask"])


class RewardModelScorer:
  """A reward model's score at the last response token, normalized:
  (r - mean) / std with the reward run's held-out statistics."""

  def __init__(self, graphdef: nnx.GraphDef, params: Any, mean: float,
               std: float, mesh: Any, rules: sharding.Rules,
               chunk_size: int = 0):
    if not std > 0:
      raise ValueError(f"reward std must be > 0, got {std}")
    self.graphdef, self.params = graphdef, params
    self.mean, self.std = float(mean), float(std)
    self.mesh, self.rules, self.chunk_size = mesh, rules, chunk_size

  def raw(self, rows: Rows) -> np.ndarray:
    """Unnormalized rewards (B,) of LM rows (tokens, positions,
    segment_ids, loss_mask)."""
    keys = ("tokens", "positions", "segment_ids", "loss_mask")

    def one(chunk, _):
      chunk = sharding.put(chunk, sharding.batch_shardings(
          chunk, self.mesh, self.rules))
      with jax.set_mesh(self.mesh):
        return _last_scalar(self.graphdef, self.mesh, self.rules,
                            self.params, chunk)

    return batching.map_padded(one, {k: rows[k] for k in keys},
                               self.chunk_size)

  def __call__(self, rollout: Rollout) -> np.ndarray:
    return ((self.raw(rollout.rows) - self.mean) / self.std).astype(
        np.float32)


def abstract_params(model_cls: type[nnx.Module], cfg: TransformerConfig,
                    mesh: Any, rules: sharding.Rules
                    ) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, abstract params pure dict, PartitionSpecs pure dict)."""
  graphdef, abstract = nnx.split(heads.abstract(model_cls, cfg), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  return graphdef, nnx.to_pure_dict(abstract), specs


def load_reward_scorer(reward_run: str, mesh: Any, rules: sharding.Rules,
                       chunk_size: int = 0) -> RewardModelScorer:
  """The reward model of a reward run directory (a lineage of model_kind
  "reward", checkpoints, reward statistics)."""
  lineage = read_lineage(reward_run)
  if lineage.model_kind != "reward":
    raise ValueError(f"{reward_run} is not a reward-model run (model_kind="
                     f"{lineage.model_kind!r})")
  stats_path = RunDir(reward_run).reward_stats
  if not os.path.exists(stats_path):
    raise FileNotFoundError(f"{stats_path} is missing: the reward stage "
                            "writes it after its held-out evaluation")
  with open(stats_path, encoding="utf-8") as f:
    stats = json.load(f)
  graphdef, params = artifacts.load_params(
      reward_run, heads.RewardModel, artifacts.load_model_config(reward_run),
      mesh, rules)
  return RewardModelScorer(graphdef, params, stats["mean"], stats["std"],
                           mesh, rules, chunk_size)


# -- what every RL run logs about its samples --------------------------------


def judgeable(record: Record) -> bool:
  return (record.get("task") in judge_lib.JUDGED_TASKS
          and isinstance(record.get("reference"), Mapping))


def logp_mismatch(sample_logp: np.ndarray, learner_logp: np.ndarray,
                  mask: np.ndarray) -> dict[str, float]:
  """How far the learner's log-probs are from the sampler's on the same
  tokens and params (response tokens only): the largest and mean |diff|,
  and behaviour_kl = mean over samples of sum_t (sampler - learner), the
  k1 estimate of KL(sampler || learner). All exactly 0 when the rollout is
  truly on-policy (RolloutConfig sampler="exact", ratio_distribution=
  "sampled")."""
  on = np.asarray(mask) > 0
  diff = (np.asarray(sample_logp, np.float64)
          - np.asarray(learner_logp, np.float64))
  if not on.any():
    return {}
  return {"logp_mismatch_max": float(np.max(np.abs(diff[on]))),
          "logp_mismatch_mean": float(np.mean(np.abs(diff[on]))),
          "behaviour_kl": float(np.mean(np.sum(np.where(on, diff, 0.0),
                                               axis=1)))}


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
  """reward (mean score), KL to the reference (k1 and k3, summed over a
  response, mean over samples), response length (tokens incl. the stop
  token), stop rate, the sampler-vs-learner log-prob mismatch
  (`logp_mismatch`); with decoded text: true_judge (the DEFAULT judge, the
  reward-hacking detector, whatever the training reward is) and
  refusal_rate."""
  mask = rollout.rows["loss_mask"]
  out = {"response_length": float(np.mean(rollout.lengths_B)),
         "stop_rate": float(np.mean(rollout.stopped_B))}
  if rollout.score_B is not None:
    out["reward"] = float(np.mean(rollout.score_B))
    out["reward_std"] = float(np.std(rollout.score_B))
  if rollout.old_logp is not None and rollout.ref_logp is not None:
    log_ratio = (rollout.old_logp - rollout.ref_logp).astype(np.float64)
    out["kl"] = float(np.mean(np.sum(log_ratio * mask, axis=1)))
    k3 = np.expm1(-log_ratio) + log_ratio
    out["kl_k3"] = float(np.mean(np.sum(k3 * mask, axis=1)))
  if rollout.sample_logp is not None and rollout.old_logp is not None:
    out.update(logp_mismatch(rollout.sample_logp, rollout.old_logp, mask))
  if rollout.turns_B is not None:
    out["turns"] = float(np.mean(rollout.turns_B))
    out["tool_call_rate"] = float(np.mean(rollout.tool_calls_B > 0))
    out["observation_cut_rate"] = float(np.mean(rollout.observation_cut_B))
  if rollout.texts is not None:
    judged = [judge_lib.score(r, t).total
              for r, t in zip(rollout.records, rollout.texts) if judgeable(r)]
    if judged:
      out["true_judge"] = float(np.mean(judged))
    out["refusal_rate"] = float(np.mean(
        [instruct.looks_like_refusal(t) for t in rollout.texts]))
  return out


def sample_records(rollout: Rollout,
                   extra: Mapping[str, Sequence[Any]] | None = None
                   ) -> list[dict[str, Any]]:
  """JSON-ready per-sample records (prompt, response, score, true judge)."""
  out = []
  for i, rec in enumerate(rollout.records):
    row = {"id": rec.get("id"), "task": rec.get("task"),
           "length": int(rollout.lengths_B[i]),
           "stopped": bool(rollout.stopped_B[i])}
    if rollout.texts is not None:
      row["response"] = rollout.texts[i]
      if judgeable(rec):
        row["true_judge"] = judge_lib.score(rec, rollout.texts[i]).total
    else:
      row["response_ids"] = rollout.response_BxN[
          i, :rollout.lengths_B[i]].tolist()
    if rollout.score_B is not None:
      row["score"] = float(rollout.score_B[i])
    if rollout.transcripts is not None:
      row["transcript"] = rollout.transcripts[i]
    row.update({k: v[i] for k, v in (extra or {}).items()})
    out.append(row)
  return out
