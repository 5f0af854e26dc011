"""Evaluation of a tuned policy against its reference (the SFT model).

Judge win rate vs the reference's answers, KL to the reference on the
policy's own samples, verbosity and refusal rate, and (with a reward model)
the reward-vs-judge gap that flags reward hacking. For the experiments'
test splits: the reward model's normalized score of answers
(`reward_model_fn`) and the per-prompt pairing of the policy's answers with
the reference's under the judge and the reward model (`paired_rows`,
`paired_summary`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lifejax import checks
from lifejax.data import chat, chat_render, prompts as prompts_lib
from lifejax.eval import generation, instruct, stats
from lifejax.eval.stats import bootstrap_ci  # noqa: F401  (re-exported)
from lifejax.world import judge as judge_lib


def paired_stats(scores: Sequence[float], ref_scores: Sequence[float],
                 tol: float = 1e-9) -> dict[str, float]:
  """Win/tie/loss statistics of paired judge scores (policy vs reference on
  the same prompts): win rate with ties counting half, its standard error
  and 95% bootstrap CI, the mean score gain with its standard error and
  95% bootstrap CI, and the exact two-sided sign-test p-value of wins vs
  losses (ties dropped), i.e. the chance of a split at least this uneven if
  neither answer were better."""
  a = np.asarray(scores, np.float64)
  b = np.asarray(ref_scores, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not a.size:
    raise ValueError(f"paired_stats needs two equal-length non-empty score "
                     f"lists, got {a.shape} and {b.shape}")
  d = a - b
  outcome = np.where(d > tol, 1.0, np.where(d < -tol, 0.0, 0.5))
  n = a.size
  wins, losses = int(np.sum(outcome == 1)), int(np.sum(outcome == 0))
  p = stats.sign_test_p(wins, losses)
  se = lambda x: float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else 0.0  # noqa: E731
  (win_lo, win_hi), (gain_lo, gain_hi) = bootstrap_ci(
      np.stack([outcome, d], axis=1))
  return {"wins": float(wins), "losses": float(losses),
          "ties": float(n - wins - losses),
          "win_rate_vs_ref": float(np.mean(outcome)),
          "win_rate_se": se(outcome),
          "win_rate_ci_lo": float(win_lo), "win_rate_ci_hi": float(win_hi),
          "judge_gain_vs_ref": float(np.mean(d)),
          "judge_gain_se": se(d),
          "judge_gain_ci_lo": float(gain_lo),
          "judge_gain_ci_hi": float(gain_hi),
          "sign_test_p": float(p)}


@functools.partial(jax.jit, static_argnums=(0,))
def _response_kl(graphdef, params, ref_params, tokens_BxL, mask_BxL,
                 resp_BxL):
  """sum over response positions of KL(pi(.|prefix) || pi_ref(.|prefix)),
  the exact per-position KL over the vocabulary (always >= 0), (B,)."""
  pos = jnp.maximum(jnp.cumsum(mask_BxL, axis=1) - 1, 0)
  args = (tokens_BxL[:, :-1], pos[:, :-1], mask_BxL[:, :-1])
  logp = jax.nn.log_softmax(
      nnx.merge(graphdef, params)(*args).astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(
      nnx.merge(graphdef, ref_params)(*args).astype(jnp.float32), axis=-1)
  kl_BxT = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  return jnp.sum(kl_BxT * resp_BxL[:, 1:].astype(jnp.float32), axis=-1)


class PolicyEvaluator:
  """Scores a policy on fixed held-out prompts against a fixed reference.

  The reference's answers are generated once (greedy) and cached; each call
  generates the policy's greedy answers and returns metrics.
  """

  def __init__(self, graphdef: Any, ref_params: Any, tokenizer: Any,
               template: chat.ChatTemplate,
               records: Sequence[Mapping[str, Any]],
               spec: instruct.GenerationSpec,
               judge_config: judge_lib.JudgeConfig = judge_lib.DEFAULT,
               reward_fn: Callable[[Sequence[str]], np.ndarray] | None = None,
               baseline: Mapping[str, float] | None = None,
               kl_batch: int = 0,
               ref_answers: Sequence[str] | None = None):
    """baseline: the base model's per-task dev judge totals; with it the
    instruct metrics add the calibrated judge (instruct.calibrate).
    ref_answers: the reference's greedy answers to `records` (in order),
    when they were already generated with this spec (the SFT stage's own
    evaluation): then they are not generated again.
    kl_batch: prompts per forward pass of the exact KL to the reference (0:
    all at once). The exact KL holds both models' full-vocabulary
    log-probabilities at every position (prompts x positions x vocab
    floats), several GB for a whole test split; a smaller batch bounds
    that, at the same result up to float round-off."""
    checks.at_least("PolicyEvaluator.kl_batch", kl_batch, 0)
    self.baseline = baseline
    self.graphdef, self.ref_params = graphdef, ref_params
    self.tokenizer, self.template = tokenizer, template
    self.records, self.spec = list(records), spec
    self.judge_config, self.reward_fn = judge_config, reward_fn
    self.kl_batch = kl_batch
    self.sampling = generation.chat_config(template, tokenizer,
                                           spec.max_new_tokens)
    if ref_answers is not None:
      if len(ref_answers) != len(self.records):
        raise ValueError(f"ref_answers: {len(ref_answers)} answers for "
                         f"{len(self.records)} prompts")
      self.ref_answers = list(ref_answers)
    else:
      self.ref_answers = self._answers(ref_params)
    self._ref_reward: float | None = None

  def _answers(self, params) -> list[str]:
    return generation.generate_responses(
        generation.make_generate(self.graphdef, params, self.sampling,
                                 devices=self.spec.devices),
        self.tokenizer, self.template, self.records, self.spec)

  def _kl_rows(self, answers: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, mask, response mask), each (N, L) int32: each record's
    prompt + answer, right zero-padded (or cut to its last L tokens), L =
    prompt_len + max_new_tokens + 2."""
    if len(answers) != len(self.records):
      raise ValueError(f"{len(answers)} answers for {len(self.records)} "
                       "prompts")
    rows, resp = [], []
    for rec, ans in zip(self.records, answers):
      p = prompts_lib.prompt_ids(self.template, self.tokenizer, rec)
      r = chat_render.render_response(self.template, self.tokenizer, ans)
      rows.append(p + r)
      resp.append([0] * len(p) + [1] * len(r))
    length = self.spec.prompt_len + self.spec.max_new_tokens + 2
    toks = np.zeros((len(rows), length), np.int32)
    mask = np.zeros_like(toks)
    rmask = np.zeros_like(toks)
    for i, (r, m) in enumerate(zip(rows, resp)):
      r, m = r[-length:], m[-length:]
      toks[i, :len(r)], mask[i, :len(r)], rmask[i, :len(r)] = r, 1, m
    return toks, mask, rmask

  def response_kls(self, params, answers: Sequence[str]) -> np.ndarray:
    """Per prompt, the summed per-token KL(pi || pi_ref) along the policy's
    answer (exact over the vocabulary at each position): (N,) float32,
    computed `kl_batch` prompts at a time (0: all at once)."""
    arrays = self._kl_rows(answers)
    n = len(arrays[0])
    b = max(1, min(self.kl_batch, n) if self.kl_batch else n)
    out = []
    for i in range(0, n, b):
      chunk = [x[i:i + b] for x in arrays]
      real = len(chunk[0])
      if real < b:  # one shape for every chunk: one compilation
        chunk = [np.concatenate([x, np.repeat(x[:1], b - real, axis=0)])
                 for x in chunk]
      kl = _response_kl(self.graphdef, params, self.ref_params, *chunk)
      out.append(np.asarray(kl)[:real])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def kl_to_reference(self, params, answers: Sequence[str]) -> float:
    """Mean over prompts of the summed per-token KL(pi || pi_ref) along the
    policy's own answers (exact over the vocabulary at each position)."""
    # Exact KL is >= 0; clip float round-off around identical policies.
    return max(0.0, float(np.mean(self.response_kls(params, answers))))

  def __call__(self, params) -> dict[str, float]:
    answers = self._answers(params)
    judge_scores, ref_scores = [], []
    for rec, ans, ref in zip(self.records, answers, self.ref_answers):
      c = judge_lib.compare(rec, ans, ref, self.judge_config)
      judge_scores.append(c.a.total)
      ref_scores.append(c.b.total)
    paired = paired_stats(judge_scores, ref_scores)
    out = {
        **paired,
        "judge_score": float(np.mean(judge_scores)),
        "kl_to_ref": self.kl_to_reference(params, answers),
        "response_words": float(np.mean([len(a.split()) for a in answers])),
        "refusal_rate": float(np.mean([instruct.looks_like_refusal(a)
                                       for a in answers])),
    }
    out.update({f"instruct/{k}": v for k, v in
                instruct.judge_responses(self.records, answers,
                                         baseline=self.baseline).items()})
    if self.reward_fn is not None:
      rewards = np.asarray(self.reward_fn(answers))
      out["reward"] = float(np.mean(rewards))
      # Reward hacking shows as the reward rising while the judge does not.
      out["reward_judge_gap"] = float(
          np.mean(rewards) - np.mean(judge_scores))
      # The same on a common footing: each score's change from the
      # reference's answers (reward in its own units, judge in [0, 1]).
      if self._ref_reward is None:  # the reference's answers are fixed
        self._ref_reward = float(np.mean(self.reward_fn(self.ref_answers)))
      out["reward_gain_vs_ref"] = out["reward"] - self._ref_reward
    self.last_answers = answers
    return out


def response_reward_fn(score_rows: Callable[[dict[str, np.ndarray]],
                                            np.ndarray],
                       template: chat.ChatTemplate, tokenizer: Any,
                       records: Sequence[Mapping[str, Any]], seq_len: int
                       ) -> Callable[[Sequence[str]], np.ndarray]:
  """answers -> rewards, for PolicyEvaluator(reward_fn=...).

  Each record's prompt plus its answer is rendered through the chat template
  into the reward model's row layout (preference.response_row: loss on the
  answer and its end-of-turn marker) and scored by `score_rows` (e.g. a
  reward run's normalized scorer).
  """
  from lifejax.data import preference, sft  # pylint: disable=g-import-not-at-top
  render = sft.ChatRender(template, tokenizer)
  prompts = [prompts_lib.prompt_messages(r) for r in records]

  def reward_fn(answers: Sequence[str]) -> np.ndarray:
    if len(answers) != len(prompts):
      raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
    rows = [preference.response_row(
        *render({"prompt": p, "response": a}), seq_len)
            for p, a in zip(prompts, answers)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return np.asarray(score_rows(batch), np.float32)

  return reward_fn


class RewardScorer(Protocol):
  """A reward model with its normalization statistics (e.g.
  rl.rollout.RewardModelScorer)."""

  mean: float
  std: float

  def raw(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """The unnormalized reward (B,) of LM rows (tokens, positions,
    segment_ids, loss_mask, each (B, L))."""


def reward_model_fn(scorer: RewardScorer, template: chat.ChatTemplate,
                    tokenizer: Any, records: Sequence[Mapping[str, Any]],
                    seq_len: int) -> Callable[[Sequence[str]], np.ndarray]:
  """answers -> the reward model's normalized score of each (prompt,
  answer): (N,) float32, (raw - scorer.mean) / scorer.std.

  raw is the reward model's value at the last trained token of the row
  response_reward_fn renders (the record's prompt, then the answer and its
  end-of-turn marker; seq_len = the reward stage's row length), and mean /
  std are the reward run's held-out statistics: the same footing as the
  reward an RL stage's rollouts get from this reward model.
  """
  return response_reward_fn(
      lambda rows: (scorer.raw(rows) - scorer.mean) / scorer.std,
      template, tokenizer, records, seq_len)


def paired_rows(records: Sequence[Mapping[str, Any]],
                answers: Sequence[str], ref_answers: Sequence[str],
                judge_config: judge_lib.JudgeConfig = judge_lib.DEFAULT,
                reward_fn: Callable[[Sequence[str]], np.ndarray] | None = None
                ) -> list[dict[str, Any]]:
  """One row per prompt: the policy's answer against the reference's (the
  SFT model's, hence the `sft_` keys) on the same prompt.

  Each row: id, task, answer, sft_answer, judge and sft_judge (the judge's
  total with `judge_config`), rm and sft_rm (`reward_fn` of the answers, e.g.
  reward_model_fn; absent without one), words and sft_words (whitespace
  word counts). answers and ref_answers are in `records` order.
  """
  if not len(records) == len(answers) == len(ref_answers):
    raise ValueError(f"paired_rows: {len(records)} records, {len(answers)} "
                     f"answers, {len(ref_answers)} reference answers")
  rm = rm_ref = None
  if reward_fn is not None:
    rm, rm_ref = (np.asarray(reward_fn(a), np.float64)
                  for a in (answers, ref_answers))
  rows = []
  for i, (rec, ans, ref) in enumerate(zip(records, answers, ref_answers)):
    row = {"id": rec.get("id"), "task": rec["task"],
           "answer": ans, "sft_answer": ref,
           "judge": judge_lib.score(rec, ans, judge_config).total,
           "sft_judge": judge_lib.score(rec, ref, judge_config).total}
    if rm is not None:
      row.update(rm=float(rm[i]), sft_rm=float(rm_ref[i]))
    row.update(words=len(ans.split()), sft_words=len(ref.split()))
    rows.append(row)
  return rows


def paired_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The means over paired_rows' prompts of judge, sft_judge, rm, sft_rm
  (with a reward), words and sft_words; same_as_sft, how many answers equal
  the reference's (stripped); paired_judge and paired_rm, paired_stats of
  the policy's scores against the reference's."""
  if not rows:
    raise ValueError("paired_summary: no rows")
  col = lambda k: [r[k] for r in rows]  # noqa: E731
  scores = ("judge", "rm") if "rm" in rows[0] else ("judge",)
  out: dict[str, Any] = {}
  for k in scores + ("words",):
    out[k] = float(np.mean(col(k)))
    out[f"sft_{k}"] = float(np.mean(col(f"sft_{k}")))
  out["same_as_sft"] = int(sum(r["answer"].strip() == r["sft_answer"].strip()
                               for r in rows))
  for k in scores:
    out[f"paired_{k}"] = paired_stats(col(k), col(f"sft_{k}"))
  return out
