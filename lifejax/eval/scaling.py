"""Scaling laws: fitting L(N, D) and compute-optimal sizing (Chinchilla).

The parametric law (Hoffmann et al., 2022, "Chinchilla"):

    L(N, D) = E + A / N^alpha + B / D^beta

N: parameters, D: training tokens, L: held-out loss in nats per token.

* `fit_law` is Chinchilla's approach 3 (their appendix D.2): minimize the
  Huber loss (delta = 1e-3) of log-space residuals,
  LSE(a - alpha log N, b - beta log D, e) - log L with A = e^a, B = e^b,
  E = e^e, by L-BFGS from a grid of initialisations, keeping the best.
* `compute_optimal`: with C = 6 N D, minimizing L at fixed C gives
  N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha
  + beta)), a = beta / (alpha + beta), b = alpha / (alpha + beta).
* `isoflop_minimum` / `isoflop_allocation`: approach 2. For each FLOP budget,
  a parabola of loss vs log N and its minimum; then N_opt = k C^a by least
  squares over the budgets' minima.
* `bootstrap_law`: resampling runs with replacement and refitting, for
  confidence intervals of any function of the fitted law (e.g. the
  compute-optimal tokens per parameter).

Pure numpy/scipy; nothing here knows about runs or gin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

HUBER_DELTA = 1e-3
# Hoffmann et al. (2022), appendix D.2: the initialisation grid of approach 3.
CHINCHILLA_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
_FIELDS = ("E", "A", "B", "alpha", "beta")


@dataclasses.dataclass(frozen=True)
class Law:
  """L(N, D) = E + A / N^alpha + B / D^beta."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def __post_init__(self):
    for name in _FIELDS:
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or isinstance(v, bool) or \
          not math.isfinite(v):
        raise ValueError(f"Law.{name}={v!r}: must be a finite number")

  def loss(self, n: Any, d: Any) -> np.ndarray:
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def to_dict(self) -> dict[str, float]:
    return {k: float(getattr(self, k)) for k in _FIELDS}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "law") -> Law:
    """A Law from {E, A, B, alpha, beta}; a missing or non-numeric field is
    a ValueError naming it (`where` prefixes the name, e.g. a file)."""
    if not isinstance(d, Mapping):
      raise ValueError(f"{where}: expected an object with fields "
                       f"{list(_FIELDS)}, got {type(d).__name__}")
    vals = {}
    for k in _FIELDS:
      if k not in d:
        raise ValueError(f"{where}.{k}: missing (a law needs "
                         f"{list(_FIELDS)})")
      v = d[k]
      if isinstance(v, bool) or not isinstance(v, (int, float)) or \
          not math.isfinite(v):
        raise ValueError(f"{where}.{k}={v!r}: must be a finite number")
      vals[k] = float(v)
    return cls(**vals)


# Hoffmann et al. (2022), approach 3 (eq. 10): N counts all parameters,
# D training tokens, L in nats per token on MassiveText.
CHINCHILLA = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


# -- approach 3: the parametric fit -------------------------------------------


def _as_runs(n: Any, d: Any, loss: Any) -> tuple[np.ndarray, ...]:
  n, d, loss = (np.asarray(x, np.float64).ravel() for x in (n, d, loss))
  if not n.size == d.size == loss.size:
    raise ValueError(f"fit: n, d and loss need one value per run, got "
                     f"{n.size}, {d.size}, {loss.size}")
  for name, x in (("n", n), ("d", d), ("loss", loss)):
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
      raise ValueError(f"fit: every {name} must be finite and > 0")
  return n, d, loss


def _objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
               log_l: np.ndarray, delta: float
               ) -> tuple[float, np.ndarray]:
  """Sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L) and its
  gradient in (a, b, e, alpha, beta), both divided by delta^2 so that
  L-BFGS's stopping rules (absolute below 1) see values of order one."""
  a, b, e, alpha, beta = x
  t = np.stack([a - alpha * log_n, b - beta * log_d,
                np.full_like(log_n, e)])
  m = t.max(axis=0)
  w = np.exp(t - m)
  s = w.sum(axis=0)
  lse = m + np.log(s)
  w /= s
  r = lse - log_l
  pw = np.clip(r, -delta, delta) * w
  grad = np.array([pw[0].sum(), pw[1].sum(), pw[2].sum(),
                   -(pw[0] * log_n).sum(), -(pw[1] * log_d).sum()])
  scale = 1.0 / (delta * delta)
  return float(_huber(r, delta).sum()) * scale, grad * scale


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
  ar = np.abs(r)
  return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def huber_objective(starts: np.ndarray, log_n: np.ndarray,
                    log_d: np.ndarray, log_l: np.ndarray, delta: float
                    ) -> np.ndarray:
  """The (unscaled) approach-3 objective at many points at once: one value
  per row (a, b, e, alpha, beta) of `starts`."""
  x = np.atleast_2d(starts)[:, :, None]
  t = np.stack(np.broadcast_arrays(x[:, 0] - x[:, 3] * log_n,
                                   x[:, 1] - x[:, 4] * log_d, x[:, 2]))
  return _huber(np.logaddexp.reduce(t, axis=0) - log_l, delta).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class Fit:
  """An approach-3 fit: the law, its objective (sum of Huber losses), the
  log-space residuals per run, how many starts were tried, and the
  solution in the optimizer's coordinates x = (a, b, e, alpha, beta)
  (E = e^e can underflow to 0 where x stays finite)."""
  law: Law
  objective: float
  residuals: np.ndarray
  starts: int
  converged: bool
  x: np.ndarray


def grid_starts(grid: Mapping[str, Sequence[float]] = CHINCHILLA_GRID
                ) -> np.ndarray:
  """The initialisations (a, b, e, alpha, beta) of a grid, one per row."""
  missing = [k for k in ("a", "b", "e", "alpha", "beta") if k not in grid]
  if missing:
    raise ValueError(f"grid: missing {missing} (needs a, b, e, alpha, beta)")
  return np.array(list(itertools.product(
      grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])),
      np.float64)


def _one_blas_thread() -> Any:
  """L-BFGS-B calls BLAS on 5-vectors; a multi-threaded OpenBLAS makes each
  call wait on its thread pool (10-20x slower on a busy CPU). One thread
  while fitting, where threadpoolctl is installed (else unchanged)."""
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(limits=1, user_api="blas")


def fit_law(n: Any, d: Any, loss: Any, *, delta: float = HUBER_DELTA,
            starts: np.ndarray | None = None, top_k: int | None = 64
            ) -> Fit:
  """Chinchilla's approach 3: L-BFGS from a grid of starts, best kept.

  n, d, loss: one value per run. starts: rows of (a, b, e, alpha, beta)
  (default: Chinchilla's 4,500-point grid, `grid_starts()`). top_k: run
  L-BFGS from top_k screened starts (all of them with None, as the paper
  did): for each (alpha, beta) of the grid its (a, b, e) with the lowest
  objective, then the lowest of the rest. Each L-BFGS run costs ~10-100 ms,
  so the whole grid takes minutes; the screened 64 found the whole grid's
  optimum on the synthetic laws tried and on experiments/scaling_laws.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  n, d, loss = _as_runs(n, d, loss)
  if n.size < 5:
    raise ValueError(f"fit: the law has 5 parameters; got {n.size} runs")
  if not delta > 0:
    raise ValueError(f"fit: delta={delta!r} must be > 0")
  if top_k is not None and top_k < 1:
    raise ValueError(f"fit: top_k={top_k!r} must be >= 1 (or None: all)")
  starts = grid_starts() if starts is None else np.atleast_2d(
      np.asarray(starts, np.float64))
  if starts.ndim != 2 or starts.shape[1] != 5 or not starts.shape[0]:
    raise ValueError("fit: starts must be rows of (a, b, e, alpha, beta)")
  args = (np.log(n), np.log(d), np.log(loss), delta)
  if top_k is not None and top_k < starts.shape[0]:
    with np.errstate(over="ignore", invalid="ignore"):
      f0 = huber_objective(starts, *args)
    order = np.argsort(np.where(np.isfinite(f0), f0, np.inf), kind="stable")
    # Every exponent pair of the grid keeps its best (a, b, e) (so each
    # basin of alpha, beta is tried), then the best of the rest.
    _, first = np.unique(starts[order, 3:], axis=0, return_index=True)
    keep = list(order[np.sort(first)][:top_k])
    kept = set(keep)
    keep += [i for i in order if i not in kept][:top_k - len(keep)]
    starts = starts[np.array(keep)]
  best = None
  with _one_blas_thread(), np.errstate(over="ignore", invalid="ignore"):
    for x0 in starts:
      res = optimize.minimize(_objective, x0, args=args, jac=True,
                              method="L-BFGS-B", options={"maxiter": 2000})
      if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
        continue
      if best is None or res.fun < best.fun:
        best = res
  if best is None:
    raise ValueError("fit: no start converged to a finite solution")
  a, b, e, alpha, beta = best.x
  law = Law(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
            alpha=float(alpha), beta=float(beta))
  resid = np.log(law.loss(n, d)) - np.log(loss)
  return Fit(law=law, objective=float(best.fun) * delta * delta,
             residuals=resid, starts=int(starts.shape[0]),
             converged=bool(best.success), x=np.array(best.x))


# -- compute-optimal allocation ----------------------------------------------


def allocation(law: Law) -> tuple[float, float, float]:
  """(G, a, b): N_opt = G (C/6)^a, D_opt = (C/6)^b / G."""
  for name in ("A", "B", "alpha", "beta"):
    if not getattr(law, name) > 0:
      raise ValueError(f"allocation: law.{name}={getattr(law, name)!r} "
                       "must be > 0 for a compute-optimal size to exist")
  s = law.alpha + law.beta
  g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
  return g, law.beta / s, law.alpha / s


def _positive(name: str, x: Any) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if not np.all(np.isfinite(x)) or np.any(x <= 0):
    raise ValueError(f"{name} must be finite and > 0, got {x}")
  return x


def compute_optimal(law: Law, flops: Any) -> tuple[np.ndarray, np.ndarray]:
  """(N_opt, D_opt) minimizing law.loss(N, D) subject to 6 N D = flops."""
  c = _positive("flops", flops)
  g, a, b = allocation(law)
  return g * (c / 6.0) ** a, (c / 6.0) ** b / g


def tokens_per_param(law: Law, flops: Any) -> np.ndarray:
  """D_opt / N_opt at a compute budget (it varies as C^(b - a))."""
  n, d = compute_optimal(law, flops)
  return d / n


def optimal_tokens(law: Law, n: Any) -> np.ndarray:
  """The inverse: the D for which a model of N parameters is compute-optimal
  (N = N_opt(6 N D)), D = (N / G)^(1/a) / N."""
  n = _positive("n", n)
  g, a, _ = allocation(law)
  return (n / g) ** (1.0 / a) / n


# -- approach 2: IsoFLOP profiles ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class IsoFlopMin:
  """A budget's parabola loss = c2 x^2 + c1 x + c0 in x = ln N and its
  vertex. n_opt is NaN when the parabola opens downward (no minimum);
  inside says whether the vertex lies within the sampled N."""
  n_opt: float
  loss_opt: float
  coeffs: tuple[float, float, float]
  convex: bool
  inside: bool


def isoflop_minimum(n: Any, loss: Any) -> IsoFlopMin:
  """The minimum over log N of a least-squares parabola through a FLOP
  budget's (N, loss) runs (at least 3 distinct N)."""
  n = _positive("isoflop: n", np.ravel(n))
  loss = np.asarray(loss, np.float64).ravel()
  if n.size != loss.size:
    raise ValueError(f"isoflop: {n.size} sizes but {loss.size} losses")
  if np.unique(n).size < 3:
    raise ValueError("isoflop: a parabola needs at least 3 distinct N, got "
                     f"{np.unique(n).size}")
  x = np.log(n)
  c2, c1, c0 = np.polyfit(x, loss, 2)
  if not c2 > 0:
    return IsoFlopMin(math.nan, math.nan, (c2, c1, c0), False, False)
  xv = -c1 / (2.0 * c2)
  return IsoFlopMin(float(np.exp(xv)), float(c0 - c1 * c1 / (4.0 * c2)),
                    (float(c2), float(c1), float(c0)), True,
                    bool(x.min() <= xv <= x.max()))


@dataclasses.dataclass(frozen=True)
class IsoFlopAllocation:
  """Approach 2: per-budget minima and N_opt = k C^a fitted through them
  (D_opt = C / (6 N_opt), so D_opt grows as C^(1 - a))."""
  flops: np.ndarray
  minima: tuple[IsoFlopMin, ...]
  k: float
  a: float

  def n_opt(self, flops: Any) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
      return self.k * _positive("flops", flops) ** self.a

  def tokens_per_param(self, flops: Any) -> np.ndarray:
    c = _positive("flops", flops)
    n = self.n_opt(c)
    return c / (6.0 * n) / n


def isoflop_allocation(flops: Any, n: Any, loss: Any) -> IsoFlopAllocation:
  """Groups runs by their FLOP budget (equal `flops` values), finds each
  budget's parabola minimum and fits log N_opt = log k + a log C."""
  flops = _positive("isoflop: flops", np.ravel(flops))
  n = np.ravel(n)
  loss = np.ravel(loss)
  if not flops.size == n.size == loss.size:
    raise ValueError("isoflop: flops, n and loss need one value per run")
  budgets = np.unique(flops)
  minima = tuple(isoflop_minimum(n[flops == c], loss[flops == c])
                 for c in budgets)
  ok = np.array([m.convex for m in minima])
  if ok.sum() < 2:
    raise ValueError(f"isoflop: {int(ok.sum())} of {budgets.size} budgets "
                     "have a minimum; the power law needs 2")
  lc = np.log(budgets[ok])
  ln = np.log([m.n_opt for m in minima if m.convex])
  a, logk = np.polyfit(lc, ln, 1)
  return IsoFlopAllocation(budgets, minima, float(np.exp(logk)), float(a))


# -- bootstrap ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  """Bootstrap replicates of a statistic (rows) and their percentile CI."""
  samples: np.ndarray
  failed: int

  def ci(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < level < 1:
      raise ValueError(f"ci: level={level!r} must be in (0, 1)")
    q = 100 * (1 - level) / 2
    return (np.percentile(self.samples, q, axis=0),
            np.percentile(self.samples, 100 - q, axis=0))


def bootstrap_runs(statistic: Callable[[np.ndarray], Any], num_runs: int,
                   *, num_samples: int = 200, seed: int = 0,
                   strata: Any = None) -> Bootstrap:
  """Resamples run indices with replacement (within each stratum, e.g. a
  FLOP budget, if `strata` gives one label per run) and evaluates
  `statistic(indices)`; a resample whose statistic raises ValueError or is
  not finite counts as failed and is left out."""
  if num_runs < 1 or num_samples < 1:
    raise ValueError("bootstrap: num_runs and num_samples must be >= 1")
  if strata is not None and np.asarray(strata).size != num_runs:
    raise ValueError("bootstrap: strata needs one label per run")
  rng = np.random.default_rng(seed)
  groups = ([np.arange(num_runs)] if strata is None else
            [np.flatnonzero(np.asarray(strata) == s)
             for s in np.unique(np.asarray(strata))])
  out, failed = [], 0
  for _ in range(num_samples):
    idx = np.concatenate([rng.choice(g, g.size) for g in groups])
    try:
      v = np.asarray(statistic(idx), np.float64)
    except ValueError:
      failed += 1
      continue
    if not np.all(np.isfinite(v)):
      failed += 1
      continue
    out.append(v)
  if not out:
    raise ValueError(f"bootstrap: all {num_samples} resamples failed")
  return Bootstrap(np.stack(out), failed)


def refit_starts(fit: Fit) -> np.ndarray:
  """Starts for refitting a resample: the full fit's solution plus a small
  grid inside Chinchilla's (cheap enough for hundreds of refits)."""
  small = grid_starts({"a": (0.0, 5.0, 10.0), "b": (0.0, 5.0, 10.0),
                       "e": (-1.0, 0.0, 1.0), "alpha": (0.5, 1.0),
                       "beta": (0.5, 1.0)})
  return np.concatenate([fit.x[None], small])


def bootstrap_law(n: Any, d: Any, loss: Any,
                  statistic: Callable[[Law], Any], *, fit: Fit | None = None,
                  num_samples: int = 200, seed: int = 0,
                  delta: float = HUBER_DELTA, top_k: int | None = 8
                  ) -> Bootstrap:
  """Bootstrap of statistic(law) over runs resampled with replacement, each
  refitted by approach 3 from the `top_k` best of `refit_starts(fit)`."""
  n, d, loss = _as_runs(n, d, loss)
  fit = fit if fit is not None else fit_law(n, d, loss, delta=delta)
  starts = refit_starts(fit)

  def stat(idx: np.ndarray) -> Any:
    if np.unique(idx).size < 5:
      raise ValueError("fewer than 5 distinct runs")
    return statistic(fit_law(n[idx], d[idx], loss[idx], delta=delta,
                             starts=starts, top_k=top_k).law)

  return bootstrap_runs(stat, n.size, num_samples=num_samples, seed=seed)
