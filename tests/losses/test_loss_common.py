"""Log-probs, entropy and masked statistics against float64 numpy loops."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.losses import common


@pytest.fixture(scope="module")
def logits_case():
  rng = np.random.default_rng(0)
  # Large offsets: a naive exp() would overflow in f32.
  logits = rng.normal(size=(3, 5, 7)) * 4.0 + 200.0
  targets = rng.integers(0, 7, (3, 5)).astype(np.int32)
  mask = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]],
                  np.float32)
  mask[1, 2] = 0.5
  return logits, targets, mask


def test_sequence_logprobs_match_bruteforce(logits_case, helpers):
  logits, targets, mask = logits_case
  want_sum, want_n = helpers.np_sequence_logps(logits, targets, mask)
  got_sum, got_n = common.sequence_logprobs(
      jnp.asarray(logits, jnp.float32), targets, mask)
  assert got_sum.dtype == jnp.float32 and got_sum.shape == (3,)
  np.testing.assert_allclose(got_sum, want_sum, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got_n, want_n)
  assert float(got_sum[2]) == 0.0  # empty row


def test_bf16_logits_give_f32_logprobs(logits_case):
  logits, targets, _ = logits_case
  lp = common.token_logprobs(jnp.asarray(logits, jnp.bfloat16), targets)
  assert lp.dtype == jnp.float32
  assert np.all(np.isfinite(lp)) and np.all(np.asarray(lp) <= 0)


def test_entropy_matches_bruteforce(logits_case, helpers):
  logits, _, _ = logits_case
  logp = helpers.np_log_softmax(logits)
  want = -(np.exp(logp) * logp).sum(-1)
  got = common.token_entropy(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_entropy_allows_banned_tokens():
  # Two equally likely tokens, two banned (-inf): entropy is log 2.
  logits = jnp.array([[[0.0, 0.0, -jnp.inf, -jnp.inf]]])
  np.testing.assert_allclose(common.token_entropy(logits), [[np.log(2.0)]],
                             rtol=1e-6)


def test_masked_statistics():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  mask = (rng.random((4, 6)) < 0.6).astype(np.float32)
  vals = x[mask > 0].astype(np.float64)
  np.testing.assert_allclose(common.masked_mean(x, mask), vals.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(common.masked_var(x, mask), vals.var(ddof=1),
                             rtol=1e-5)
  np.testing.assert_allclose(common.masked_var(x, mask, unbiased=False),
                             vals.var(), rtol=1e-5)
  white = np.asarray(common.masked_whiten(x, mask))
  want = (x - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8)
  np.testing.assert_allclose(white[mask > 0], want[mask > 0], rtol=1e-4,
                             atol=1e-5)
  assert np.all(white[mask == 0] == 0)
  scaled = np.asarray(common.masked_whiten(x, mask, shift_mean=False))
  np.testing.assert_allclose(scaled[mask > 0],
                             want[mask > 0] + vals.mean(), rtol=1e-4,
                             atol=1e-5)
  # Row-wise means, with an empty row giving 0 rather than NaN.
  mask[2] = 0
  rows = common.masked_mean(x, mask, axis=1)
  for i in range(4):
    want_i = x[i][mask[i] > 0].mean() if mask[i].any() else 0.0
    np.testing.assert_allclose(rows[i], want_i, rtol=1e-5)


def test_pair_concat_split_and_valid_pairs(pair_batch):
  both = common.concat_pair(pair_batch, ("tokens", "loss_mask"))
  assert both["tokens"].shape == (8, pair_batch["chosen"]["tokens"].shape[1])
  chosen, rejected = common.split_pair(both["tokens"])
  np.testing.assert_array_equal(chosen, pair_batch["chosen"]["tokens"])
  np.testing.assert_array_equal(rejected, pair_batch["rejected"]["tokens"])
  batch = {h: dict(pair_batch[h]) for h in ("chosen", "rejected")}
  batch["rejected"]["loss_mask"] = batch["rejected"]["loss_mask"].copy()
  batch["rejected"]["loss_mask"][1] = 0.0
  np.testing.assert_array_equal(common.valid_pairs(batch), [1, 0, 1, 1])
