"""lifejax.eval.stats against SciPy and brute-force enumeration."""

import itertools
import math

import numpy as np
import pytest

from lifejax.eval import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("k,n,p0", [(0, 0, 0.5), (3, 10, 0.5), (0, 17, 0.5),
                                    (89, 100, 0.5), (9, 17, 0.5),
                                    (2, 30, 0.1), (14, 20, 0.3)])
def test_binom_test_matches_scipy(k, n, p0):
  want = scipy_stats.binomtest(k, n, p0).pvalue if n else 1.0
  assert stats.binom_test_p(k, n, p0) == pytest.approx(want, rel=1e-9)


def test_binom_test_by_enumeration():
  # Every outcome of 8 fair coins, counted: P(an outcome no likelier than k).
  n = 8
  outcomes = [sum(o) for o in itertools.product((0, 1), repeat=n)]
  for k in range(n + 1):
    like = outcomes.count(k)
    want = sum(1 for o in outcomes if outcomes.count(o) <= like) / 2 ** n
    assert stats.binom_test_p(k, n) == pytest.approx(want, rel=1e-12)
  with pytest.raises(ValueError, match="outside"):
    stats.binom_test_p(9, 8)


@pytest.mark.parametrize("wins,losses", [(0, 0), (7, 3), (30, 12), (5, 5),
                                         (0, 9)])
def test_sign_test_is_the_fair_binomial_test(wins, losses):
  want = (scipy_stats.binomtest(wins, wins + losses).pvalue
          if wins + losses else 1.0)
  assert stats.sign_test_p(wins, losses) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("k,n", [(0, 20), (20, 20), (7, 31), (89, 100)])
def test_wilson_matches_scipy(k, n):
  ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
  lo, hi = stats.wilson_ci(k, n)
  assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
  assert all(math.isnan(v) for v in stats.wilson_ci(0, 0))


def test_paired_binary_counts_and_mcnemar():
  before = [0, 0, 0, 1, 1, 0, 0, 1, 0, 0]
  after = [1, 1, 0, 1, 0, 1, 1, 1, 1, 0]
  s = stats.paired_binary(after, before)
  assert (s["gained"], s["lost"]) == (5, 1)
  assert s["diff"] == pytest.approx(0.4)
  assert (s["before"], s["after"]) == (0.3, 0.7)
  assert s["p"] == pytest.approx(scipy_stats.binomtest(5, 6).pvalue)
  assert s["ci_lo"] <= s["diff"] <= s["ci_hi"]
  with pytest.raises(ValueError, match="equal-length"):
    stats.paired_binary([1], [1, 0])


def test_paired_ratio_is_a_ratio_of_means_with_a_bootstrap_ci():
  rng = np.random.default_rng(1)
  before = rng.integers(0, 3, 200).astype(float)
  after = np.where(rng.random(200) < 0.5, 0.0, before)  # about half removed
  r = stats.paired_ratio(after, before)
  assert r["ratio"] == pytest.approx(after.mean() / before.mean())
  assert r["ci_lo"] < r["ratio"] < r["ci_hi"] < 1.0
  assert (r["lower"], r["higher"]) == (np.sum(after < before), 0)
  assert r["p"] == pytest.approx(
      scipy_stats.binomtest(int(np.sum(after < before)),
                            int(np.sum(after < before))).pvalue)
  same = stats.paired_ratio(before, before)
  assert same["ratio"] == 1.0 and same["p"] == 1.0
  assert same["ci_lo"] == same["ci_hi"] == 1.0


def test_paired_perplexity_ratio_closed_form():
  w = np.array([100.0, 80.0, 120.0, 50.0])
  before = np.stack([2.0 * w, w], 1)
  after = np.stack([2.3 * w, w], 1)  # every token's loss +0.3 nats
  r = stats.paired_perplexity_ratio(after, before)
  assert r["ratio"] == pytest.approx(math.exp(0.3))
  assert r["ci_lo"] == pytest.approx(math.exp(0.3))
  assert r["ci_hi"] == pytest.approx(math.exp(0.3))
  assert (r["before"], r["after"]) == pytest.approx((math.exp(2.0),
                                                     math.exp(2.3)))
  assert (r["rose"], r["fell"]) == (4, 0)
  assert r["p"] == pytest.approx(scipy_stats.binomtest(4, 4).pvalue)
  mixed = stats.paired_perplexity_ratio(
      np.stack([[1.5 * 100, 2.5 * 80, 2.0 * 120, 2.0 * 50], w], 1), before)
  want = math.exp((1.5 * 100 + 2.5 * 80 + 2 * 170 - 2 * w.sum()) / w.sum())
  assert mixed["ratio"] == pytest.approx(want)
  assert mixed["ci_lo"] < mixed["ratio"] < mixed["ci_hi"]
  with pytest.raises(ValueError, match="token weights differ"):
    stats.paired_perplexity_ratio(after, np.stack([2.0 * w, w + 1], 1))
