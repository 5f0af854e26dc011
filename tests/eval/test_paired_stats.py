"""Paired win/tie/loss statistics of a policy against its reference."""

import numpy as np
import pytest

from lifejax.eval import policy_eval

scipy_stats = pytest.importorskip("scipy.stats")


def test_counts_rates_and_errors():
  a = [1.0, 0.5, 0.2, 0.7, 0.7, 0.9]
  b = [0.5, 0.5, 0.4, 0.7 + 1e-12, 0.1, 0.3]
  s = policy_eval.paired_stats(a, b)
  assert (s["wins"], s["losses"], s["ties"]) == (3, 1, 2)
  outcome = np.array([1, 0.5, 0, 0.5, 1, 1])
  assert s["win_rate_vs_ref"] == pytest.approx(outcome.mean())
  assert s["win_rate_se"] == pytest.approx(outcome.std(ddof=1) / 6 ** 0.5)
  d = np.subtract(a, b)
  assert s["judge_gain_vs_ref"] == pytest.approx(d.mean())
  assert s["judge_gain_se"] == pytest.approx(d.std(ddof=1) / 6 ** 0.5)


@pytest.mark.parametrize("wins,losses,ties", [(0, 0, 5), (7, 3, 2),
                                              (30, 12, 40), (5, 5, 0),
                                              (0, 9, 1)])
def test_sign_test_matches_scipy(wins, losses, ties):
  a = [1.0] * wins + [0.0] * losses + [0.5] * ties
  b = [0.0] * wins + [1.0] * losses + [0.5] * ties
  s = policy_eval.paired_stats(a, b)
  want = (scipy_stats.binomtest(wins, wins + losses).pvalue
          if wins + losses else 1.0)
  assert s["sign_test_p"] == pytest.approx(want, rel=1e-9)


def test_identical_scores_are_all_ties():
  s = policy_eval.paired_stats([0.3, 0.6], [0.3, 0.6])
  assert s["win_rate_vs_ref"] == 0.5 and s["ties"] == 2
  assert s["sign_test_p"] == 1.0 and s["win_rate_se"] == 0.0


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="equal-length"):
    policy_eval.paired_stats([0.1, 0.2], [0.1])
  with pytest.raises(ValueError, match="non-empty"):
    policy_eval.paired_stats([], [])


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
  rng = np.random.default_rng(3)
  a, b = rng.uniform(size=120), rng.uniform(size=120) * 0.8
  s = policy_eval.paired_stats(a, b)
  d = a - b
  outcome = np.where(d > 1e-9, 1.0, np.where(d < -1e-9, 0.0, 0.5))
  for key, x in (("judge_gain", d), ("win_rate", outcome)):
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=20000,
                                method="percentile", random_state=0)
    lo, hi = ref.confidence_interval
    width = hi - lo
    # Two Monte-Carlo estimates (2,000 vs 20,000 resamples) of one interval.
    assert s[f"{key}_ci_lo"] == pytest.approx(lo, abs=0.08 * width)
    assert s[f"{key}_ci_hi"] == pytest.approx(hi, abs=0.08 * width)
    assert s[f"{key}_ci_lo"] < x.mean() < s[f"{key}_ci_hi"]


def test_bootstrap_ci_is_seeded_and_collapses_without_spread():
  ci = policy_eval.bootstrap_ci(np.array([[0.3, 1.0]] * 8))
  np.testing.assert_allclose(ci, [[0.3, 0.3], [1.0, 1.0]])
  x = np.random.default_rng(0).normal(size=(50, 2))
  np.testing.assert_array_equal(policy_eval.bootstrap_ci(x),
                                policy_eval.bootstrap_ci(x))
  # Wider at a higher confidence level.
  lo90, hi90 = policy_eval.bootstrap_ci(x, alpha=0.1)[0]
  lo99, hi99 = policy_eval.bootstrap_ci(x, alpha=0.01)[0]
  assert lo99 < lo90 < hi90 < hi99
