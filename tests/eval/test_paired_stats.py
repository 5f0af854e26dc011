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
