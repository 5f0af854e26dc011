"""Off-policy RL with a stale sampler (issue 20.4): RLLoopConfig.rollout_lag
trains iteration k on a rollout sampled with iteration k - lag's params,
re-scored by the current (proximal) params and corrected by truncated
importance weights; pending rollouts survive a restart."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl
from lifejax.losses import grpo as grpo_loss, ppo as ppo_loss
from lifejax.rl import fit, grpo as grpo_lib, iteration as iteration_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run.layout import RunDir
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig


def _batch(seed=0, b=6, t=7):
  rng = np.random.default_rng(seed)
  mask = (rng.random((b, t)) < 0.7).astype(np.float32)
  return {"loss_mask": jnp.asarray(mask),
          "old_logp": jnp.asarray(rng.normal(-2, 0.3, (b, t)), jnp.float32),
          "ref_logp": jnp.asarray(rng.normal(-2, 0.3, (b, t)), jnp.float32),
          "advantages": jnp.asarray(rng.normal(0, 1, (b,)), jnp.float32)}


def test_importance_weights_scale_the_surrogate():
  batch = _batch()
  logp = batch["old_logp"] + 0.05 * jnp.asarray(
      np.random.default_rng(1).normal(size=batch["old_logp"].shape),
      jnp.float32)
  obj = grpo_loss.make_grpo_objective(kl_coef=0.0,
                                      aggregation="token-mean")
  plain, _ = obj(logp, batch)
  ones, _ = obj(logp, {**batch, "is_weight": jnp.ones_like(logp)})
  assert float(ones) == float(plain)
  w = jnp.asarray(np.random.default_rng(2).uniform(0.2, 2.0, logp.shape),
                  jnp.float32)
  weighted, _ = obj(logp, {**batch, "is_weight": w})
  # Closed form: token mean of -w * min(rho A, clip(rho) A).
  rho = np.exp(np.asarray(logp - batch["old_logp"], np.float64))
  a = np.asarray(batch["advantages"], np.float64)[:, None]
  sur = np.minimum(rho * a, np.clip(rho, 0.8, 1.2) * a)
  m = np.asarray(batch["loss_mask"], np.float64)
  want = np.sum(-np.asarray(w) * sur * m) / m.sum()
  assert float(weighted) == pytest.approx(want, rel=1e-5)
  # The weight carries no gradient: d/dlogp of w * surrogate is w * d sur.
  g = jax.grad(lambda lp: obj(lp, {**batch, "is_weight": w})[0])(logp)
  g1 = jax.grad(lambda lp: obj(lp, batch)[0])(logp)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w * g1), rtol=1e-5,
                             atol=1e-8)
  # PPO's surrogate the same way.
  adv = jnp.broadcast_to(batch["advantages"][:, None], logp.shape)
  p_plain, _ = ppo_loss.clipped_policy_loss(logp, batch["old_logp"], adv,
                                            batch["loss_mask"], 0.2)
  p_w, _ = ppo_loss.clipped_policy_loss(logp, batch["old_logp"], adv,
                                        batch["loss_mask"], 0.2, 2 * w)
  ppo_want = np.sum(np.maximum(-a * rho, -a * np.clip(rho, 0.8, 1.2))
                    * 2 * np.asarray(w) * m) / m.sum()
  assert float(p_w) == pytest.approx(ppo_want, rel=1e-5)
  assert float(p_plain) != pytest.approx(float(p_w))


def _run(toy, run_dir, *, lag, iterations=3, lr=3e-2, cap=2.0,
         checkpoint_every=0):
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6)
  loop = iteration_lib.RLLoopConfig(
      num_iterations=iterations, prompts_per_iteration=8, epochs=2,
      minibatch_size=16, samples_every=0, tensorboard=False, progress=False,
      rollout_lag=lag, is_weight_cap=cap, checkpoint_every=checkpoint_every)
  _, lm = toy.random_lm()
  run = fit.train(
      run_dir=str(run_dir),
      algorithm=grpo_lib.GRPO(grpo_lib.GRPOConfig(group_size=4,
                                                  kl_coef=0.02)),
      layout_kind="policy", policy_cfg=toy.cfg, lm_params=lm,
      mesh=sharding.make_mesh(toy.mesh_cfg), rules=toy.mesh_cfg.rules,
      prompts=iteration_lib.PromptBatches(toy.prompt_records(16), 8, seed=0),
      codec=toy.codec(stop=True), scorer=toy.preferred_share,
      rollout_cfg=cfg, loop_cfg=loop,
      optimizer_cfg=OptimizerConfig(learning_rate=lr, schedule="constant",
                                    warmup_steps=0, weight_decay=0.0),
      checkpoint_cfg=CheckpointConfig(async_save=False, keep_last=4))
  return read_jsonl(RunDir(str(run_dir)).metrics), run


def test_a_frozen_policy_is_on_policy_at_any_lag(toy, tmp_path):
  """lr 0: the lagged pipeline samples the same prompts with the same keys
  as the synchronous run, the weights are exactly 1 and the rewards equal:
  the bookkeeping (which rollout trains which iteration) is right."""
  sync, _ = _run(toy, tmp_path / "sync", lag=0, lr=0.0)
  lagged, _ = _run(toy, tmp_path / "lag", lag=1, lr=0.0)
  assert [r["staleness"] for r in lagged] == [0.0, 1.0, 1.0]
  for s, g in zip(sync, lagged):
    assert g["reward"] == s["reward"] and g["kl"] == s["kl"]
    assert g["is_weight_mean"] == 1.0 and g["offpolicy_kl"] == 0.0


def test_stale_rollouts_are_reweighted_and_resume_exactly(toy, tmp_path):
  full = tmp_path / "full"
  rows, run = _run(toy, full, lag=1, iterations=4, cap=1.5,
                   checkpoint_every=1)
  assert [r["staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
  assert rows[0]["is_weight_mean"] == 1.0 and rows[0]["offpolicy_kl"] == 0
  later = rows[1:]
  assert all(r["is_weight_mean"] != 1.0 for r in later)
  assert all(r["is_weight_mean"] <= 1.5 for r in later)
  assert max(r["is_weight_capped"] for r in later) > 0
  assert all(abs(r["offpolicy_kl"]) > 0 for r in later)
  final = jax.device_get(run.state["params"])

  restarted = tmp_path / "restarted"
  shutil.copytree(full, restarted)
  per_iter = rows[0]["step"]
  for it in (3, 4):  # "killed" after iteration 2, a rollout pending
    shutil.rmtree(os.path.join(RunDir(str(restarted)).checkpoints,
                               str(it * per_iter)))
  got, run2 = _run(toy, restarted, lag=1, iterations=4, cap=1.5,
                   checkpoint_every=1)
  assert run2.summary["resumed_from"] == 2
  for want, have in zip(rows[2:], got[-2:]):
    del want["tokens_per_sec"], have["tokens_per_sec"]
    assert have == pytest.approx(want, rel=1e-6, abs=1e-7)
  for a, b in zip(jax.tree.leaves(final),
                  jax.tree.leaves(jax.device_get(run2.state["params"]))):
    np.testing.assert_array_equal(a, b)


def test_rollout_state_round_trips(toy):
  fw = toy.build_forwards(None, "policy")
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6)
  codec = toy.codec(stop=True)
  ro = rollout_lib.collect(
      toy.prompt_records(4), codec=codec, cfg=cfg,
      sample=fw.sampler(cfg.sampling_config(codec.stop_ids, 0)),
      rng=jax.random.PRNGKey(0), group_size=2, stats=fw.stats,
      scorer=toy.preferred_share)
  import json
  back = rollout_lib.rollout_from_state(
      json.loads(json.dumps(rollout_lib.rollout_state(ro))), codec, cfg)
  for k, v in ro.rows.items():
    np.testing.assert_array_equal(back.rows[k], v)
  mask = ro.rows["loss_mask"] > 0
  np.testing.assert_array_equal(back.old_logp[mask], ro.old_logp[mask])
  np.testing.assert_array_equal(back.sample_logp, ro.sample_logp)
  np.testing.assert_array_equal(back.score_B, ro.score_B)
  np.testing.assert_array_equal(back.stopped_B, ro.stopped_B)


def test_off_policy_config_checks():
  with pytest.raises(ValueError, match="rollout_lag"):
    iteration_lib.RLLoopConfig(rollout_lag=-1)
  with pytest.raises(ValueError, match="is_weight_cap"):
    iteration_lib.RLLoopConfig(is_weight_cap=0.5)
