"""policy_eval on a tiny random model: the chunked exact KL equals the
unchunked one and a float64 numpy reference; the reward model's normalized
score and the per-prompt pairing against direct computations."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from lifejax.data import chat, chat_render, prompts
from lifejax.eval import policy_eval
from lifejax.eval.instruct import GenerationSpec
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.world import judge as judge_lib
from lifejax.world import tasks

TEMPLATE = chat.PLAIN
SPEC = GenerationSpec(prompt_len=160, max_new_tokens=3, batch_size=8)
CFG = TransformerConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2,
                        num_kv_heads=1, mlp_dim=32, max_seq_len=256)
ANSWERS = ["4", "The answer is 12.", "seven", "It is 3 o'clock, I think.",
           "No."]


class CharTokenizer:
  """One id per character; <s> and </s> are the special ids 1 and 2."""
  bos_id, eos_id, pad_id, vocab_size = 1, 2, 0, 64
  special_ids = {"<s>": 1, "</s>": 2}

  def encode(self, text):
    return [3 + ord(c) % 61 for c in text]

  def decode(self, ids):
    return "".join(chr(ord("a") + (i - 3) % 26) for i in ids if i > 2)


TOK = CharTokenizer()


@pytest.fixture(scope="module")
def setup():
  records = tasks.general_instructions(seed=0, n=len(ANSWERS))
  graphdef, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)

  def random_params(seed):
    # N(0, 0.5) everywhere (numpy: no eager init to compile), so that two
    # random models disagree clearly.
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: rng.normal(0, 0.5, x.shape).astype(x.dtype), abstract)

  return records, graphdef, random_params(0), random_params(1)


def _evaluator(setup, kl_batch):
  records, graphdef, ref, _ = setup
  return policy_eval.PolicyEvaluator(graphdef, ref, TOK, TEMPLATE, records,
                                     SPEC, kl_batch=kl_batch)


def _brute_kls(records, graphdef, policy, ref, answers):
  """Per prompt: the float64 full-vocabulary KL of the two next-token laws,
  summed over the input positions whose next token is in the answer."""
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
  tokens = np.zeros((len(records), SPEC.prompt_len + SPEC.max_new_tokens + 1),
                    np.int32)
  spans = []
  for i, (rec, ans) in enumerate(zip(records, answers)):
    p = prompts.prompt_ids(TEMPLATE, TOK, rec)
    doc = p + chat_render.render_response(TEMPLATE, TOK, ans)
    assert len(doc) - 1 <= tokens.shape[1]  # the evaluator holds it whole
    tokens[i, :len(doc) - 1] = doc[:-1]
    spans.append((len(p) - 1, len(doc) - 1))
  logp, logq = (np.asarray(forward(x, tokens), np.float64)
                for x in (policy, ref))
  logp, logq = (x - x.max(-1, keepdims=True) for x in (logp, logq))
  logp, logq = (x - np.log(np.exp(x).sum(-1, keepdims=True))
                for x in (logp, logq))
  kl_BxT = np.sum(np.exp(logp) * (logp - logq), axis=-1)
  return np.array([kl_BxT[i, a:b].sum() for i, (a, b) in enumerate(spans)])


def test_chunked_kl_equals_unchunked_and_float64_reference(setup):
  records, graphdef, ref, policy = setup
  whole = _evaluator(setup, 0)
  kl = whole.response_kls(policy, ANSWERS)
  assert kl.shape == (len(ANSWERS),) and kl.dtype == np.float32
  want = _brute_kls(records, graphdef, policy, ref, ANSWERS)
  assert np.all(want > 1)  # two random models: a clear difference
  np.testing.assert_allclose(kl, want, rtol=1e-5)  # measured: 1.8e-7
  # 5 prompts one at a time, in chunks of 2 (the last one padded), 3, and
  # more than 5. Measured on CPU (KLs 1.2 to 16 nats): chunks of 2, 3, 4
  # and 7 bitwise equal, of 1 a max |diff| of 9.5e-7 (1.3e-7 relative: f32
  # round-off of another matmul shape).
  for b in (1, 2, 3, 7):
    ev = _evaluator(setup, b)
    got = ev.response_kls(policy, ANSWERS)
    np.testing.assert_allclose(got, kl, rtol=1e-6, atol=0)
    assert ev.kl_to_reference(policy, ANSWERS) == pytest.approx(
        whole.kl_to_reference(policy, ANSWERS), rel=1e-6)
  # The same policy as the reference: zero (clipped at 0, never negative).
  assert _evaluator(setup, 2).kl_to_reference(ref, ANSWERS) == 0.0


def test_chunks_share_one_compilation(setup):
  _, _, _, policy = setup
  ev = _evaluator(setup, 2)
  ev.response_kls(policy, ANSWERS)  # chunks of 2, 2 and a padded 1
  before = policy_eval._response_kl._cache_size()
  ev.response_kls(policy, ANSWERS[::-1])
  ev.kl_batch = 4  # a new chunk shape compiles once more, no more
  ev.response_kls(policy, ANSWERS)
  assert policy_eval._response_kl._cache_size() == before + 1


def test_kl_batch_and_answer_count_are_checked(setup):
  with pytest.raises(ValueError, match=r"PolicyEvaluator.kl_batch=-1"):
    _evaluator(setup, -1)
  with pytest.raises(ValueError, match="4 answers for 5 prompts"):
    _evaluator(setup, 2).response_kls(setup[3], ANSWERS[:4])


class SumScorer:
  """A checkable reward model: the sum of the answer's ids (the targets
  under the loss mask)."""
  mean, std = 300.0, 40.0

  def raw(self, rows):
    return (rows["targets"] * rows["loss_mask"]).sum(axis=1).astype(
        np.float64)


def test_reward_model_fn_normalizes_the_answer_rows(setup):
  records = setup[0]
  fn = policy_eval.reward_model_fn(SumScorer(), TEMPLATE, TOK, records, 256)
  got = fn(ANSWERS)
  # Direct: the answer's ids with its end-of-turn marker, then (r - m) / s.
  want = [(sum(chat_render.render_response(TEMPLATE, TOK, a)) - 300.0) / 40.0
          for a in ANSWERS]
  assert got.shape == (len(ANSWERS),) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert len(set(np.round(want, 3))) == len(ANSWERS)  # a real check


def test_paired_rows_and_summary_against_direct_scores(setup):
  records = setup[0]
  gold = [r["messages"][-1]["content"] for r in records]
  ref_answers = ["I am not sure."] * len(records)
  answers = gold[:3] + ANSWERS[3:]
  cfg = dataclasses.replace(judge_lib.DEFAULT, length_bonus_per_word=0.01)
  reward = lambda ans: np.array([len(a) / 10 for a in ans], np.float32)  # noqa: E731
  rows = policy_eval.paired_rows(records, answers, ref_answers, cfg, reward)
  for rec, row, a, b in zip(records, rows, answers, ref_answers):
    assert row == {
        "id": rec["id"], "task": rec["task"], "answer": a, "sft_answer": b,
        "judge": judge_lib.score(rec, a, cfg).total,
        "sft_judge": judge_lib.score(rec, b, cfg).total,
        "rm": float(np.float32(len(a) / 10)),
        "sft_rm": float(np.float32(len(b) / 10)),
        "words": len(a.split()), "sft_words": len(b.split())}
  # The judge config is used: the length bonus changes the scores.
  assert rows[3]["judge"] != judge_lib.score(records[3], answers[3]).total
  s = policy_eval.paired_summary(rows)
  for k in ("judge", "sft_judge", "rm", "sft_rm", "words", "sft_words"):
    assert s[k] == pytest.approx(np.mean([r[k] for r in rows]), abs=0)
  assert s["same_as_sft"] == 0
  assert s["paired_judge"] == policy_eval.paired_stats(
      [r["judge"] for r in rows], [r["sft_judge"] for r in rows])
  assert s["paired_judge"]["wins"] >= 3  # the gold answers beat "not sure"
  assert s["paired_rm"]["judge_gain_vs_ref"] == pytest.approx(
      np.mean([(len(a) - len(b)) / 10 for a, b in zip(answers, ref_answers)]),
      rel=1e-6)
  # Without a reward: no rm keys.
  bare = policy_eval.paired_rows(records, answers, answers)
  assert "rm" not in bare[0]
  s = policy_eval.paired_summary(bare)
  assert "paired_rm" not in s and s["same_as_sft"] == len(records)
  with pytest.raises(ValueError, match="5 records, 4 answers"):
    policy_eval.paired_rows(records, answers[:4], ref_answers)
