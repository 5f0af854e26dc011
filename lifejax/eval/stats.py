"""Small exact tests and intervals for the stage evaluations and the report.

Pure NumPy / math (no SciPy at run time); tests/eval/test_stats.py checks
each against a brute-force enumeration or SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def binom_test_p(k: int, n: int, p0: float = 0.5) -> float:
  """Exact two-sided binomial test: the probability, under Binomial(n, p0),
  of an outcome no more likely than k (the minlike rule SciPy's binomtest
  uses). 1.0 for n = 0."""
  if n == 0:
    return 1.0
  if not 0 <= k <= n:
    raise ValueError(f"binom_test_p: k={k} outside [0, {n}]")
  pmf = [math.comb(n, i) * p0 ** i * (1 - p0) ** (n - i)
         for i in range(n + 1)]
  # A relative tolerance so that outcomes exactly as likely as k count, as
  # in SciPy, despite float round-off.
  cut = pmf[k] * (1 + 1e-7)
  return float(min(1.0, sum(q for q in pmf if q <= cut)))


def sign_test_p(wins: int, losses: int) -> float:
  """Exact two-sided sign test of wins against losses (ties dropped): the
  chance of a split at least this uneven if neither side were better."""
  m, k = wins + losses, min(wins, losses)
  if not m:
    return 1.0
  return float(min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1))
                   / 2 ** m))


def wilson_ci(k: int, n: int, z: float = 1.959963984540054
              ) -> tuple[float, float]:
  """The Wilson score interval (95% by default) of a proportion k / n;
  (nan, nan) for n = 0."""
  if n == 0:
    return math.nan, math.nan
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values_NxK: np.ndarray, n_boot: int = 2000,
                 alpha: float = 0.05, seed: int = 0) -> np.ndarray:
  """Percentile bootstrap (1 - alpha) CIs of the means of each column of
  `values_NxK` (N paired prompts, K statistics), resampling prompts with
  replacement (the same resample for every column); returns (K, 2) [lo, hi].
  Seeded, so a report is reproducible."""
  v = np.asarray(values_NxK, np.float64)
  n = v.shape[0]
  idx_BxN = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
  means_BxK = v[idx_BxN].mean(axis=1)
  return np.quantile(means_BxK, [alpha / 2, 1 - alpha / 2], axis=0).T


def paired_binary(after: Sequence[bool], before: Sequence[bool]
                  ) -> dict[str, float]:
  """A paired change of a yes/no outcome (the same prompts before and
  after): the rates, their difference with a 95% bootstrap CI over prompts,
  and the exact McNemar test (a sign test on the discordant prompts)."""
  a = np.asarray(after, bool)
  b = np.asarray(before, bool)
  if a.shape != b.shape or a.ndim != 1 or not a.size:
    raise ValueError(f"paired_binary needs two equal-length non-empty lists,"
                     f" got {a.shape} and {b.shape}")
  gained, lost = int(np.sum(a & ~b)), int(np.sum(~a & b))
  d = a.astype(np.float64) - b.astype(np.float64)
  (lo, hi), = bootstrap_ci(d[:, None])
  return {"n": float(a.size), "after": float(a.mean()),
          "before": float(b.mean()), "diff": float(d.mean()),
          "ci_lo": float(lo), "ci_hi": float(hi),
          "gained": float(gained), "lost": float(lost),
          "p": sign_test_p(gained, lost)}


def paired_ratio(after: Sequence[float], before: Sequence[float]
                 ) -> dict[str, float]:
  """The ratio of two paired means (e.g. flaws per answer after / before
  on the same prompts) with a 95% bootstrap CI over prompts, and the sign
  test of the prompts where `after` is lower against those where it is
  higher."""
  a = np.asarray(after, np.float64)
  b = np.asarray(before, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not a.size:
    raise ValueError(f"paired_ratio needs two equal-length non-empty lists, "
                     f"got {a.shape} and {b.shape}")
  n = a.size
  idx_BxN = np.random.default_rng(0).integers(0, n, size=(2000, n))
  num, den = a[idx_BxN].mean(axis=1), b[idx_BxN].mean(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    boot = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
  boot = boot[np.isfinite(boot)]
  lo, hi = ((float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
            if boot.size else (math.nan, math.nan))
  lower, higher = int(np.sum(a < b)), int(np.sum(a > b))
  return {"n": float(n), "after": float(a.mean()), "before": float(b.mean()),
          "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else math.nan,
          "ci_lo": lo, "ci_hi": hi, "lower": float(lower),
          "higher": float(higher), "p": sign_test_p(lower, higher)}


def paired_perplexity_ratio(after: Sequence[tuple[float, float]],
                            before: Sequence[tuple[float, float]]
                            ) -> dict[str, float]:
  """Perplexity after / before on the same held-out units (packed rows, or
  batches): each unit's (summed loss, token weight) under two models. The
  ratio is exp(mean loss after - mean loss before), token-weighted; its 95%
  CI resamples units (paired); p is the sign test of the units whose mean
  loss rose against those where it fell."""
  a = np.asarray(after, np.float64).reshape(-1, 2)
  b = np.asarray(before, np.float64).reshape(-1, 2)
  if a.shape != b.shape or not a.shape[0]:
    raise ValueError(f"paired_perplexity_ratio needs the same non-empty "
                     f"units, got {a.shape[0]} and {b.shape[0]}")
  if not np.allclose(a[:, 1], b[:, 1]):
    raise ValueError("paired_perplexity_ratio: the units' token weights "
                     "differ (not the same rows or batches)")
  w = np.maximum(a[:, 1], 1e-12)
  ratio = lambda la, lb, ww: np.exp((la.sum(-1) - lb.sum(-1))  # noqa: E731
                                    / ww.sum(-1))
  n = a.shape[0]
  idx_BxN = np.random.default_rng(0).integers(0, n, size=(2000, n))
  boot = ratio(a[idx_BxN, 0], b[idx_BxN, 0], w[idx_BxN])
  keep = b[:, 1] > 0
  up = int(np.sum(a[keep, 0] > b[keep, 0]))
  down = int(np.sum(a[keep, 0] < b[keep, 0]))
  return {"n": float(n),
          "after": float(math.exp(a[:, 0].sum() / w.sum())),
          "before": float(math.exp(b[:, 0].sum() / w.sum())),
          "ratio": float(ratio(a[:, 0], b[:, 0], w)),
          "ci_lo": float(np.quantile(boot, 0.025)),
          "ci_hi": float(np.quantile(boot, 0.975)),
          "rose": float(up), "fell": float(down),
          "p": sign_test_p(up, down)}
