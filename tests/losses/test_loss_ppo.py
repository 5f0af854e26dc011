"""PPO pieces against brute-force numpy: GAE, KL-shaped rewards, clipped
losses, KL controllers, and the registered loss on tiny models."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.losses import ppo
from lifejax.model import heads


def np_gae(rewards, values, mask, gamma, lam):
  """Textbook GAE, one row at a time over the row's response positions."""
  adv = np.zeros(rewards.shape)
  for i in range(rewards.shape[0]):
    steps = [j for j in range(rewards.shape[1]) if mask[i, j] > 0]
    last_adv, next_value = 0.0, 0.0
    for j in reversed(steps):
      delta = rewards[i, j] + gamma * next_value - values[i, j]
      last_adv = delta + gamma * lam * last_adv
      adv[i, j] = last_adv
      next_value = values[i, j]
  return adv, (adv + values) * (mask > 0)


@pytest.fixture(scope="module")
def rollout_arrays():
  rng = np.random.default_rng(0)
  b, t = 6, 9
  mask = np.zeros((b, t), np.float32)
  mask[0, 3:7] = 1          # a usual response
  mask[1, :] = 1            # all response
  mask[2, 8] = 1            # one token, at the end
  mask[3, [2, 3, 6, 7]] = 1  # a gap (e.g. tool output) inside the response
  # row 4: empty (padding); row 5: one token at the start
  mask[5, 0] = 1
  return {"rewards": rng.normal(size=(b, t)).astype(np.float32),
          "values": rng.normal(size=(b, t)).astype(np.float32),
          "logp": -rng.random((b, t)).astype(np.float32) * 3,
          "ref_logp": -rng.random((b, t)).astype(np.float32) * 3,
          "score": rng.normal(size=b).astype(np.float32) * 2,
          "mask": mask}


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.8), (1.0, 0.95), (0.5, 0.0)])
def test_gae_matches_bruteforce(rollout_arrays, gamma, lam):
  a = rollout_arrays
  adv, ret = jax.jit(ppo.gae, static_argnums=(3, 4))(
      a["rewards"], a["values"], a["mask"], gamma, lam)
  want_adv, want_ret = np_gae(a["rewards"], a["values"], a["mask"], gamma, lam)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[a["mask"] == 0] == 0)


def test_gae_lambda_one_gives_monte_carlo_returns(rollout_arrays):
  """gamma = lam = 1: returns are the sums of the remaining rewards."""
  a = rollout_arrays
  _, ret = ppo.gae(a["rewards"], a["values"], a["mask"], 1.0, 1.0)
  masked = a["rewards"] * a["mask"]
  to_go = np.cumsum(masked[:, ::-1], axis=1)[:, ::-1]
  np.testing.assert_allclose(ret, to_go * a["mask"], rtol=1e-5, atol=1e-5)


def test_rewards_with_kl_by_hand():
  mask = np.array([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]],
                  np.float32)
  logp = np.array([[-1.0, -2.0, -0.5, -1.5, -3.0]] * 3, np.float32)
  ref = np.array([[-2.0, -1.0, -0.5, -2.5, -1.0]] * 3, np.float32)
  score = np.array([2.0, 5.0, -1.0], np.float32)
  beta = 0.1
  rewards, metrics = ppo.rewards_with_kl(score, logp, ref, mask, beta)
  k1 = logp[0] - ref[0]  # [1, -1, 0, 1, -2]
  want = np.array([
      [0.0, -beta * -1.0, 0.0, -beta * 1.0 + 2.0, 0.0],
      [0.0] * 5,  # no response: no score, no penalty
      [-beta * 1.0, -beta * -1.0 - 1.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(rewards, want, rtol=1e-6, atol=1e-7)
  # Means over the 2 rows with a response.
  np.testing.assert_allclose(metrics["kl"], (0.0 + 0.0) / 2, atol=1e-7)
  np.testing.assert_allclose(metrics["score"], 0.5)
  k3 = np.exp(ref[0] - logp[0]) - (ref[0] - logp[0]) - 1
  np.testing.assert_allclose(
      metrics["kl_k3"], ((k3 * mask[0]).sum() + (k3 * mask[2]).sum()) / 2,
      rtol=1e-5)
  np.testing.assert_allclose(metrics["non_score_reward"],
                             -beta * ((k1 * mask[0]).sum()
                                      + (k1 * mask[2]).sum()) / 2, atol=1e-7)
  assert np.all(np.asarray(ppo.kl_k3(logp, ref)) >= 0)
  np.testing.assert_allclose(ppo.kl_k3(logp[0], ref[0]), k3, rtol=1e-5)


def test_ppo_advantages_composition(rollout_arrays):
  a = rollout_arrays
  mask = a["mask"]
  adv, ret, metrics = ppo.ppo_advantages(
      a["score"], a["logp"], a["ref_logp"], a["values"], mask, kl_coef=0.05,
      gamma=0.99, lam=0.9, score_clip=1.0, whiten_rewards=True)
  score = np.clip(a["score"], -1.0, 1.0)
  rewards, _ = ppo.rewards_with_kl(score, a["logp"], a["ref_logp"], mask,
                                   0.05)
  rewards = np.asarray(rewards, np.float64)
  on = mask > 0
  # Whitened keeping the mean: (r - mean) / std + mean on response tokens.
  mean = rewards[on].mean()
  rewards = ((rewards - mean) / np.sqrt(rewards[on].var(ddof=1) + 1e-8)
             + mean) * on
  want_adv, want_ret = np_gae(rewards, a["values"], mask, 0.99, 0.9)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-4, atol=1e-5)
  white = (want_adv - want_adv[on].mean()) / np.sqrt(
      want_adv[on].var(ddof=1) + 1e-8)
  np.testing.assert_allclose(np.asarray(adv)[on], white[on], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(metrics["score"],
                             score[on.any(axis=1)].mean(), rtol=1e-6)


def test_clipped_policy_loss_and_gradient():
  rng = np.random.default_rng(1)
  b, t, eps = 3, 6, 0.2
  old = -rng.random((b, t)).astype(np.float32) * 2
  logp = old + rng.normal(0, 0.3, (b, t)).astype(np.float32)
  adv = rng.normal(size=(b, t)).astype(np.float32)
  mask = (rng.random((b, t)) < 0.7).astype(np.float32)
  loss, metrics = ppo.clipped_policy_loss(logp, old, adv, mask, eps)
  grad = jax.grad(lambda lp: ppo.clipped_policy_loss(lp, old, adv, mask,
                                                     eps)[0])(logp)
  n = mask.sum()
  total, clipped, want_grad, kl = 0.0, 0, np.zeros((b, t)), 0.0
  for i in range(b):
    for j in range(t):
      if not mask[i, j]:
        continue
      ratio = np.exp(np.float64(logp[i, j]) - old[i, j])
      unclipped = -adv[i, j] * ratio
      clip = -adv[i, j] * min(max(ratio, 1 - eps), 1 + eps)
      total += max(unclipped, clip)
      clipped += clip > unclipped
      kl += ratio - 1 - np.log(ratio)
      # The clipped branch is flat in logp; the other has d/dlogp = -A ratio.
      want_grad[i, j] = 0.0 if clip > unclipped else -adv[i, j] * ratio / n
  assert 0 < clipped < n  # the data exercises both branches
  np.testing.assert_allclose(loss, total / n, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], clipped / n, rtol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"], kl / n, rtol=1e-4)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("clip_eps", [0.1, None])
def test_clipped_value_loss(clip_eps):
  rng = np.random.default_rng(2)
  values = rng.normal(size=(3, 5)).astype(np.float32)
  old = values + rng.normal(0, 0.3, (3, 5)).astype(np.float32)
  returns = rng.normal(size=(3, 5)).astype(np.float32)
  mask = (rng.random((3, 5)) < 0.8).astype(np.float32)
  loss, metrics = ppo.clipped_value_loss(values, old, returns, mask, clip_eps)
  v, o, r = (x.astype(np.float64) for x in (values, old, returns))
  un = (v - r) ** 2
  cl = un if clip_eps is None else (o + np.clip(v - o, -clip_eps, clip_eps)
                                    - r) ** 2
  on = mask > 0
  np.testing.assert_allclose(loss, 0.5 * np.maximum(un, cl)[on].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["value_clip_fraction"],
                             (cl > un)[on].mean())
  if clip_eps is not None:
    assert 0 < float(metrics["value_clip_fraction"]) < 1


def test_explained_variance():
  rng = np.random.default_rng(3)
  returns = rng.normal(size=(4, 6)).astype(np.float32)
  mask = np.ones((4, 6), np.float32)
  mask[1, 3:] = 0
  np.testing.assert_allclose(ppo.explained_variance(returns, returns, mask),
                             1.0)
  mean = returns[mask > 0].mean()
  np.testing.assert_allclose(
      ppo.explained_variance(np.full_like(returns, mean), returns, mask), 0.0,
      atol=1e-6)
  noisy = returns + rng.normal(size=returns.shape).astype(np.float32)
  r, n = returns[mask > 0], noisy[mask > 0]
  np.testing.assert_allclose(ppo.explained_variance(noisy, returns, mask),
                             1 - np.var(r - n) / np.var(r), rtol=1e-5)


def test_kl_controllers():
  fixed = ppo.FixedKLController.create(0.1)
  assert float(fixed.update(100.0, 512).value) == pytest.approx(0.1)
  ctl = ppo.AdaptiveKLController.create(0.2, target=6.0, horizon=10000)
  update = jax.jit(lambda c, kl: c.update(kl, 256))  # a pytree: jittable
  up = update(ctl, 9.0)        # KL too high: error clipped to +0.2
  np.testing.assert_allclose(up.value, 0.2 * (1 + 0.2 * 256 / 10000),
                             rtol=1e-6)
  down = update(ctl, 3.0)      # too low: clipped to -0.2
  np.testing.assert_allclose(down.value, 0.2 * (1 - 0.2 * 256 / 10000),
                             rtol=1e-6)
  near = update(ctl, 6.6)      # within the band: proportional
  np.testing.assert_allclose(near.value, 0.2 * (1 + 0.1 * 256 / 10000),
                             rtol=1e-6)
  assert up.target == 6.0 and up.horizon == 10000
  # Held at the target, the coefficient does not move.
  np.testing.assert_allclose(update(ctl, 6.0).value, 0.2, rtol=1e-7)
  with pytest.raises(ValueError):
    ppo.AdaptiveKLController.create(0.2, target=0.0, horizon=1)


# -- the registered loss on tiny models ----------------------------------------


@pytest.fixture(scope="module")
def rollout(helpers):
  """A rollout batch: 4 rows, responses of different lengths."""
  rng = np.random.default_rng(4)
  rows = helpers.lm_rows(rng, 4, [2, 3, 1, 4], [5, 2, 7, 3])
  b, t = rows["tokens"].shape
  rows["old_logp"] = (-rng.random((b, t)) * 3 - 1.5).astype(np.float32)
  rows["old_values"] = rng.normal(size=(b, t)).astype(np.float32)
  rows["advantages"] = rng.normal(size=(b, t)).astype(np.float32)
  rows["returns"] = rng.normal(size=(b, t)).astype(np.float32)
  return rows


def test_ppo_loss_fn_separate_and_shared(rollout, tiny_lm, helpers):
  cfg = helpers.cfg
  value = helpers.random_tiny(heads.ValueModel, seed=5)
  # The value model shares the LM's trunk weights, so a PolicyValueModel
  # made of the same weights must give the same loss.
  value_params = heads.scalar_params_from_lm(value.params, tiny_lm.params)
  value_params["head"]["kernel"] = jnp.asarray(
      np.random.default_rng(6).normal(size=(cfg.d_model, 1)), jnp.float32)
  shared = helpers.random_tiny(heads.PolicyValueModel, seed=0)
  shared_params = {"lm": tiny_lm.params, "value_head": value_params["head"]}
  hp = dict(clip_eps=0.2, value_clip_eps=0.3, vf_coef=0.5, ent_coef=0.01)
  separate_fn = ppo.make_ppo_loss_fn(tiny_lm.graphdef, value.graphdef, **hp)
  shared_fn = ppo.make_ppo_loss_fn(shared.graphdef, **hp)

  @jax.jit
  def run(sep_params, sh_params):
    return separate_fn(sep_params, rollout, None), shared_fn(sh_params,
                                                             rollout, None)

  (loss, metrics), (loss_sh, metrics_sh) = run(
      {"policy": tiny_lm.params, "value": value_params}, shared_params)

  # Brute force from the models' outputs.
  mask = rollout["loss_mask"]
  on = mask > 0
  logp_all = helpers.np_log_softmax(helpers.lm_logits(tiny_lm, rollout))
  logp = np.take_along_axis(logp_all, rollout["targets"][..., None],
                            axis=-1)[..., 0]
  entropy = -(np.exp(logp_all) * logp_all).sum(-1)
  values = helpers.lm_logits(dataclasses.replace(value, params=value_params),
                             rollout)
  ratio = np.exp(logp - rollout["old_logp"])
  adv = rollout["advantages"]
  pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))[on].mean()
  old_v, ret = rollout["old_values"], rollout["returns"]
  vf = 0.5 * np.maximum((values - ret) ** 2,
                        (old_v + np.clip(values - old_v, -0.3, 0.3) - ret) ** 2
                        )[on].mean()
  want = pg + 0.5 * vf - 0.01 * entropy[on].mean()
  np.testing.assert_allclose(metrics["policy_loss"], pg, rtol=1e-5)
  np.testing.assert_allclose(metrics["value_loss"], vf, rtol=1e-5)
  np.testing.assert_allclose(metrics["entropy"], entropy[on].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(metrics["weight"]) == mask.sum()
  np.testing.assert_allclose(loss_sh, loss, rtol=1e-5)
  for k in metrics:
    np.testing.assert_allclose(metrics_sh[k], metrics[k], rtol=1e-4,
                               atol=1e-6, err_msg=k)


def test_ppo_step_improves_surrogate_and_critic(rollout, helpers):
  """One small gradient step lowers the policy and the value loss, raising
  the log-probs of positive-advantage tokens relative to negative ones."""
  shared = helpers.random_tiny(heads.PolicyValueModel, seed=7)
  loss_fn = ppo.make_ppo_loss_fn(shared.graphdef, clip_eps=10.0,
                                 value_clip_eps=None, vf_coef=1.0)

  def adv_weighted_logp(params):
    logits, _ = nnx.merge(shared.graphdef, params)(
        rollout["tokens"], rollout["positions"], rollout["segment_ids"])
    logp = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp, rollout["targets"][..., None],
                               axis=-1)[..., 0]
    return jnp.sum(logp * rollout["advantages"] * rollout["loss_mask"])

  @jax.jit
  def run(params):
    grads, m0 = jax.grad(lambda p: loss_fn(p, rollout, None),
                         has_aux=True)(params)
    new = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)
    return (m0, loss_fn(new, rollout, None)[1], adv_weighted_logp(params),
            adv_weighted_logp(new))

  m0, m1, s0, s1 = run(shared.params)
  assert float(m1["policy_loss"]) < float(m0["policy_loss"])
  assert float(m1["value_loss"]) < float(m0["value_loss"])
  assert float(s1) > float(s0)
