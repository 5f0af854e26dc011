"""Scaling-law fits and compute-optimal sizing (lifejax/eval/scaling.py)."""

import math

import numpy as np
import pytest
from scipy import optimize

from lifejax.eval import scaling

TRUE = scaling.Law(E=1.8, A=300.0, B=500.0, alpha=0.35, beta=0.30)
# A 6 x 6 grid of runs over three decades of N and D.
N = np.repeat(np.logspace(6, 9, 6), 6)
D = np.tile(np.logspace(8, 11, 6), 6)


def _closed_form(law, c):
  """N_opt, D_opt written out independently of scaling.allocation."""
  g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
  a = law.beta / (law.alpha + law.beta)
  b = law.alpha / (law.alpha + law.beta)
  return g * (c / 6) ** a, (c / 6) ** b / g


def test_fit_recovers_exact_law():
  fit = scaling.fit_law(N, D, TRUE.loss(N, D))
  for k, v in TRUE.to_dict().items():
    assert getattr(fit.law, k) == pytest.approx(v, rel=1e-5), k
  assert np.abs(fit.residuals).max() < 1e-8
  assert fit.starts == 64


def test_fit_recovers_law_from_noisy_runs():
  rng = np.random.default_rng(0)
  loss = TRUE.loss(N, D) * np.exp(rng.normal(0.0, 0.003, N.size))
  fit = scaling.fit_law(N, D, loss)
  assert fit.law.alpha == pytest.approx(TRUE.alpha, abs=0.02)
  assert fit.law.beta == pytest.approx(TRUE.beta, abs=0.02)
  assert fit.law.E == pytest.approx(TRUE.E, rel=0.03)
  _, a_fit, _ = scaling.allocation(fit.law)
  _, a_true, _ = scaling.allocation(TRUE)
  assert a_fit == pytest.approx(a_true, abs=0.02)
  assert scaling.tokens_per_param(fit.law, 1e21) == pytest.approx(
      scaling.tokens_per_param(TRUE, 1e21), rel=0.25)
  # The residuals are the noise: about 0.3% RMS.
  assert 0.001 < np.sqrt(np.mean(fit.residuals ** 2)) < 0.006


def test_fit_uses_the_grid_and_refuses_bad_input():
  assert scaling.grid_starts().shape == (4500, 5)
  # Screening keeps the lowest-objective starts; the whole grid is None.
  starts = scaling.grid_starts()
  f0 = scaling.huber_objective(starts, np.log(N), np.log(D),
                               np.log(TRUE.loss(N, D)), scaling.HUBER_DELTA)
  assert f0.shape == (4500,)
  with pytest.raises(ValueError, match="5 parameters"):
    scaling.fit_law(N[:4], D[:4], TRUE.loss(N[:4], D[:4]))
  with pytest.raises(ValueError, match="one value per run"):
    scaling.fit_law(N, D[:-1], TRUE.loss(N, D))
  with pytest.raises(ValueError, match="every loss"):
    scaling.fit_law(N, D, -TRUE.loss(N, D))
  with pytest.raises(ValueError, match="top_k"):
    scaling.fit_law(N, D, TRUE.loss(N, D), top_k=0)


def test_objective_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  args = (np.log(N), np.log(D),
          np.log(TRUE.loss(N, D) * np.exp(rng.normal(0, 0.01, N.size))),
          scaling.HUBER_DELTA)
  x = np.array([5.5, 6.0, 0.6, 0.33, 0.31])
  _, grad = scaling._objective(x, *args)
  num = optimize.approx_fprime(x, lambda v: scaling._objective(v, *args)[0],
                               1e-7)
  np.testing.assert_allclose(grad, num, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("law", [TRUE, scaling.CHINCHILLA])
@pytest.mark.parametrize("c", [1e15, 1e19, 5.76e23])
def test_closed_form_optimum_equals_brute_force_search(law, c):
  n_opt, d_opt = scaling.compute_optimal(law, c)
  assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-12)
  np.testing.assert_allclose((n_opt, d_opt), _closed_form(law, c),
                             rtol=1e-12)
  # Brute force: L(N, C / 6N) on a fine log grid of N, then refined.
  ns = np.logspace(0, 16, 160001)
  best = ns[np.argmin(law.loss(ns, c / (6 * ns)))]
  res = optimize.minimize_scalar(
      lambda x: float(law.loss(np.exp(x), c / (6 * np.exp(x)))),
      bracket=(math.log(best) - 0.01, math.log(best), math.log(best) + 0.01),
      tol=1e-12)
  assert best == pytest.approx(n_opt, rel=3e-4)
  assert math.exp(res.x) == pytest.approx(n_opt, rel=1e-4)


def test_optimal_tokens_is_the_inverse():
  for c in (1e18, 1e22):
    n_opt, d_opt = scaling.compute_optimal(TRUE, c)
    assert scaling.optimal_tokens(TRUE, n_opt) == pytest.approx(d_opt,
                                                               rel=1e-10)
    assert scaling.tokens_per_param(TRUE, c) == pytest.approx(d_opt / n_opt)


def test_chinchilla_published_law_gives_tens_of_billions():
  c = 5.76e23  # Gopher's (and Chinchilla's) training compute
  n_opt, d_opt = scaling.compute_optimal(scaling.CHINCHILLA, c)
  want_n, want_d = _closed_form(scaling.CHINCHILLA, c)
  assert n_opt == pytest.approx(want_n, rel=1e-12)
  assert d_opt == pytest.approx(want_d, rel=1e-12)
  assert 1e10 < n_opt < 1e11      # tens of billions of parameters
  assert 1e12 < d_opt < 1e13      # trillions of tokens
  g, a, b = scaling.allocation(scaling.CHINCHILLA)
  assert a == pytest.approx(0.46, abs=0.01)   # the paper's Table 2
  assert b == pytest.approx(0.54, abs=0.01)
  assert a + b == pytest.approx(1.0)
  assert g > 0


def test_allocation_needs_positive_exponents():
  with pytest.raises(ValueError, match="law.alpha"):
    scaling.allocation(scaling.Law(E=1, A=1, B=1, alpha=0.0, beta=0.3))
  with pytest.raises(ValueError, match="law.beta"):
    scaling.compute_optimal(scaling.Law(E=1, A=1, B=1, alpha=0.3,
                                        beta=-0.1), 1e20)
  with pytest.raises(ValueError, match="flops"):
    scaling.compute_optimal(TRUE, -1.0)


def test_law_from_dict_names_the_bad_field():
  assert scaling.Law.from_dict(TRUE.to_dict()) == TRUE
  bad = TRUE.to_dict()
  del bad["beta"]
  with pytest.raises(ValueError, match=r"fit.json: law\.beta: missing"):
    scaling.Law.from_dict(bad, where="fit.json: law")
  with pytest.raises(ValueError, match=r"law\.A='x'"):
    scaling.Law.from_dict({**TRUE.to_dict(), "A": "x"})
  with pytest.raises(ValueError, match="expected an object"):
    scaling.Law.from_dict([1, 2])
  with pytest.raises(ValueError, match="Law.E"):
    scaling.Law(E=math.nan, A=1, B=1, alpha=1, beta=1)


def test_isoflop_minimum_of_exact_parabola_is_exact():
  n = np.array([1e4, 3e4, 1e5, 3e5, 1e6])
  loss = 2.5 + 0.07 * (np.log(n) - math.log(7.5e4)) ** 2
  m = scaling.isoflop_minimum(n, loss)
  assert m.convex and m.inside
  assert m.n_opt == pytest.approx(7.5e4, rel=1e-9)
  assert m.loss_opt == pytest.approx(2.5, abs=1e-12)
  # A vertex beyond the sampled sizes is reported as outside.
  far = 2.5 + 0.07 * (np.log(n) - math.log(1e8)) ** 2
  assert not scaling.isoflop_minimum(n, far).inside
  # An upside-down parabola has no minimum.
  top = scaling.isoflop_minimum(n, 3.0 - (np.log(n) - 11.0) ** 2)
  assert not top.convex and math.isnan(top.n_opt)
  with pytest.raises(ValueError, match="3 distinct N"):
    scaling.isoflop_minimum([1e4, 1e4, 1e5], [2.0, 2.1, 2.2])


def test_isoflop_allocation_recovers_the_laws_exponent():
  """Approach 2 on runs generated from a known law: per budget, sizes
  around the optimum, the loss read off the law."""
  flops, ns, losses = [], [], []
  for c in np.logspace(18, 22, 5):
    n_opt, _ = scaling.compute_optimal(TRUE, c)
    for f in np.geomspace(1 / 4, 4, 7):
      flops.append(c)
      ns.append(n_opt * f)
      losses.append(float(TRUE.loss(n_opt * f, c / (6 * n_opt * f))))
  iso = scaling.isoflop_allocation(flops, ns, losses)
  _, a_true, _ = scaling.allocation(TRUE)
  assert iso.a == pytest.approx(a_true, abs=0.01)
  assert all(m.convex and m.inside for m in iso.minima)
  for c, m in zip(iso.flops, iso.minima):
    assert m.n_opt == pytest.approx(scaling.compute_optimal(TRUE, c)[0],
                                    rel=0.1)
  c = 1e20
  assert iso.tokens_per_param(c) == pytest.approx(
      c / (6 * iso.n_opt(c) ** 2))
  with pytest.raises(ValueError, match="power law needs 2"):
    scaling.isoflop_allocation(flops[:7], ns[:7], losses[:7])


def test_bootstrap_resamples_runs_within_strata():
  seen = []

  def stat(idx):
    seen.append(idx.copy())
    return [len(idx)]
  strata = [0] * 3 + [1] * 5
  b = scaling.bootstrap_runs(stat, 8, num_samples=20, seed=3, strata=strata)
  assert b.samples.shape == (20, 1) and b.failed == 0
  for idx in seen:
    assert sorted(idx[:3]) == sorted(i for i in idx[:3] if i < 3)
    assert all(3 <= i < 8 for i in idx[3:])
  # A resample whose statistic raises ValueError is counted, not fatal.
  def flaky_stat(idx):
    if idx[0] == 0:
      raise ValueError("not identifiable")
    return [1.0]
  flaky = scaling.bootstrap_runs(flaky_stat, 8, num_samples=50, seed=0)
  assert flaky.failed > 0 and flaky.samples.shape[0] == 50 - flaky.failed
  with pytest.raises(ValueError, match="all 5 resamples failed"):
    scaling.bootstrap_runs(lambda idx: [math.nan], 8, num_samples=5)
  with pytest.raises(ValueError, match="level"):
    b.ci(1.5)


def test_bootstrap_ci_of_tokens_per_param_covers_the_truth():
  rng = np.random.default_rng(2)
  loss = TRUE.loss(N, D) * np.exp(rng.normal(0.0, 0.003, N.size))
  c = np.array([1e19, 1e21])
  fit = scaling.fit_law(N, D, loss)
  boot = scaling.bootstrap_law(
      N, D, loss, lambda law: scaling.tokens_per_param(law, c), fit=fit,
      num_samples=20, seed=0)
  lo, hi = boot.ci()
  truth = scaling.tokens_per_param(TRUE, c)
  point = scaling.tokens_per_param(fit.law, c)
  assert np.all(lo <= truth) and np.all(truth <= hi)
  assert np.all(lo <= point) and np.all(point <= hi)
  assert np.all(hi / lo < 3)  # 0.3% noise on 36 runs: a usable interval


def test_refit_starts_survive_a_vanishing_irreducible_loss():
  """Runs far above their floor fit best with E -> 0 (e -> -inf): E can
  underflow to 0 while the solution x stays finite; refits start from x."""
  law = scaling.Law(E=0.0, A=40.0, B=60.0, alpha=0.5, beta=0.4)
  loss = law.loss(N, D)
  fit = scaling.fit_law(N, D, loss)
  assert np.all(np.isfinite(fit.x))
  assert fit.law.E < 1e-3
  assert fit.law.alpha == pytest.approx(0.5, rel=1e-3)
  starts = scaling.refit_starts(fit)
  np.testing.assert_array_equal(starts[0], fit.x)
  refit = scaling.fit_law(N, D, loss, starts=starts, top_k=1)
  assert refit.law.beta == pytest.approx(0.4, rel=1e-3)
