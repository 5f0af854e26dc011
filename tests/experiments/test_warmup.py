"""experiments/warmup: the spike counter and the grid (the runs themselves
are the tiny test's, tests/experiments/test_experiments_tiny.py)."""

import math

from lifejax import sweep

_spec = sweep.load_spec("experiments/warmup")


def test_grid_is_learning_rate_by_warmup_with_the_demo_values():
  arms = {(a.labels["lr"], a.labels["warmup"]): a for a in _spec.SWEEP.arms}
  assert set(arms) == {(lr, w) for lr in _spec.LEARNING_RATES
                       for w in _spec.WARMUPS}
  assert (_spec.DEMO_LR, _spec.DEMO_WARMUP) in arms
  assert (_spec.DEMO_LR, 0) in arms
  assert max(_spec.LEARNING_RATES) >= 10 * _spec.DEMO_LR
  a = arms[(_spec.DEMO_LR, 0)]
  assert "OptimizerConfig.warmup_steps=0" in a.gin_params
  assert len(_spec.SWEEP.seeds) >= 3


def test_spikes_are_rises_above_the_recent_minimum():
  falling = [8.0 - 0.05 * t for t in range(40)]
  assert _spec.count_spikes(falling) == 0
  noisy = [5.0 + (0.2 if t % 2 else -0.2) for t in range(40)]
  assert _spec.count_spikes(noisy) == 0  # 0.4 < 0.5 nats
  spiked = list(falling)
  spiked[20] += 1.0
  assert _spec.count_spikes(spiked) == 1
  # a rise is measured against the last `window` steps only
  slow = [5.0] * 5 + [5.3, 5.6]
  assert _spec.count_spikes(slow, nats=0.5, window=1) == 0
  assert _spec.count_spikes(slow, nats=0.5, window=10) == 1
  assert _spec.count_spikes(falling[:10] + [math.nan] + falling[10:]) == 1
