"""The base-model knowledge probe (lifejax/eval/knowledge.py): sentence
log-likelihoods against a float64 reference from the model's logits, and the
ranking read off them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.eval import knowledge
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=2,
                        num_kv_heads=1, mlp_dim=32, max_seq_len=128)


class CharTokenizer:
  """ids 1.. for characters (mod the vocabulary), BOS 0."""
  vocab_size = 38  # < the model's 40 rows: the vocab limit must not matter

  def encode(self, text, add_bos=False):
    return ([0] if add_bos else []) + [1 + ord(c) % 37 for c in text]


@pytest.fixture(scope="module")
def model():
  graphdef, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  rng = np.random.default_rng(0)

  def fill(path, x):
    base = 1.0 if str(path[-1].key) == "scale" else 0.0
    return jnp.asarray(base + 0.3 * rng.standard_normal(x.shape), x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      fill, nnx.to_pure_dict(abstract))


def _reference(graphdef, params, rows):
  """float64 sums of log softmax(logits)[next token] over each row, from one
  forward of all rows right-padded without a mask (causal attention: the
  padding after a row cannot change its logits)."""
  width = max(len(r) for r in rows)
  ids = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  logits = np.asarray(jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(
      params, ids), np.float64)
  out = []
  for i, r in enumerate(rows):
    lg = logits[i, :len(r) - 1]
    m = lg.max(-1, keepdims=True)
    logz = np.log(np.sum(np.exp(lg - m), -1)) + m[:, 0]
    out.append(float(sum(lg[t, r[t + 1]] - logz[t]
                         for t in range(len(r) - 1))))
  return out


def test_continuation_logprobs_match_a_float64_reference(model):
  graphdef, params = model
  rng = np.random.default_rng(1)
  # Lengths across two padded widths (32, 64); 7 rows in batches of 3; all
  # tokens after the first scored, then only the last 2 of each row.
  rows = [[0] + list(rng.integers(1, 40, n)) for n in (2, 9, 31, 33, 50, 5,
                                                       63)]
  got = knowledge.continuation_logprobs(
      graphdef, params, [(r, len(r) - 1) for r in rows], 3, 40)
  want = _reference(graphdef, params, rows)
  np.testing.assert_allclose([s for s, _ in got], want, rtol=2e-5)
  tail = knowledge.continuation_logprobs(graphdef, params,
                                         [(r, 2) for r in rows], 3, 40)
  head = _reference(graphdef, params, [r[:-2] for r in rows])
  np.testing.assert_allclose([s for s, _ in tail],
                             np.subtract(want, head), rtol=2e-4, atol=1e-4)
  with pytest.raises(ValueError, match="row 1: 1 tokens, 1 scored"):
    knowledge.continuation_logprobs(graphdef, params, [([0, 3], 1), ([0], 1)],
                                    3, 40)


def test_fact_ranking_reads_the_argmax(model):
  graphdef, params = model
  tok = CharTokenizer()
  statements = [["Ada works in Sales.", "Ada works in Legal.",
                 "Ada works in Design."],
                ["Bo is based in Oslo.", "Bo is based in Rome."],
                ["Bo lives in Oslo.", "Bo lives in Rome."],
                ["Cy sells lamps.", "Cy sells lamps."],  # a tie: a miss
                ["Di came in 2011.", "Di came in 2012.", "Di came in 2019.",
                 "Di came in 2020."]]
  items = [{"fact_id": f, "relation": "r", "statements": s}
           for f, s in zip(("a", "b", "b", "c", "d"), statements)]
  out, facts = knowledge.fact_ranking(graphdef, params, tok, items,
                                      batch_size=4)
  flat = _reference(graphdef, params, [tok.encode(x, add_bos=True)
                                       for s in statements for x in s])
  scores, i = [], 0
  for s in statements:
    scores.append(flat[i:i + len(s)])
    i += len(s)
  hits = [s[0] > max(s[1:]) for s in scores]
  assert hits[3] is False or hits[3] == np.False_
  assert out["fact_rank/accuracy"] == pytest.approx(np.mean(hits))
  assert out["fact_rank/chance"] == pytest.approx(
      np.mean([1 / 3, 1 / 2, 1 / 2, 1 / 2, 1 / 4]))
  known = [hits[0], hits[1] and hits[2], hits[3], hits[4]]  # a majority
  assert out["fact_rank/facts_known"] == pytest.approx(np.mean(known))
  assert (out["fact_rank/items"], out["fact_rank/facts"]) == (5.0, 4.0)
  assert facts["b"] == {"relation": "r", "candidates": 2,
                        "hits": [bool(hits[1]), bool(hits[2])]}
  assert facts["c"]["hits"] == [False]
  # Put each item's best statement first: every item is a hit but the tie.
  best = [[s[i] for i in [int(np.argmax(sc))] + [
      j for j in range(len(s)) if j != int(np.argmax(sc))]]
          for s, sc in zip(statements, scores)]
  out, _ = knowledge.fact_ranking(graphdef, params, tok, [
      {**it, "statements": b} for it, b in zip(items, best)], batch_size=4)
  assert out["fact_rank/accuracy"] == pytest.approx(0.8)
  assert knowledge.fact_ranking(graphdef, params, tok, []) == ({}, {})
  with pytest.raises(ValueError, match="at least one distractor"):
    knowledge.fact_ranking(graphdef, params, tok, [
        {"fact_id": "x", "statements": ["only one"]}])
  with pytest.raises(ValueError, match="the same values"):
    knowledge.per_fact([{"fact_id": "x", "statements": ["a", "b"]},
                        {"fact_id": "x", "statements": ["a", "b", "c"]}],
                       [True, False])


def test_answer_hits_score_only_the_reply(model):
  """QA-form ranking: each answer's log-likelihood after its prompt (the
  whole row's reference minus the prompt's), the true one first; a prompt
  that alone favours nothing cannot change the pick."""
  graphdef, params = model
  tok = CharTokenizer()

  def render(rec):
    user = rec["prompt"][-1]["content"]
    return tok.encode(user, add_bos=True), tok.encode(rec["response"])

  items = [{"id": f"q{i}", "prompt": [{"role": "user", "content": q}],
            "answers": answers} for i, (q, answers) in enumerate([
                ("Where does Ada work?", ["In Sales.", "In Legal.",
                                          "In Design."]),
                ("Where is Bo based?", ["In Oslo.", "In Rome."]),
                # The same two answers the other way round: one of the two
                # items is a hit and the other a miss.
                ("Where is Bo based?", ["In Rome.", "In Oslo."]),
                ("What does the lamp cost?", ["It costs $49.",
                                              "It costs $17.",
                                              "It costs $980."])])]
  got = knowledge.answer_hits(graphdef, params, tok, render, items,
                              batch_size=2)
  want = []
  for it in items:
    prompt = render({"prompt": it["prompt"], "response": ""})[0]
    full = [prompt + tok.encode(a) for a in it["answers"]]
    scores = (np.asarray(_reference(graphdef, params, full))
              - _reference(graphdef, params, [prompt])[0])
    want.append(bool(scores[0] > scores[1:].max()))
  assert got == want
  assert want[1] != want[2]
  with pytest.raises(ValueError, match="QA ranking item q9"):
    knowledge.answer_hits(graphdef, params, tok, render, [
        {"id": "q9", "prompt": items[0]["prompt"], "answers": ["In Sales."]}])
