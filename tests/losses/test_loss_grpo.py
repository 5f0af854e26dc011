"""GRPO: group-relative advantages by hand, the per-token objective in
closed form, and the registered loss on a tiny LM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.losses import common, grpo


def test_group_advantages_by_hand():
  scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 0.0, 1.0, 0.0,
                     1.0], np.float32)
  adv = np.asarray(grpo.group_advantages(scores, 4, eps=0.0))
  # Group 1: mean 2.5, population std sqrt(1.25).
  np.testing.assert_allclose(adv[:4], np.array([-1.5, -0.5, 0.5, 1.5])
                             / np.sqrt(1.25), rtol=1e-6)
  # Identical rewards carry no signal: exactly zero advantage.
  assert np.all(adv[4:8] == 0.0)
  assert np.all(np.asarray(grpo.group_advantages(scores, 4))[4:8] == 0.0)
  # Even where the group mean rounds away from the scores (3 * 0.1 / 3).
  tenths = np.full(3, 0.1, np.float32)
  assert float(jnp.mean(jnp.asarray(tenths))) != float(tenths[0])
  assert np.all(np.asarray(grpo.group_advantages(tenths, 3, eps=0.0)) == 0)
  assert np.all(np.asarray(grpo.group_advantages(tenths, 3, scale=False))
                == 0)
  # 0/1 rewards: mean 0.5, std 0.5 -> +-1.
  np.testing.assert_allclose(adv[8:], [-1.0, 1.0, -1.0, 1.0], rtol=1e-6)
  # Centering only (Dr. GRPO).
  np.testing.assert_allclose(grpo.group_advantages(scores, 4, scale=False),
                             [-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0,
                              -0.5, 0.5, -0.5, 0.5], rtol=1e-6)
  # Groups are consecutive rows: G = 2 regroups the same scores.
  np.testing.assert_allclose(grpo.group_advantages(scores, 2, eps=0.0)[:4],
                             [-1.0, 1.0, -1.0, 1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="groups of 5"):
    grpo.group_advantages(scores, 5)


def test_token_loss_closed_form():
  logp = np.array([[-1.0, -0.5, -2.0], [-0.2, -3.0, -1.0]], np.float32)
  old = np.array([[-1.0, -1.0, -1.5], [-0.1, -3.0, -2.0]], np.float32)
  ref = np.array([[-1.2, -0.4, -2.0], [-0.5, -2.0, -1.0]], np.float32)
  adv = np.array([1.0, -2.0], np.float32)
  loss, kl, clipped = grpo.grpo_token_loss(logp, old, ref, adv, clip_eps=0.2,
                                           kl_coef=0.1)
  for i in range(2):
    for j in range(3):
      rho = np.exp(np.float64(logp[i, j]) - old[i, j])
      surr = min(rho * adv[i], np.clip(rho, 0.8, 1.2) * adv[i])
      k3 = np.exp(ref[i, j] - np.float64(logp[i, j])) - (
          ref[i, j] - logp[i, j]) - 1
      np.testing.assert_allclose(kl[i, j], k3, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(loss[i, j], -surr + 0.1 * k3, rtol=1e-5)
      assert clipped[i, j] == float(surr < rho * adv[i])
  assert 0 < float(np.sum(clipped)) < 6


@pytest.fixture(scope="module")
def rollout(helpers):
  rng = np.random.default_rng(0)
  rows = helpers.lm_rows(rng, 4, [2, 3, 1, 4], [5, 2, 7, 3])
  rows["advantages"] = np.asarray(grpo.group_advantages(
      np.array([1.0, 0.0, 3.0, 1.0], np.float32), 2))
  rows["ref_logp"] = (-rng.random(rows["tokens"].shape) * 3 - 2).astype(
      np.float32)
  return rows


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
def test_grpo_loss_fn_matches_numpy(rollout, tiny_lm, helpers, aggregation):
  """No old_logp in the batch: the ratio is 1, the loss is -A + beta k3."""
  loss_fn = grpo.make_grpo_loss_fn(tiny_lm.graphdef, kl_coef=0.1,
                                   aggregation=aggregation)
  loss, metrics = jax.jit(loss_fn)(tiny_lm.params, rollout, None)
  logp_all = helpers.np_log_softmax(helpers.lm_logits(tiny_lm, rollout))
  logp = np.take_along_axis(logp_all, rollout["targets"][..., None],
                            axis=-1)[..., 0]
  ref, mask = rollout["ref_logp"], rollout["loss_mask"]
  k3 = np.exp(ref - logp) - (ref - logp) - 1
  per_token = -rollout["advantages"][:, None] + 0.1 * k3
  if aggregation == "sequence":
    want = np.mean([per_token[i][mask[i] > 0].mean() for i in range(4)])
    want_kl = np.mean([k3[i][mask[i] > 0].mean() for i in range(4)])
    weight = 4
  else:
    want, want_kl, weight = (per_token[mask > 0].mean(), k3[mask > 0].mean(),
                             mask.sum())
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], want_kl, rtol=1e-5)
  np.testing.assert_allclose(metrics["policy_loss"], want - 0.1 * want_kl,
                             rtol=1e-4, atol=1e-6)
  assert float(metrics["weight"]) == weight
  assert float(metrics["clip_fraction"]) == 0.0


def test_grpo_gradient_is_advantage_weighted_score(rollout, tiny_lm):
  """At ratio 1 the surrogate's gradient is the policy gradient
  mean_seq mean_t A * grad log pi, also with an explicit old_logp equal to
  the current one; zero advantages and no KL give zero gradient."""
  loss_fn = grpo.make_grpo_loss_fn(tiny_lm.graphdef, kl_coef=0.0)
  mask = rollout["loss_mask"]

  def reinforce(params):
    model = nnx.merge(tiny_lm.graphdef, params)
    logits = model(rollout["tokens"], rollout["positions"],
                   rollout["segment_ids"])
    logp = common.token_logprobs(logits, rollout["targets"])
    per_seq = common.masked_mean(-rollout["advantages"][:, None] * logp,
                                 mask, axis=1)
    return jnp.mean(per_seq), logp

  @jax.jit
  def run(params):
    g_ref, logp = jax.grad(reinforce, has_aux=True)(params)
    with_old = dict(rollout, old_logp=logp)
    g_old = jax.grad(lambda p: loss_fn(p, with_old, None)[0])(params)
    no_signal = dict(with_old, advantages=jnp.zeros(4, jnp.float32))
    g_zero = jax.grad(lambda p: loss_fn(p, no_signal, None)[0])(params)
    return g_ref, g_old, g_zero

  g_ref, g_old, g_zero = run(tiny_lm.params)
  g_loss = jax.jit(jax.grad(lambda p: loss_fn(p, rollout, None)[0]))(
      tiny_lm.params)
  def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])

  assert np.abs(flat(g_ref)).max() > 1e-4
  np.testing.assert_allclose(flat(g_loss), flat(g_ref), rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(flat(g_old), flat(g_ref), rtol=1e-4, atol=1e-8)
  assert np.all(flat(g_zero) == 0.0)


def test_grpo_needs_ref_logp_for_kl(rollout, tiny_lm):
  no_ref = {k: v for k, v in rollout.items() if k != "ref_logp"}
  loss_fn = grpo.make_grpo_loss_fn(tiny_lm.graphdef, kl_coef=0.04)
  with pytest.raises(KeyError, match="ref_logp"):
    jax.eval_shape(lambda p: loss_fn(p, no_ref, None), tiny_lm.params)
