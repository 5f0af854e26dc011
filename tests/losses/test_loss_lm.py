"""The masked LM loss and z-loss against a float64 numpy hand computation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.losses.lm import lm_loss, token_cross_entropy


def _case(seed: int = 0):
  rng = np.random.default_rng(seed)
  b, t, v = 3, 5, 11
  logits = (3.0 * rng.standard_normal((b, t, v))).astype(np.float32)
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  # Uneven weights: a padded row end, fractional weights, one empty row.
  mask = np.array([[1, 1, 1, 0, 0],
                   [0.5, 1, 2, 1, 0.25],
                   [0, 0, 0, 0, 0]], np.float32)
  return logits, targets, mask


def _numpy_reference(logits, targets, mask, coef):
  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
  log_probs = x - lse[..., None]
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  w = mask.astype(np.float64)
  ce = (nll * w).sum() / w.sum()
  z = coef * (lse ** 2 * w).sum() / w.sum()
  acc = ((x.argmax(-1) == targets) * w).sum() / w.sum()
  return ce, z, acc, nll, lse


@pytest.mark.parametrize("coef", [0.0, 1e-2])
def test_lm_loss_matches_numpy(coef: float):
  logits, targets, mask = _case()
  ce, z, acc, _, _ = _numpy_reference(logits, targets, mask, coef)
  loss, metrics = lm_loss(jnp.asarray(logits), jnp.asarray(targets),
                          jnp.asarray(mask), z_loss=coef)
  np.testing.assert_allclose(float(metrics["cross_entropy"]), ce, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["z_loss"]), z, rtol=1e-6,
                             atol=1e-12)
  np.testing.assert_allclose(float(loss), ce + z, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["accuracy"]), acc, rtol=1e-6)
  assert float(metrics["weight"]) == float(mask.sum())
  if coef:
    assert float(metrics["z_loss"]) > 1e-3 * float(loss)  # not negligible


def test_masked_tokens_do_not_matter():
  logits, targets, mask = _case()
  loss, _ = lm_loss(jnp.asarray(logits), jnp.asarray(targets),
                    jnp.asarray(mask), z_loss=1e-2)
  changed = logits.copy()
  changed[mask == 0] = 50.0 * np.random.default_rng(1).standard_normal(
      changed[mask == 0].shape)
  targets2 = np.where(mask == 0, 0, targets).astype(np.int32)
  loss2, _ = lm_loss(jnp.asarray(changed), jnp.asarray(targets2),
                     jnp.asarray(mask), z_loss=1e-2)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def test_token_cross_entropy_in_f32_from_bf16_logits():
  logits, targets, mask = _case(2)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  nll, lse = token_cross_entropy(bf16, jnp.asarray(targets))
  assert nll.dtype == lse.dtype == jnp.float32
  _, _, _, want_nll, want_lse = _numpy_reference(
      np.asarray(bf16.astype(jnp.float32)), targets, mask, 0.0)
  np.testing.assert_allclose(np.asarray(nll), want_nll, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(lse), want_lse, rtol=1e-5, atol=1e-5)


def test_all_masked_batch_gives_zero_not_nan():
  logits, targets, mask = _case()
  loss, metrics = lm_loss(jnp.asarray(logits), jnp.asarray(targets),
                          jnp.zeros_like(jnp.asarray(mask)), z_loss=1e-2)
  assert float(loss) == 0.0 and float(metrics["weight"]) == 0.0
