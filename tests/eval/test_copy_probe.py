"""The in-context copying probe, against a brute-force reference and on a
model that learned to copy (and one that did not)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lifejax.eval import copy_probe
from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4,
                        num_kv_heads=4, mlp_dim=128, max_seq_len=64)
LENGTH = 12


def _init(seed: int = 0):
  graphdef, abstract = nnx.split(heads.abstract(transformer.Transformer, CFG))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: jnp.asarray(np.ones(x.shape) if x.ndim == 1
                            else 0.02 * rng.standard_normal(x.shape), x.dtype),
      nnx.to_pure_dict(abstract))
  return graphdef, params


def test_sequences_repeat_ordinary_ids():
  ids = copy_probe.repeated_sequences(50, 7, 3, seed=1)
  assert ids.shape == (3, 14) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids[:, :7], ids[:, 7:])
  assert ids.min() >= 4 and ids.max() < 50
  with pytest.raises(ValueError, match="length >= 2"):
    copy_probe.repeated_sequences(50, 1, 3, seed=1)
  with pytest.raises(ValueError, match="no ordinary ids"):
    copy_probe.repeated_sequences(5, 4, 3, seed=1)


def test_metrics_match_a_brute_force_reading():
  graphdef, params = _init(1)
  got = copy_probe.copy_probe(graphdef, params, CFG.vocab_size,
                              length=LENGTH, batch=3, seed=2)
  ids = copy_probe.repeated_sequences(CFG.vocab_size, LENGTH, 3, seed=2)
  model = nnx.merge(graphdef, params)
  pos = np.broadcast_to(np.arange(2 * LENGTH), ids.shape)
  logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(pos),
                            jnp.ones(ids.shape, jnp.int32)), np.float64)
  nll1, nll2, hits = [], [], []
  for b in range(3):
    for j in range(1, LENGTH):  # token j of each copy, j >= 1
      for copy, out in ((0, nll1), (1, nll2)):
        t = copy * LENGTH + j - 1  # the position that predicts it
        row = logits[b, t]
        lse = np.log(np.sum(np.exp(row - row.max()))) + row.max()
        out.append(lse - row[ids[b, t + 1]])
        if copy:
          hits.append(np.argmax(row) == ids[b, t + 1])
  assert got["copy/nll_first"] == pytest.approx(np.mean(nll1), rel=1e-5)
  assert got["copy/nll_second"] == pytest.approx(np.mean(nll2), rel=1e-5)
  assert got["copy/top1"] == pytest.approx(np.mean(hits))
  assert got["copy/score"] == pytest.approx(np.mean(nll1) - np.mean(nll2),
                                            abs=1e-4)


def test_a_model_trained_to_copy_scores_and_an_untrained_one_does_not():
  """Training repeats at the probe's own period, so the model may copy by
  position ("the token LENGTH back") rather than by induction; either way
  it reads the random tokens from its context, which is what the probe
  measures. (Induction that generalizes across periods takes this toy
  model far longer than a unit test may run.)"""
  graphdef, params = _init(0)
  before = copy_probe.copy_probe(graphdef, params, CFG.vocab_size,
                                 length=LENGTH, seed=5)
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss(p, ids):
    m = nnx.merge(graphdef, p)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    lp = jax.nn.log_softmax(m(ids, pos, jnp.ones_like(ids)).astype(
        jnp.float32)[:, :-1])
    return -jnp.take_along_axis(lp, ids[:, 1:, None], -1).mean()

  @jax.jit
  def step(p, s, ids):
    g = jax.grad(loss)(p, ids)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  for i in range(400):  # training seeds differ from the probe's seed
    ids = copy_probe.repeated_sequences(CFG.vocab_size, LENGTH, 32,
                                        seed=100 + i)
    params, state = step(params, state, jnp.asarray(ids))
  after = copy_probe.copy_probe(graphdef, params, CFG.vocab_size,
                                length=LENGTH, seed=5)
  assert before["copy/top1"] < 0.1 and abs(before["copy/score"]) < 0.5
  assert after["copy/top1"] > 0.9, after
  assert after["copy/score"] > 2.0, after
