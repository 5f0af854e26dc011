"""ORPO and KTO against the papers' closed forms (numpy float64, hand
numbers), their gradients, and the loss functions on a tiny LM against
brute-force float64 log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.losses import dpo, kto, registry

# Hand-made sequence log-probs of 4 pairs and their response lengths.
CHOSEN = np.array([-5.0, -10.0, -3.0, -0.02], np.float32)
REJECTED = np.array([-7.0, -9.0, -3.5, -40.0], np.float32)
CHOSEN_LEN = np.array([5.0, 10.0, 2.0, 4.0], np.float32)
REJECTED_LEN = np.array([7.0, 6.0, 3.0, 2.0], np.float32)


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_log_odds(logp, length):
  """log(p / (1 - p)) of p = exp(logp / length), float64."""
  a = np.asarray(logp, np.float64) / np.asarray(length, np.float64)
  return a - np.log(-np.expm1(a))


def np_orpo_pair_losses(lam, chosen=CHOSEN, rejected=REJECTED):
  return -lam * np_log_sigmoid(np_log_odds(chosen, CHOSEN_LEN)
                               - np_log_odds(rejected, REJECTED_LEN))


def orpo_logps(chosen=CHOSEN, rejected=REJECTED) -> dpo.PreferenceLogps:
  return dpo.PreferenceLogps(jnp.asarray(chosen), jnp.asarray(rejected),
                             CHOSEN_LEN, REJECTED_LEN)


# -- ORPO ----------------------------------------------------------------------


def test_orpo_objective_closed_form():
  losses, lo_c, lo_r = dpo.orpo_objective(orpo_logps(),
                                          odds_ratio_weight=0.25)
  np.testing.assert_allclose(losses, np_orpo_pair_losses(0.25), rtol=1e-5)
  # The "rewards" are each answer's log-odds: pair 0 has averages -1 and
  # -1, so equal odds and loss lambda * log 2.
  np.testing.assert_allclose(lo_c, np_log_odds(CHOSEN, CHOSEN_LEN),
                             rtol=1e-5)
  np.testing.assert_allclose(lo_r, np_log_odds(REJECTED, REJECTED_LEN),
                             rtol=1e-5)
  np.testing.assert_allclose(losses[0], 0.25 * np.log(2.0), rtol=1e-6)
  assert losses.dtype == jnp.float32 and losses.shape == (4,)


@pytest.mark.parametrize("a", [-1e-5, -1e-3, -0.5, -0.69, -0.7, -1.0, -20.0,
                               -50.0])
def test_log1mexp_is_accurate_at_both_ends(a):
  # float64 truth; a naive f32 log(1 - exp(a)) loses all digits near 0
  # (-1e-5) and underflows to log 1 = 0 far from it (-50).
  want = np.log(-np.expm1(np.float64(a)))
  got = float(dpo.log1mexp(jnp.float32(a)))
  assert got == pytest.approx(want, rel=2e-6)


def test_log_odds_finite_at_probability_one():
  """An answer with (rounded) probability 1 gets a finite log-odds and a
  finite gradient (a is clamped to <= -1e-6)."""
  value, grad = jax.value_and_grad(lambda a: dpo.log_odds(a))(jnp.float32(0))
  assert np.isfinite(float(value)) and np.isfinite(float(grad))
  assert float(value) == pytest.approx(-1e-6 - np.log(-np.expm1(-1e-6)),
                                       rel=1e-4)


def test_orpo_gradient_raises_chosen_over_rejected():
  def total(c, r):
    return jnp.sum(dpo.orpo_objective(orpo_logps(c, r),
                                      odds_ratio_weight=0.1)[0])
  g_c, g_r = jax.grad(total, argnums=(0, 1))(CHOSEN, REJECTED)
  assert np.all(np.asarray(g_c) < 0) and np.all(np.asarray(g_r) > 0)
  # Closed form of d/d log pi(w): -lambda * sigmoid(-d) * dlo/da / |w|
  # with dlo/da = 1 / (1 - exp(a)), d the log-odds ratio.
  a = CHOSEN.astype(np.float64) / CHOSEN_LEN
  d = (np_log_odds(CHOSEN, CHOSEN_LEN) - np_log_odds(REJECTED, REJECTED_LEN))
  want = -0.1 * np_sigmoid(-d) / (-np.expm1(a)) / CHOSEN_LEN
  np.testing.assert_allclose(g_c, want, rtol=1e-4)


# -- KTO -----------------------------------------------------------------------

# Hand-made log-ratios r = log pi - log ref of 5 completions.
LOGRATIO = np.array([1.5, -0.5, 0.25, -2.0, 0.0], np.float32)
DESIRABLE = np.array([1.0, 1.0, 0.0, 0.0, 1.0], np.float32)


def np_kto_losses(r, desirable, z0, beta, w_d, w_u):
  r = np.asarray(r, np.float64)
  return np.where(desirable > 0.5,
                  w_d * (1.0 - np_sigmoid(beta * (r - z0))),
                  w_u * (1.0 - np_sigmoid(beta * (z0 - r))))


def test_kto_objective_closed_form():
  losses, rewards = kto.kto_objective(
      jnp.asarray(LOGRATIO), jnp.asarray(DESIRABLE), jnp.float32(0.3),
      beta=0.5, desirable_weight=1.5, undesirable_weight=0.75)
  np.testing.assert_allclose(
      losses, np_kto_losses(LOGRATIO, DESIRABLE, 0.3, 0.5, 1.5, 0.75),
      rtol=1e-6)
  np.testing.assert_allclose(rewards, 0.5 * LOGRATIO, rtol=1e-6)
  # At r = z0 every completion loses lambda / 2.
  at_z0, _ = kto.kto_objective(jnp.full(5, 0.3), jnp.asarray(DESIRABLE),
                               jnp.float32(0.3), beta=2.0,
                               desirable_weight=1.5, undesirable_weight=0.75)
  np.testing.assert_allclose(at_z0, np.where(DESIRABLE > 0, 0.75, 0.375),
                             rtol=1e-6)


def test_kto_gradient_signs():
  """Raising log pi lowers a desirable completion's loss and raises an
  undesirable one's."""
  g = jax.grad(lambda r: jnp.sum(kto.kto_objective(
      r, jnp.asarray(DESIRABLE), jnp.float32(0.1), beta=0.3,
      desirable_weight=1.0, undesirable_weight=1.0)[0]))(jnp.asarray(LOGRATIO))
  g = np.asarray(g)
  assert np.all(g[DESIRABLE > 0] < 0) and np.all(g[DESIRABLE == 0] > 0)
  # d/dr of 1 - sigmoid(beta (r - z0)) is -beta s (1 - s).
  s = np_sigmoid(0.3 * (LOGRATIO.astype(np.float64) - 0.1))
  np.testing.assert_allclose(g[DESIRABLE > 0],
                             (-0.3 * s * (1 - s))[DESIRABLE > 0], rtol=1e-5)


def test_kl_estimate_is_clamped_masked_and_constant():
  x = jnp.asarray([0.4, -0.1, 0.9, 5.0])
  valid = jnp.asarray([1.0, 1.0, 1.0, 0.0])
  assert float(kto.kl_estimate(x, valid)) == pytest.approx(0.4, rel=1e-6)
  assert float(kto.kl_estimate(-x, valid)) == 0.0  # mean -0.4 -> 0
  g = jax.grad(lambda v: kto.kl_estimate(v, valid))(x)
  np.testing.assert_array_equal(g, np.zeros(4))


# -- the loss functions on a tiny LM -------------------------------------------


@pytest.fixture(scope="module")
def padded_pairs(pair_batch):
  batch = {h: {k: v.copy() for k, v in pair_batch[h].items()}
           for h in ("chosen", "rejected")}
  for h in ("chosen", "rejected"):
    batch[h]["loss_mask"][3] = 0.0  # pair 3 is padding
  return batch


def _np_logps(tiny, rows, helpers):
  return helpers.np_sequence_logps(helpers.lm_logits(tiny, rows),
                                   rows["targets"], rows["loss_mask"])


def test_orpo_loss_fn_matches_numpy(padded_pairs, tiny_lm, helpers):
  loss_fn = dpo.make_preference_loss_fn("orpo", tiny_lm.graphdef,
                                        odds_ratio_weight=0.3)
  assert not dpo.needs_reference(registry.get_loss("orpo"))
  assert dpo.needs_reference(registry.get_loss("dpo"))
  loss, m = jax.jit(loss_fn)(tiny_lm.params, padded_pairs, None)
  pc, nc = (x[:3] for x in _np_logps(tiny_lm, padded_pairs["chosen"],
                                       helpers))
  pr, nr = (x[:3] for x in _np_logps(tiny_lm, padded_pairs["rejected"],
                                       helpers))
  d = np_log_odds(pc, nc) - np_log_odds(pr, nr)  # pair 3 is padding
  nll = -pc / nc
  np.testing.assert_allclose(
      loss, np.mean(nll - 0.3 * np_log_sigmoid(d)), rtol=1e-5)
  assert float(m["weight"]) == 3.0
  np.testing.assert_allclose(m["reward_margin"], d.mean(), rtol=1e-4)
  np.testing.assert_allclose(m["chosen_nll"], nll.mean(), rtol=1e-5)
  with pytest.raises(TypeError, match="ref_params"):
    dpo.make_preference_loss_fn("orpo", tiny_lm.graphdef,
                                ref_params=tiny_lm.params)
  with pytest.raises(ValueError, match="odds_ratio_weight"):
    dpo.make_preference_loss_fn("orpo", tiny_lm.graphdef,
                                odds_ratio_weight=-1.0)


@pytest.fixture(scope="module")
def unpaired_batch(helpers):
  """5 completions (row 4 padding) and their mismatched rows."""
  rng = np.random.default_rng(7)
  completion = helpers.lm_rows(rng, 5, [2, 3, 1, 4, 2], [5, 2, 7, 3, 3])
  mismatched = helpers.lm_rows(rng, 5, [2, 3, 1, 4, 2], [3, 5, 4, 4, 2])
  completion["loss_mask"][4] = 0.0
  completion["desirable"] = np.array([1, 0, 1, 0, 1], np.float32)
  return {"completion": completion, "kl": mismatched}


@pytest.fixture(scope="module")
def np_unpaired(unpaired_batch, tiny_lm, tiny_lm_other, helpers):
  return {(who, h): _np_logps(tiny, unpaired_batch[h], helpers)[0]
          for who, tiny in (("a", tiny_lm), ("b", tiny_lm_other))
          for h in ("completion", "kl")}


def _np_kto(np_unpaired, policy, ref, beta, w_d, w_u):
  """(loss, z0, r) in float64 for rows 0..3 (row 4 is padding)."""
  r = (np_unpaired[policy, "completion"] - np_unpaired[ref, "completion"])
  kl = np_unpaired[policy, "kl"] - np_unpaired[ref, "kl"]
  z0 = max(kl[:4].mean(), 0.0)
  des = np.array([1, 0, 1, 0], np.float64)
  return np.mean(np_kto_losses(r[:4], des, z0, beta, w_d, w_u)), z0, r[:4]


def test_kto_loss_fn_matches_numpy_and_holds_z0_constant(
    unpaired_batch, np_unpaired, tiny_lm, tiny_lm_other):
  """The loss with the reference run inside it and with precomputed
  "ref_logp" equals the float64 closed form; its gradient equals that of
  the same KTO loss with z0 given as a number (no gradient through the
  mismatched rows). The (policy, reference) order is the one with z0 > 0,
  so that the clamp does not zero z0 (the other order negates the mean
  log-ratio; the clamp is `test_kl_estimate_...`'s)."""
  tiny = {"a": tiny_lm, "b": tiny_lm_other}
  beta, w_d, w_u = 0.5, 1.25, 0.8
  order = [(p, r) for p, r in (("a", "b"), ("b", "a"))
           if _np_kto(np_unpaired, p, r, beta, w_d, w_u)[1] > 0]
  assert len(order) == 1
  policy, ref = order[0]
  want, z0, r = _np_kto(np_unpaired, policy, ref, beta, w_d, w_u)
  hp = dict(beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
  from_params = registry.get_loss("kto", kind="unpaired")(
      tiny[policy].graphdef, ref_params=tiny[ref].params, **hp)
  from_batch = kto.make_kto_loss_fn(tiny[policy].graphdef, **hp)
  policy_fn = kto.make_reference_fn(tiny[policy].graphdef)
  ref_fn = kto.make_reference_fn(tiny[ref].graphdef)
  valid = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])

  @jax.jit  # one compilation for everything under test
  def run(params, ref_params, batch):
    lc, lk = ref_fn(ref_params, batch)
    with_ref = {"completion": {**batch["completion"], "ref_logp": lc},
                "kl": {**batch["kl"], "ref_logp": lk}}

    def fixed_z0(p):
      losses, _ = kto.kto_objective(
          policy_fn(p, batch)[0] - lc, batch["completion"]["desirable"],
          jnp.float32(z0), **hp)
      return jnp.sum(losses * valid) / 4.0

    return (from_params(params, batch, None),
            from_batch(params, with_ref, None),
            jax.grad(lambda p: from_params(p, batch, None)[0])(params),
            jax.grad(fixed_z0)(params))

  (loss_p, m_p), (loss_b, m_b), g_loss, g_fixed = run(
      tiny[policy].params, tiny[ref].params, unpaired_batch)
  np.testing.assert_allclose(loss_p, want, rtol=1e-5)
  np.testing.assert_allclose(loss_b, loss_p, rtol=1e-6)
  des = np.array([1, 0, 1, 0]) > 0
  for m in (m_p, m_b):
    assert float(m["weight"]) == 4.0
    np.testing.assert_allclose(m["kl"], z0, rtol=1e-5)
    np.testing.assert_allclose(m["desirable_reward"], beta * r[des].mean(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m["undesirable_reward"],
                               beta * r[~des].mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m["desirable_fraction"], 0.5)
  for a, b in zip(jax.tree.leaves(g_loss), jax.tree.leaves(g_fixed)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_loss))
  with pytest.raises(KeyError, match="ref_logp"):
    from_batch(tiny[policy].params, unpaired_batch, None)


def test_kto_option_errors(tiny_lm):
  with pytest.raises(ValueError, match="beta"):
    kto.make_kto_loss_fn(tiny_lm.graphdef, beta=0.0)
  with pytest.raises(ValueError, match="undesirable_weight"):
    kto.make_kto_loss_fn(tiny_lm.graphdef, undesirable_weight=-1.0)
  with pytest.raises(KeyError, match="not a preference loss"):
    registry.get_loss("kto", kind="preference", option="dpo.loss")
