"""GRPO on the toy: group-relative advantages raise the reward."""

import math

import jax
import numpy as np
import pytest

from lifejax.rl import grpo, rollout as rollout_lib
from lifejax.run.layout import RunDir
from lifejax.train.metrics import read_metrics


def test_grpo_prepare_gives_group_relative_advantages(toy):
  rows = toy.eval_rows()
  b, t = rows["loss_mask"].shape
  ro = rollout_lib.Rollout(
      records=[{}] * b, rows=rows, response_BxN=np.zeros((b, 1), np.int32),
      lengths_B=np.ones(b, np.int32), stopped_B=np.ones(b, bool),
      old_logp=np.zeros((b, t), np.float32),
      ref_logp=np.zeros((b, t), np.float32),
      score_B=np.repeat([0.0, 1.0, 2.0, 5.0], 4).astype(np.float32))
  ro.score_B[4:8] = [0.0, 1.0, 0.0, 1.0]
  algo = grpo.GRPO(grpo.GRPOConfig(group_size=4, eps=0.0))
  batch, metrics = algo.prepare(ro)
  np.testing.assert_allclose(batch["advantages"][4:8], [-1, 1, -1, 1],
                             atol=1e-6)
  np.testing.assert_array_equal(batch["advantages"][[0, 8, 12]], 0.0)
  assert metrics["flat_group_rate"] == 0.75
  assert set(batch) == set(algo.example_minibatch(8, t))
  with pytest.raises(ValueError, match="group_size"):
    grpo.GRPOConfig(group_size=1)


def test_grpo_raises_the_reward(toy, tmp_path):
  algo = grpo.GRPO(grpo.GRPOConfig(group_size=4, kl_coef=0.04))
  _, learner = toy.run_toy(tmp_path, algo, "policy", iterations=4,
                           prompts=4)
  rows = read_metrics(RunDir(tmp_path).metrics)
  assert len(rows) == 4
  for r in rows:
    assert all(math.isfinite(r[k]) for k in ("reward", "kl", "kl_k3",
                                              "clip_fraction", "loss"))
  eval_rows = toy.eval_rows()
  _, ref = toy.random_lm()
  _, mass_before = toy.exact_stats(ref, eval_rows)
  kl, mass_after = toy.exact_stats(jax.device_get(learner.policy_params()),
                                   eval_rows)
  assert mass_after > mass_before + 0.08, (mass_before, mass_after)
  assert 0 < kl < 10
  assert learner.train_step.jitted._cache_size() == 1
