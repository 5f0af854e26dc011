"""DPO / cDPO / IPO / SimPO against the papers' closed forms (numpy, hand
numbers), gradient directions, and the loss functions on a tiny LM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.losses import dpo

# Hand-made sequence log-probs of 4 pairs (policy and reference).
CHOSEN = np.array([-5.0, -10.0, -3.0, -20.0], np.float32)
REJECTED = np.array([-7.0, -9.0, -3.5, -4.0], np.float32)
REF_CHOSEN = np.array([-6.0, -9.5, -4.0, -20.0], np.float32)
REF_REJECTED = np.array([-6.5, -9.0, -3.0, -4.0], np.float32)
CHOSEN_LEN = np.array([5.0, 10.0, 2.0, 8.0], np.float32)
REJECTED_LEN = np.array([7.0, 6.0, 3.0, 2.0], np.float32)
# h = log-ratio gap per pair: [1.5, -0.5, 1.5, 0.0].
H = (CHOSEN - REF_CHOSEN) - (REJECTED - REF_REJECTED)


def logps(chosen=CHOSEN, rejected=REJECTED) -> dpo.PreferenceLogps:
  return dpo.PreferenceLogps(jnp.asarray(chosen), jnp.asarray(rejected),
                             CHOSEN_LEN, REJECTED_LEN, REF_CHOSEN,
                             REF_REJECTED)


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


OBJECTIVES = {
    "dpo": (lambda lp: dpo.dpo_objective(lp, beta=0.1),
            -np_log_sigmoid(0.1 * H)),
    "cdpo": (lambda lp: dpo.cdpo_objective(lp, beta=0.1,
                                           label_smoothing=0.2),
             -0.8 * np_log_sigmoid(0.1 * H) - 0.2 * np_log_sigmoid(-0.1 * H)),
    "ipo": (lambda lp: dpo.ipo_objective(lp, tau=0.1),
            (H.astype(np.float64) - 5.0) ** 2),
    "simpo": (lambda lp: dpo.simpo_objective(lp, beta=2.0, gamma=1.0),
              -np_log_sigmoid(2.0 * CHOSEN / CHOSEN_LEN
                              - 2.0 * REJECTED / REJECTED_LEN - 1.0)),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_closed_form(name):
  objective, want = OBJECTIVES[name]
  losses, r_c, r_r = objective(logps())
  np.testing.assert_allclose(losses, want, rtol=1e-5)
  assert losses.dtype == jnp.float32 and losses.shape == (4,)


def test_closed_form_spot_values():
  # h = 0: DPO loses log 2 whatever beta; IPO pays (1 / (2 tau))^2.
  losses, _, _ = dpo.dpo_objective(logps(), beta=7.0)
  np.testing.assert_allclose(losses[3], np.log(2.0), rtol=1e-6)
  losses, _, _ = dpo.ipo_objective(logps(), tau=0.25)
  np.testing.assert_allclose(losses[3], 4.0, rtol=1e-6)
  # cDPO with eps = 0 is DPO.
  np.testing.assert_allclose(
      dpo.cdpo_objective(logps(), beta=0.3, label_smoothing=0.0)[0],
      dpo.dpo_objective(logps(), beta=0.3)[0], rtol=1e-6)


def test_implicit_rewards():
  _, r_c, r_r = dpo.dpo_objective(logps(), beta=0.5)
  np.testing.assert_allclose(r_c, 0.5 * (CHOSEN - REF_CHOSEN), rtol=1e-6)
  np.testing.assert_allclose(r_r, 0.5 * (REJECTED - REF_REJECTED), rtol=1e-6)
  _, r_c, r_r = dpo.simpo_objective(logps(), beta=2.0, gamma=0.0)
  np.testing.assert_allclose(r_c, 2.0 * CHOSEN / CHOSEN_LEN, rtol=1e-6)
  np.testing.assert_allclose(r_r, 2.0 * REJECTED / REJECTED_LEN, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_gradient_raises_chosen_over_rejected(name):
  """d loss / d log pi(chosen) < 0 < d loss / d log pi(rejected).

  For IPO only while h is below its target 1 / (2 tau) = 5, true here."""
  objective, _ = OBJECTIVES[name]
  g_c, g_r = jax.grad(
      lambda c, r: jnp.sum(objective(logps(c, r))[0]), argnums=(0, 1))(
          CHOSEN, REJECTED)
  assert np.all(np.asarray(g_c) < 0), g_c
  assert np.all(np.asarray(g_r) > 0), g_r
  # DPO-family gradients are equal and opposite in the two log-probs.
  if name != "simpo":
    np.testing.assert_allclose(g_c, -g_r, rtol=1e-6)


def test_reference_needed():
  lp = dpo.PreferenceLogps(CHOSEN, REJECTED, CHOSEN_LEN, REJECTED_LEN)
  with pytest.raises(ValueError, match="reference"):
    dpo.dpo_objective(lp, beta=0.1)
  dpo.simpo_objective(lp, beta=2.0, gamma=1.0)  # reference-free


# -- the loss functions on a tiny LM ------------------------------------------


@pytest.fixture(scope="module")
def padded_pairs(pair_batch):
  """The shared pairs with pair 3 turned into a padding pair."""
  batch = {h: {k: v.copy() for k, v in pair_batch[h].items()}
           for h in ("chosen", "rejected")}
  for h in ("chosen", "rejected"):
    batch[h]["loss_mask"][3] = 0.0
  return batch


@pytest.fixture(scope="module")
def np_logps(padded_pairs, tiny_lm, tiny_lm_other, helpers):
  """Brute-force float64 sequence log-probs of policy and reference."""
  out = {}
  for who, tiny in (("policy", tiny_lm), ("ref", tiny_lm_other)):
    for half in ("chosen", "rejected"):
      rows = padded_pairs[half]
      out[who, half] = helpers.np_sequence_logps(
          helpers.lm_logits(tiny, rows), rows["targets"], rows["loss_mask"])
  return out


def test_dpo_loss_fn_reference_from_batch_or_params(
    padded_pairs, tiny_lm, tiny_lm_other, np_logps):
  beta = 0.5
  ref_fn = dpo.make_reference_fn(tiny_lm_other.graphdef)
  from_batch = dpo.make_preference_loss_fn("dpo", tiny_lm.graphdef, beta=beta)
  from_params = dpo.make_preference_loss_fn(
      "dpo", tiny_lm.graphdef, beta=beta, ref_params=tiny_lm_other.params)

  @jax.jit  # one compilation for the three functions under test
  def run(params, ref_params, batch):
    ref_c, ref_r = ref_fn(ref_params, batch)
    with_ref = {h: dict(batch[h]) for h in ("chosen", "rejected")}
    with_ref["chosen"]["ref_logp"] = ref_c
    with_ref["rejected"]["ref_logp"] = ref_r
    return (ref_c, ref_r), from_batch(params, with_ref, None), from_params(
        params, batch, None)

  (ref_c, ref_r), (loss_b, m_b), (loss_p, m_p) = run(
      tiny_lm.params, tiny_lm_other.params, padded_pairs)
  np.testing.assert_allclose(ref_c, np_logps["ref", "chosen"][0], rtol=1e-5)
  np.testing.assert_allclose(ref_r, np_logps["ref", "rejected"][0], rtol=1e-5)

  (pc, _), (pr, _) = np_logps["policy", "chosen"], np_logps["policy",
                                                             "rejected"]
  (rc, _), (rr, _) = np_logps["ref", "chosen"], np_logps["ref", "rejected"]
  h = ((pc - rc) - (pr - rr))[:3]  # pair 3 is padding
  np.testing.assert_allclose(loss_b, np.mean(-np_log_sigmoid(beta * h)),
                             rtol=1e-5)
  np.testing.assert_allclose(loss_p, loss_b, rtol=1e-6)
  for m in (m_b, m_p):
    assert float(m["weight"]) == 3.0
    np.testing.assert_allclose(m["chosen_logp"], pc[:3].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["rejected_logp"], pr[:3].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["chosen_reward"],
                               beta * (pc - rc)[:3].mean(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(m["reward_margin"], beta * h.mean(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m["reward_accuracy"], np.mean(h > 0))

  with pytest.raises(KeyError, match="ref_logp"):
    from_batch(tiny_lm.params, padded_pairs, None)


def test_one_step_raises_chosen_over_rejected(padded_pairs, tiny_lm,
                                              tiny_lm_other):
  """A small gradient step on the DPO loss lowers it, widens the implicit
  reward margin and the chosen-minus-rejected log-prob gap."""
  loss_fn = dpo.make_preference_loss_fn(
      "dpo", tiny_lm.graphdef, beta=0.5, ref_params=tiny_lm_other.params)

  @jax.jit
  def step(params):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, padded_pairs, None), has_aux=True)(params)
    new = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return loss, metrics, loss_fn(new, padded_pairs, None)

  loss0, m0, (loss1, m1) = step(tiny_lm.params)
  assert float(loss1) < float(loss0)
  assert float(m1["reward_margin"]) > float(m0["reward_margin"])
  gap0 = float(m0["chosen_logp"]) - float(m0["rejected_logp"])
  gap1 = float(m1["chosen_logp"]) - float(m1["rejected_logp"])
  assert gap1 > gap0


def test_simpo_loss_fn_matches_numpy(padded_pairs, tiny_lm, np_logps):
  loss_fn = dpo.make_preference_loss_fn("simpo", tiny_lm.graphdef, beta=2.0,
                                        gamma=0.5)
  loss, metrics = jax.jit(loss_fn)(tiny_lm.params, padded_pairs, None)
  pc, nc = np_logps["policy", "chosen"]
  pr, nr = np_logps["policy", "rejected"]
  z = 2.0 * pc[:3] / nc[:3] - 2.0 * pr[:3] / nr[:3] - 0.5
  np.testing.assert_allclose(loss, np.mean(-np_log_sigmoid(z)), rtol=1e-5)
  assert float(metrics["weight"]) == 3.0


@pytest.mark.parametrize("name,hparams", [("dpo", {"beta": 0.5}),
                                          ("simpo", {"beta": 2.0,
                                                     "gamma": 0.5})])
def test_nll_weight_adds_the_chosen_per_token_nll(padded_pairs, tiny_lm,
                                                  tiny_lm_other, np_logps,
                                                  name, hparams):
  """RPO: loss(alpha) = loss(0) + alpha * mean over pairs of
  -log pi(chosen) / |chosen|, checked against float64 numpy."""
  ref = {"ref_params": tiny_lm_other.params} if name == "dpo" else {}
  plain = dpo.make_preference_loss_fn(name, tiny_lm.graphdef, **hparams,
                                      **ref)
  rpo = dpo.make_preference_loss_fn(name, tiny_lm.graphdef, **hparams,
                                    nll_weight=0.7, **ref)
  (l0, m0), (l1, m1) = jax.jit(
      lambda p: (plain(p, padded_pairs, None), rpo(p, padded_pairs, None))
  )(tiny_lm.params)
  pc, nc = np_logps["policy", "chosen"]
  nll = np.mean(-pc[:3] / nc[:3])  # pair 3 is padding
  np.testing.assert_allclose(m0["chosen_nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(l1, float(l0) + 0.7 * nll, rtol=1e-5)
  with pytest.raises(ValueError, match="nll_weight"):
    dpo.make_preference_loss_fn(name, tiny_lm.graphdef, **hparams,
                                nll_weight=-1.0, **ref)
