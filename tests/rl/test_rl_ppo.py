"""PPO on the toy: the reward goes up, beta bounds the KL, the reference
never moves, the step compiles once, and a restart continues identically."""

import math
import os
import shutil

import jax
import numpy as np
import pytest

from lifejax.data.jsonl import read_jsonl
from lifejax.rl import ppo
from lifejax.run.layout import RunDir
from lifejax.train.metrics import read_metrics


def _rows(run_dir):
  return read_metrics(RunDir(run_dir).metrics)


@pytest.fixture(scope="module")
def beta_runs(toy, tmp_path_factory):
  """The same toy PPO run with beta = 0 and beta = 1 (the ablation)."""
  out = {}
  for beta in (0.0, 1.0):
    run_dir = tmp_path_factory.mktemp(f"ppo_beta{beta}")
    _, learner = toy.run_toy(run_dir, ppo.PPO(ppo.PPOConfig(kl_coef=beta)),
                             "separate", iterations=4)
    out[beta] = (str(run_dir), learner)
  return out


def test_ppo_raises_the_reward_and_keeps_kl_finite(toy, beta_runs):
  run_dir, learner = beta_runs[0.0]
  rows = _rows(run_dir)
  assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
  # One row per iteration, at its last engine step (16 rows x 4 epochs /
  # minibatch 8 = 8 steps per iteration).
  assert [r["step"] for r in rows] == [8, 16, 24, 32]
  for r in rows:
    for k in ("reward", "kl", "kl_k3", "clip_fraction", "approx_kl",
              "value_loss", "explained_variance", "entropy",
              "response_length", "kl_coef", "policy_loss", "grad_norm"):
      assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r)
  assert rows[0]["kl"] == 0.0  # the first rollout samples the reference
  assert np.mean([r["reward"] for r in rows[-2:]]) > rows[0]["reward"] + 0.05
  eval_rows = toy.eval_rows()
  _, ref = toy.random_lm()
  _, mass_before = toy.exact_stats(ref, eval_rows)
  kl_after, mass_after = toy.exact_stats(
      jax.device_get(learner.policy_params()), eval_rows)
  assert mass_after > mass_before + 0.1, (mass_before, mass_after)
  assert 0 < kl_after < 10
  # The reference is frozen: still exactly the initial LM.
  for a, b in zip(jax.tree.leaves(jax.device_get(learner.ref_params)),
                  jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
  assert learner.train_step.jitted._cache_size() == 1  # compiled once
  first = read_jsonl(RunDir(run_dir).iteration_sample_file(1))[0]
  assert {"response_ids", "score", "length"} <= set(first)


def test_larger_beta_keeps_the_policy_closer_to_the_reference(toy,
                                                              beta_runs):
  eval_rows = toy.eval_rows()
  kl = {beta: toy.exact_stats(jax.device_get(learner.policy_params()),
                              eval_rows)[0]
        for beta, (_, learner) in beta_runs.items()}
  assert kl[1.0] < 0.5 * kl[0.0], kl
  logged = {beta: _rows(run_dir)[-1]["kl_k3"]
            for beta, (run_dir, _) in beta_runs.items()}
  assert logged[1.0] < logged[0.0], logged


def test_ppo_resume_continues_identically(toy, tmp_path):
  """Shared trunk, adaptive KL: a run restarted from its iteration-1
  checkpoint logs the same iteration 2 as the uninterrupted run."""
  algo = lambda: ppo.PPO(ppo.PPOConfig(  # noqa: E731
      kl_coef=0.2, adaptive_kl=True, target_kl=0.1, kl_horizon=50.0))
  full = tmp_path / "full"
  _, learner = toy.run_toy(full, algo(), "shared", iterations=2,
                           checkpoint_every=1)
  want = _rows(full)
  assert want[1]["kl_coef"] != want[0]["kl_coef"]  # the controller moved
  final = jax.device_get(learner.state["params"])

  restarted = tmp_path / "restarted"
  shutil.copytree(full, restarted)
  per_iter = want[0]["step"]
  shutil.rmtree(os.path.join(RunDir(restarted).checkpoints,
                             str(2 * per_iter)))  # "killed"
  # after iteration 1
  summary, learner2 = toy.run_toy(restarted, algo(), "shared", iterations=2,
                                  checkpoint_every=1)
  assert summary["resumed_from"] == 1
  got = read_jsonl(RunDir(restarted).metrics)[-1]
  assert got["iteration"] == 2 and got["step"] == 2 * per_iter
  del got["tokens_per_sec"], want[1]["tokens_per_sec"]  # wall clock
  assert got == pytest.approx(want[1], rel=1e-6, abs=1e-7)
  for a, b in zip(jax.tree.leaves(final),
                  jax.tree.leaves(jax.device_get(learner2.state["params"]))):
    np.testing.assert_array_equal(a, b)
