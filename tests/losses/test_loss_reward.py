"""Bradley-Terry reward loss, reward statistics, and a tiny reward model
trained to separate a toy preference set."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from lifejax import sharding
from lifejax.losses import reward
from lifejax.model import heads
from lifejax.train import step as step_lib


STEPS = 40


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def test_bradley_terry_closed_form():
  r_c = np.array([2.0, 0.5, -1.0, 30.0, -30.0], np.float32)
  r_r = np.array([1.0, 1.0, -1.0, -30.0, 30.0], np.float32)
  margin = np.array([0.0, 0.5, 1.0, 0.0, 0.0], np.float32)
  np.testing.assert_allclose(reward.bradley_terry_loss(r_c, r_r),
                             -np_log_sigmoid(r_c - r_r), rtol=1e-6)
  got = reward.bradley_terry_loss(r_c, r_r, margin)
  np.testing.assert_allclose(got, -np_log_sigmoid(r_c - r_r - margin),
                             rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(got[2], np.log(1.0 + np.e), rtol=1e-6)
  assert np.isfinite(got[4]) and abs(got[4] - 60.0) < 1e-4  # no overflow
  g_c, g_r = jax.grad(lambda c, r: jnp.sum(reward.bradley_terry_loss(c, r)),
                      argnums=(0, 1))(r_c, r_r)
  assert np.all(g_c < 0) and np.all(g_r > 0)


def _np_scores(helpers, tiny, rows) -> np.ndarray:
  """Per-position model outputs read at each row's last masked position."""
  values = helpers.lm_logits(tiny, rows)
  mask = rows["loss_mask"]
  return np.array([values[i, np.nonzero(mask[i])[0][-1]] if mask[i].any()
                   else 0.0 for i in range(len(mask))])


def test_reward_loss_fn_matches_numpy(pair_batch, helpers):
  tiny = helpers.random_tiny(heads.RewardModel, seed=2)
  batch = {h: {k: v.copy() for k, v in pair_batch[h].items()}
           for h in ("chosen", "rejected")}
  batch["rejected"]["loss_mask"][3] = 0.0  # a padding pair: left out
  batch["margin"] = np.array([0.0, 0.3, -0.2, 5.0], np.float32)
  loss_fn = reward.make_reward_loss_fn(tiny.graphdef)
  loss, metrics = jax.jit(loss_fn)(tiny.params, batch, None)

  r = {half: _np_scores(helpers, tiny, batch[half])
       for half in ("chosen", "rejected")}
  diff = (r["chosen"] - r["rejected"])[:3]
  np.testing.assert_allclose(
      loss, np.mean(-np_log_sigmoid(diff - batch["margin"][:3])), rtol=1e-5)
  assert float(metrics["weight"]) == 3.0
  np.testing.assert_allclose(metrics["accuracy"], np.mean(diff > 0))
  np.testing.assert_allclose(metrics["margin"], diff.mean(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(metrics["chosen_reward"], r["chosen"][:3].mean(),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["rejected_reward"],
                             r["rejected"][:3].mean(), rtol=1e-5, atol=1e-6)


def _toy_preferences(rng: np.random.Generator, n: int, t: int, vocab: int,
                     marker: int = 1) -> dict:
  """Pairs with the same prompt; only chosen responses contain `marker`.

  Responses end with EOS (token 0), as the renders make them: the last
  target is never an input, so the reward model cannot see it.
  """
  prompt_len, resp_len = 3, t + 1 - 3

  def half(with_marker: bool, prompts):
    docs = np.concatenate(
        [prompts, rng.integers(2, vocab, (n, resp_len - 1)),
         np.zeros((n, 1), np.int64)], axis=1)
    if with_marker:
      docs[np.arange(n), prompt_len + rng.integers(0, resp_len - 1, n)] = marker
    mask = np.zeros((n, t), np.float32)
    mask[:, prompt_len - 1:] = 1.0
    return {"tokens": docs[:, :-1].astype(np.int32),
            "targets": docs[:, 1:].astype(np.int32), "loss_mask": mask,
            "segment_ids": np.ones((n, t), np.int32),
            "positions": np.tile(np.arange(t, dtype=np.int32), (n, 1))}

  prompts = rng.integers(2, vocab, (n, prompt_len))
  return {"chosen": half(True, prompts), "rejected": half(False, prompts)}


def test_tiny_reward_model_learns_separable_preferences(helpers):
  """Trained with the generic train step (2 microbatches) on fresh pairs
  every step, so it has to learn the rule, not memorize pairs."""
  cfg, t = helpers.cfg, helpers.seq_len
  rng = np.random.default_rng(0)
  held_out = _toy_preferences(rng, 64, t, cfg.vocab_size)
  tiny = helpers.random_tiny(heads.RewardModel, seed=0)
  loss_fn = reward.make_reward_loss_fn(tiny.graphdef)
  optimizer = optax.adam(1e-2)
  step = jax.jit(step_lib.build_train_step(loss_fn, optimizer,
                                           num_microbatches=2))
  state = {"step": jnp.zeros((), jnp.int32), "params": tiny.params,
           "opt_state": optimizer.init(tiny.params),
           "rng": jax.random.PRNGKey(0)}
  evaluate = jax.jit(loss_fn)
  loss0, metrics0 = evaluate(tiny.params, held_out, None)
  losses = []
  for _ in range(STEPS):
    train = _toy_preferences(rng, 16, t, cfg.vocab_size)
    state, metrics = step(state, train)
    losses.append(float(metrics["loss"]))
  assert float(metrics["weight"]) == 16.0
  assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
  loss1, metrics1 = evaluate(state["params"], held_out, None)
  assert float(metrics1["accuracy"]) == 1.0, (metrics0, metrics1)
  assert float(loss1) < 0.2 * float(loss0)
  assert float(metrics1["margin"]) > 1.0


def test_reward_stats_merge_and_normalize():
  rng = np.random.default_rng(3)
  r = rng.normal(2.0, 3.0, 50).astype(np.float32)
  mask = rng.random(50) < 0.7
  stats = reward.RewardStats.empty()
  for chunk in np.array_split(np.arange(50), [7, 8, 30]):  # sizes 7, 1, 22, 20
    stats = stats.merge(reward.RewardStats.from_rewards(r[chunk],
                                                        mask[chunk]))
  kept = r[mask].astype(np.float64)
  assert float(stats.count) == mask.sum()
  np.testing.assert_allclose(stats.mean, kept.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats.std, kept.std(), rtol=1e-5)
  normed = np.asarray(stats.normalize(jnp.asarray(kept)), np.float64)
  np.testing.assert_allclose(normed.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(normed.std(), 1.0, rtol=1e-5)


def test_reward_stats_over_batches(pair_batch, helpers):
  tiny = helpers.random_tiny(heads.RewardModel, seed=4)
  score_fn = reward.make_score_fn(tiny.graphdef)
  batches = [dict(pair_batch["chosen"]), dict(pair_batch["rejected"])]
  batches[1]["loss_mask"] = batches[1]["loss_mask"].copy()
  batches[1]["loss_mask"][0] = 0.0  # padding row, left out
  scores = np.concatenate([_np_scores(helpers, tiny, b) for b in batches])
  keep = np.concatenate([np.any(b["loss_mask"] > 0, axis=1) for b in batches])
  stats = reward.reward_stats_over(score_fn, tiny.params, batches)
  assert float(stats.count) == 7
  np.testing.assert_allclose(stats.mean, scores[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(stats.std, scores[keep].std(), rtol=1e-4)


def test_reward_loss_sharded_equals_unsharded(pair_batch, helpers, devices):
  """The eval step on a (data 2, fsdp 2, model 2) mesh gives the plain jit's
  loss and metrics; the head kernel is sharded like other embed dims."""
  del devices  # the fixture asserts the 8 simulated devices
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, model=2))
  rules = sharding.DEFAULT_RULES
  abstract = nnx.state(heads.abstract(heads.RewardModel, helpers.cfg),
                       nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  assert specs["head"]["kernel"] == P("fsdp", None)
  assert specs["head"]["bias"] == P(None)

  tiny = helpers.random_tiny(heads.RewardModel, seed=8)
  loss_fn = reward.make_reward_loss_fn(tiny.graphdef)
  loss, metrics = jax.jit(loss_fn)(tiny.params, pair_batch, None)
  param_sh = sharding.named(mesh, specs)
  batch_sh = sharding.batch_shardings(pair_batch, mesh, rules)
  eval_step = step_lib.build_eval_step(loss_fn, param_sh, batch_sh, mesh,
                                       rules)
  with jax.set_mesh(mesh):
    out = eval_step(sharding.put(tiny.params, param_sh),
                    sharding.put(pair_batch, batch_sh))
  w = float(out["weight"])
  assert w == float(metrics["weight"]) == 4.0
  np.testing.assert_allclose(float(out["loss"]) / w, loss, rtol=1e-5)
  for k in ("accuracy", "margin", "chosen_reward", "rejected_reward"):
    np.testing.assert_allclose(float(out[k]) / w, metrics[k], rtol=1e-5,
                               atol=1e-6, err_msg=k)
