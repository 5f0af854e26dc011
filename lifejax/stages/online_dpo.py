"""Online (iterative) DPO: rounds of sampling from the current policy,
AI-judged pairs and preference-loss updates, in one run on the one runner.

Round r (0-based) starts at engine step r * steps_per_round + 1:
  1. it draws `prompts_per_round` prompts (a seeded, resumable stream);
  2. the policy in the engine's current train state samples
     `pairs.samples_per_prompt` responses to each, which the programmatic
     judge or a reward-model run scores; a prompt's best response against
     its worst one becomes a pair, and ties, low margins, truncated,
     identical and empty samples are dropped and counted
     (`rl.rlaif.generate_preferences`, the RLAIF stage's code);
  3. the kept pairs are rendered with the chat template (as the DPO stage
     renders a preference file: the decoded text re-tokenized, plus the
     end-of-turn marker) and get reference log-probs from the starting
     policy (`reference="initial"`, the iterative-DPO default) or from the
     policy at the start of the round (`reference="round"`: every round's
     first step then has DPO loss log 2);
  4. the round takes `steps_per_round` engine steps of the registered
     preference loss on minibatches of `batch_size` of its pairs (seeded
     passes over them; with fewer pairs than batch_size a minibatch repeats
     pairs). A round that kept no pair takes its steps on empty batches
     (weight 0: no gradient, though Adam's momentum still moves) and logs a
     warning.
So a round is what an RLAIF run followed by a DPO run on its pairs would
do, with the policy of the previous round as the sampler.

Rounds = LoopConfig.num_steps / steps_per_round; checkpoints and evals fall
on round boundaries (CheckpointConfig.every_steps and LoopConfig.eval_every
must be multiples of steps_per_round), where the source's state (round,
prompt position, the per-round counts) is saved, so a resumed run redoes
exactly the rounds after its checkpoint. Each round logs (in the metrics
row of its first step) round, prompts, pairs, ties, filtered and
filtered_<reason>, mean_score, mean_best_score, mean_margin and
truncated_pairs, and writes its pairs to samples/iter_<round>.jsonl.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import checks, sharding
from lifejax.data import preference, sft as sft_data, validation
from lifejax.data.batching import example_pair_batch
from lifejax.data.jsonl import write_jsonl
from lifejax.eval import generation as generation_lib, instruct, reward_eval
from lifejax.losses import dpo as dpo_lib, registry
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.rl import iteration as iteration_lib, rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.stages import pairs as pairs_lib, rl_common, runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

REFERENCES = ("initial", "round")


@dataclasses.dataclass(frozen=True)
class OnlineDPOConfig:
  """The rounds: prompts sampled per round, engine steps per round, and
  which policy is the reference ("initial": the starting policy; "round":
  the policy at the start of each round)."""

  prompts_per_round: int = 64
  steps_per_round: int = 8
  reference: str = "initial"

  def __post_init__(self):
    checks.at_least("OnlineDPOConfig.prompts_per_round",
                    self.prompts_per_round, 1)
    checks.at_least("OnlineDPOConfig.steps_per_round", self.steps_per_round,
                    1)
    checks.choice("OnlineDPOConfig.reference", self.reference, REFERENCES)


gin.external_configurable(OnlineDPOConfig, module="lifejax")


def round_seed(seed: int, rnd: int) -> int:
  """The sampling seed of round `rnd` (0-based) of a run seeded `seed`."""
  return int(np.random.SeedSequence([seed, rnd]).generate_state(1)[0])


def round_order(n_pairs: int, steps: int, batch_size: int, seed: int,
                rnd: int) -> np.ndarray:
  """(steps, batch_size) pair indices of a round: consecutive seeded
  permutations of range(n_pairs), cut into minibatches."""
  rng = np.random.default_rng([seed, rnd, 1])
  need = steps * batch_size
  idx = np.concatenate([rng.permutation(n_pairs)
                        for _ in range(-(-need // n_pairs))])
  return idx[:need].reshape(steps, batch_size)


def truncated_pairs(records: Sequence[dict[str, Any]], render: Any,
                    seq_len: int) -> int:
  """How many pairs have a side longer than seq_len + 1 tokens (which
  `preference.response_row` cuts)."""
  return sum(any(sum(map(len, render({**rec, "response": rec[side]})))
                 > seq_len + 1 for side in ("chosen", "rejected"))
             for rec in records)


class OnlineRounds:
  """The stage's data source (`train.loop.DataIterator` with
  `next_batch(state)`): a round's pairs, sampled and labelled from the
  policy in `state` when the previous round's minibatches are used up.

  label(params, prompt records, rnd) -> (pair records, rlaif report);
  rows(pair records, ref_params) -> (chosen rows, rejected rows, number
  truncated), with "ref_logp" when the loss needs it; policy(state) -> the
  current policy's params; initial_ref: the starting policy's params
  (reference "initial"); pairs_file(round) -> where a round's pairs go.
  """

  def __init__(self, *, prompts: iteration_lib.PromptBatches,
               label: Callable[[Any, list, int], tuple[list, dict]],
               rows: Callable[[list, Any], tuple[dict, dict, int]],
               policy: Callable[[Any], Any], initial_ref: Any,
               cfg: OnlineDPOConfig, batch_size: int, seq_len: int,
               seed: int, with_ref: bool, pairs_file: Callable[[int], str]):
    self.prompts, self.label, self.rows = prompts, label, rows
    self.policy, self.initial_ref, self.cfg = policy, initial_ref, cfg
    self.batch_size, self.seed, self.pairs_file = batch_size, seed, pairs_file
    self.empty = example_pair_batch(batch_size, seq_len,
                                    with_ref_logp=with_ref)
    self.round = 0
    self.history: list[dict[str, float]] = []
    self._queue: list[dict[str, dict[str, np.ndarray]]] = []
    self._metrics: dict[str, float] = {}

  def next_batch(self, state: Any) -> dict[str, dict[str, np.ndarray]]:
    if not self._queue:
      self._start_round(self.policy(state))
    return self._queue.pop(0)

  def _start_round(self, params: Any) -> None:
    rnd, steps = self.round, self.cfg.steps_per_round
    records, report = self.label(params, next(self.prompts), rnd)
    if jax.process_index() == 0:
      write_jsonl(self.pairs_file(rnd + 1), records)
    truncated = 0
    if records:
      ref = params if self.cfg.reference == "round" else self.initial_ref
      chosen, rejected, truncated = self.rows(records, ref)
      for idx in round_order(len(records), steps, self.batch_size,
                             self.seed, rnd):
        self._queue.append(
            {"chosen": {k: v[idx] for k, v in chosen.items()},
             "rejected": {k: v[idx] for k, v in rejected.items()}})
    else:
      logging.warning("online_dpo round %d kept no pair of %d prompts "
                      "(%s): its %d steps have no gradient", rnd + 1,
                      report["prompts"], report["filtered_by_reason"], steps)
      self._queue = [self.empty] * steps
    counts = {"round": float(rnd + 1), "prompts": float(report["prompts"]),
              "pairs": float(report["kept"]),
              "ties": float(report["filtered_by_reason"]["tie"]),
              "filtered": float(report["filtered"]),
              "truncated_pairs": float(truncated)}
    counts.update({f"filtered_{k}": float(v)
                   for k, v in report["filtered_by_reason"].items()})
    counts.update({k: float(report[k]) for k in (
        "mean_score", "mean_best_score", "mean_margin")
        if report[k] is not None})
    self.history.append(counts)
    self._metrics = counts
    self.round += 1

  def pop_metrics(self) -> dict[str, float]:
    out, self._metrics = self._metrics, {}
    return out

  def get_state(self) -> dict:
    if self._queue:
      raise RuntimeError(
          f"an online DPO checkpoint must fall on a round boundary; "
          f"{len(self._queue)} minibatches of round {self.round} are still "
          "queued")
    return {"round": self.round, "prompts": self.prompts.get_state(),
            "history": self.history}

  def set_state(self, state: dict) -> None:
    self.round = int(state["round"])
    self.prompts.set_state(state["prompts"])
    self.history = list(state["history"])
    self._queue = []


def check_rounds(cfg: OnlineDPOConfig, loop: LoopConfig,
                 checkpoint: CheckpointConfig) -> int:
  """The number of rounds; an error naming the option whose steps do not
  fall on round boundaries."""
  k = cfg.steps_per_round
  for name, value in (("LoopConfig.num_steps", loop.num_steps),
                      ("LoopConfig.eval_every", loop.eval_every),
                      ("CheckpointConfig.every_steps",
                       checkpoint.every_steps)):
    if value % k:
      raise checks.ConfigError(
          f"online_dpo: {name}={value} is not a multiple of "
          f"OnlineDPOConfig.steps_per_round={k} (rounds are whole: "
          "checkpoints and evals fall between them)")
  return loop.num_steps // k


@gin.configurable
def online_dpo(
    run_dir: str = gin.REQUIRED,
    init_from: str = gin.REQUIRED,
    prompt_files: Sequence[str] = gin.REQUIRED,
    eval_file: str | None = None,
    prompt_file: str | None = None,
    judge: str = "judge",
    reward_run: str | None = None,
    judge_preset: str = "default",
    online: OnlineDPOConfig = OnlineDPOConfig(),
    pairs: rlaif_lib.RLAIFConfig = rlaif_lib.RLAIFConfig(),
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    loss: str = "dpo",
    loss_hparams: dict | None = None,
    model: TransformerConfig | None = None,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 384,
    seed: int = 0,
    eval_prompts: int = 32,
    generation: instruct.GenerationSpec = instruct.GenerationSpec(),
    lora: LoraConfig | None = None,
    bad_eval_records: str = validation.EVAL_POLICY,
) -> dict[str, Any]:
  """Online DPO from `init_from` (an LM run with a chat template) on the
  prompts of `prompt_files` (see the module docstring).

  judge: "judge" (the programmatic judge preset `judge_preset`) or
  "reward_model" (reward_run's model). pairs: the labelling thresholds,
  samples per prompt, the prompts per sampling batch (dividing
  prompts_per_round) and whether the greedy answer competes (RLAIFConfig,
  as the rlaif stage). loss: a registered
  preference loss (dpo, cdpo, ipo, simpo, orpo; reference-free ones get no
  reference log-probs), loss_hparams its options. model: None = the
  init_from run's config. eval_file: held-out pairs (eval/loss, reference
  log-probs from the starting policy); prompt_file: the policy evaluation
  against the starting policy (eval/policy/...).
  """
  stage = "online_dpo"
  make_loss = registry.get_loss(loss, kind="preference",
                                option=f"{stage}.loss")
  registry.check_hparams(make_loss, loss_hparams or {},
                         f"{stage}.loss_hparams",
                         reserved=("ref_params", "ref_graphdef"))
  with_ref = dpo_lib.needs_reference(make_loss)
  if not with_ref and online.reference != "initial":
    raise checks.unused("OnlineDPOConfig.reference",
                        f"{loss!r} is reference-free")
  rl_common.check_reward(stage, judge, reward_run, judge_preset,
                         reward_field="judge", judge_field="judge_preset")
  rounds = check_rounds(online, loop, checkpoint)
  if online.prompts_per_round % pairs.prompts_per_batch:
    raise ValueError(
        f"RLAIFConfig.prompts_per_batch={pairs.prompts_per_batch} does not "
        f"divide OnlineDPOConfig.prompts_per_round="
        f"{online.prompts_per_round} (a round samples its prompts in "
        "batches of prompts_per_batch)")
  for rows in ({pairs.prompts_per_batch * pairs.samples_per_prompt}
               | ({pairs.prompts_per_batch} if pairs.include_greedy
                  else set())):
    if rollout.chunk_size and rows % rollout.chunk_size:
      raise ValueError(f"RolloutConfig.chunk_size={rollout.chunk_size} does "
                       f"not divide the {rows} rows of a sampling batch")
  if seq_len < rollout.prompt_len + rollout.max_new_tokens:
    raise ValueError(
        f"{stage}.seq_len={seq_len} < RolloutConfig.prompt_len + "
        f"max_new_tokens = {rollout.prompt_len + rollout.max_new_tokens}: "
        "the sampled pairs would be cut")
  validation.check_policy(f"{stage}.bad_eval_records", bad_eval_records)
  runner.preflight(stage, mesh, batch_size)
  if runner.only_checking():
    return {}
  st = rl_common.start(init_from, model, mesh, prompt_files, rollout, judge,
                       reward_run, judge_preset, missing_stop_penalty=0.0)
  policy = st.policy
  render = sft_data.ChatRender(policy.template, policy.tokenizer)
  eval_pairs = []
  if eval_file:
    eval_pairs, counts = preference.load_pairs(
        eval_file, policy=bad_eval_records, template=policy.template,
        render=render, seq_len=seq_len)
    st.inputs.put(eval_file, counts, kind="preference pairs",
                  policy=bad_eval_records)
  prompt_records = pairs_lib.load_prompt_records(
      prompt_file, eval_prompts, policy.template, bad_eval_records,
      st.inputs)
  sampling_cfg = rollout.sampling_config(
      policy.codec.stop_ids, policy.codec.pad_id, policy.codec.vocab_limit)
  greedy_cfg = dataclasses.replace(rollout, temperature=0.0).sampling_config(
      policy.codec.stop_ids, policy.codec.pad_id, policy.codec.vocab_limit)
  host_start = sharding.fetch(policy.params)
  built: dict[str, Any] = {}

  def data(ctx: runner.Context) -> OnlineRounds:
    graphdef = ctx.trainer.graphdef
    ref_fn = jax.jit(dpo_lib.make_reference_fn(graphdef))

    def sampler(params: Any, cfg: Any) -> Callable[..., Any]:
      return generation_lib.make_sampler(
          generation_lib.default_sample_fn(), graphdef, params, cfg,
          rollout.chunk_size, rollout.sampling_devices)

    def label(params: Any, records: list, rnd: int) -> tuple[list, dict]:
      return rlaif_lib.generate_preferences(
          records, codec=policy.codec, rollout_cfg=rollout,
          sample=sampler(params, sampling_cfg), scorer=st.scorer, cfg=pairs,
          seed=round_seed(seed, rnd), id_prefix=f"{stage}-r{rnd + 1}",
          greedy=(sampler(params, greedy_cfg) if pairs.include_greedy
                  else None))

    def rows(records: list, ref_params: Any) -> tuple[dict, dict, int]:
      chosen, rejected = reward_eval.pair_rows(records, render, seq_len)
      if with_ref:
        pairs_lib.attach_ref_logps(graphdef, ref_params, chosen, rejected,
                                   batch_size, ref_fn=ref_fn)
      return chosen, rejected, truncated_pairs(records, render, seq_len)

    if eval_pairs:
      built["eval"] = rows(eval_pairs, host_start)[:2]
    built["source"] = OnlineRounds(
        prompts=iteration_lib.PromptBatches(
            st.records, online.prompts_per_round, seed=seed),
        label=label, rows=rows, policy=ctx.model_params,
        initial_ref=host_start, cfg=online, batch_size=batch_size,
        seq_len=seq_len, seed=seed, with_ref=with_ref,
        pairs_file=ctx.run.iteration_sample_file)
    return built["source"]

  def evals(ctx: runner.Context) -> engine.Evals:
    halves = (dict(zip(("chosen", "rejected"), built["eval"]))
              if "eval" in built else None)
    return pairs_lib.preference_evals(
        ctx, halves, batch_size, prompt_records, eval_prompts,
        lambda: host_start, generation)

  def finish(ctx: runner.Context, _: Any) -> dict[str, Any]:
    del ctx
    out = {"rounds": built["source"].history, **st.inputs.summary(stage)}
    if not with_ref:
      out["reference_logps"] = pairs_lib.NO_REFERENCE
    return out

  spec = runner.StageSpec(
      name=stage, model_kind="policy", model=policy.cfg, loss=loss,
      loss_kind="preference", loss_kwargs=loss_hparams or {},
      example_batch=example_pair_batch(batch_size, seq_len,
                                       with_ref_logp=with_ref),
      data=data, evals=evals, tokenizer=policy.tokenizer,
      template=policy.template, tokens_per_step=2 * batch_size * seq_len,
      init_from=init_from, reference=init_from if with_ref else None,
      inputs={"prompt_files": prompt_files,
              "eval_file": [eval_file] if eval_file else [],
              "prompt_file": [prompt_file] if prompt_file else []},
      details={"rounds": rounds, "online": dataclasses.asdict(online),
               "pairs": dataclasses.asdict(pairs), "judge": st.reward_info,
               "prompts": st.prompt_counts,
               **({} if with_ref else {"reference": pairs_lib.NO_REFERENCE})},
      finish=finish)
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, lora=lora))
