"""The GRPO family's rollout-side options: config errors, DAPO's overlong
shaping and filtering and the std's ddof in `prepare` (float64 closed
forms), dynamic sampling through the rollout source (which groups a batch
holds, extra rounds, the flat-group fill, resuming), and the entropy / KL
monitors. A scripted sampler and scorer stand in for the policy, so the
group composition is known by hand; only the entropy uses the toy LM."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.rl import grpo, iteration, layout as layout_lib, monitors
from lifejax.model.config import TransformerConfig
from lifejax.rl import rollout as rollout_lib

G, P, N = 2, 4, 3  # group size, prompts per iteration, max_new_tokens
ROLLOUT_CFG = rollout_lib.RolloutConfig(prompt_len=5, max_new_tokens=N)


@pytest.mark.parametrize("kwargs, field", [
    (dict(aggregation="token-sum"), "GRPOConfig.aggregation"),
    (dict(importance_sampling_level="seq"),
     "GRPOConfig.importance_sampling_level"),
    (dict(std_ddof=2), "GRPOConfig.std_ddof"),
    (dict(std_ddof=1, scale_rewards=False), "GRPOConfig.std_ddof"),
    (dict(clip_eps_low=1.0), "GRPOConfig.clip_eps_low"),
    (dict(clip_eps_high=0.0), "GRPOConfig.clip_eps_high"),
    (dict(aggregation="seq-mean-token-sum-norm"), "GRPOConfig.norm_length"),
    (dict(norm_length=64), "GRPOConfig.norm_length"),
    (dict(dynamic_sampling_rounds=-1), "GRPOConfig.dynamic_sampling_rounds"),
    (dict(overlong_buffer=-1), "GRPOConfig.overlong_buffer"),
    (dict(overlong_penalty=0.5), "GRPOConfig.overlong_penalty"),
    (dict(overlong_buffer=4, overlong_penalty=0.0),
     "GRPOConfig.overlong_penalty"),
])
def test_grpo_config_rejects_bad_family_options(kwargs, field):
  with pytest.raises(ValueError, match=field):
    grpo.GRPOConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(entropy_floor=1.5), "RLLoopConfig.entropy_floor"),
    (dict(kl_ceiling=-1.0), "RLLoopConfig.kl_ceiling"),
])
def test_loop_config_rejects_bad_monitors(kwargs, field):
  with pytest.raises(ValueError, match=field):
    iteration.RLLoopConfig(**kwargs)


def test_overlong_penalty_closed_form():
  # L_max = 10, L_cache = 4: free up to 6 tokens, then -1/4 per token.
  lengths = np.array([3, 6, 7, 9, 10])
  np.testing.assert_allclose(grpo.overlong_penalty(lengths, 10, 4),
                             [0.0, 0.0, -0.25, -0.75, -1.0], rtol=1e-7)
  np.testing.assert_allclose(grpo.overlong_penalty(lengths, 10, 4, 0.5),
                             [0.0, 0.0, -0.125, -0.375, -0.5], rtol=1e-7)
  with pytest.raises(ValueError, match="overlong_buffer=11"):
    grpo.overlong_penalty(lengths, 10, 11)


def _hand_rollout(score, lengths, stopped, n=10, t=12):
  b = len(score)
  mask = np.zeros((b, t), np.float32)
  for i, length in enumerate(lengths):
    mask[i, 1:1 + length] = 1.0
  rows = {k: np.zeros((b, t), np.int32) for k in grpo.LM_KEYS}
  rows["loss_mask"] = mask
  return rollout_lib.Rollout(
      records=[{}] * b, rows=rows, response_BxN=np.zeros((b, n), np.int32),
      lengths_B=np.asarray(lengths, np.int32),
      stopped_B=np.asarray(stopped, bool),
      old_logp=np.zeros((b, t), np.float32),
      ref_logp=np.zeros((b, t), np.float32),
      score_B=np.asarray(score, np.float32))


def test_prepare_shapes_filters_and_normalizes():
  """Advantages of score + soft overlong penalty with the unbiased std;
  truncated samples (no stop token) keep their advantage but lose their
  loss; flat_group_rate judges the raw scores."""
  score = [1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
  lengths = [2, 8, 10, 10, 3, 9, 10, 4]
  stopped = [True, True, True, False, True, True, False, True]
  ro = _hand_rollout(score, lengths, stopped)
  algo = grpo.GRPO(grpo.GRPOConfig(group_size=4, eps=1e-4, std_ddof=1,
                                   overlong_buffer=4, overlong_penalty=2.0,
                                   overlong_filter=True))
  batch, metrics = algo.prepare(ro)
  shaped = np.asarray(score, np.float64) + 2.0 * np.minimum(
      -(np.asarray(lengths, np.float64) - 6) / 4, 0)
  want = []
  for g in shaped.reshape(2, 4):
    want += list((g - g.mean()) / (np.std(g, ddof=1) + 1e-4))
  np.testing.assert_allclose(batch["advantages"], want, rtol=1e-5)
  # Group 2 scored flat (0.5): only the length penalty tells it apart.
  assert np.abs(batch["advantages"][4:]).min() > 0.1
  assert metrics["flat_group_rate"] == 0.5
  np.testing.assert_allclose(metrics["overlong_penalty"], np.mean(
      shaped - score), rtol=1e-6)
  np.testing.assert_array_equal(batch["loss_mask"].sum(1),
                                np.where(stopped, lengths, 0))
  assert metrics["overlong_filtered"] == 0.25
  # Off by default: the loss mask and the raw-score advantages.
  plain, plain_metrics = grpo.GRPO(grpo.GRPOConfig(group_size=4)).prepare(ro)
  np.testing.assert_array_equal(plain["loss_mask"], ro.rows["loss_mask"])
  assert "overlong_penalty" not in plain_metrics
  assert np.all(plain["advantages"][4:] == 0.0)


# -- dynamic sampling through the rollout source -----------------------------


def _records(flat_ids, n):
  rng = np.random.default_rng(0)
  return [{"id": i, "flat": i in flat_ids,
           "prompt_ids": rng.integers(9, 31, 2 + i % 3).tolist()}
          for i in range(n)]


def _score(rollout):
  """Flat records score 1 in every sample; the others 0, 1 within a
  group (always informative)."""
  flat = np.array([r["flat"] for r in rollout.records])
  return np.where(flat, 1.0, np.arange(len(flat)) % G).astype(np.float32)


class Recording(grpo.GRPO):
  """GRPO that keeps every rollout it prepares."""

  def __init__(self, cfg):
    super().__init__(cfg)
    self.rollouts = []

  def prepare(self, rollout):
    self.rollouts.append(rollout)
    return super().prepare(rollout)


def _forwards(keys, lm=None):
  """A scripted sampler (tokens drawn from the key it is given, which it
  records; every response runs to max_new_tokens), log-probs 0 and
  reference log-probs -0.5 (so kl = 0.5 per token); `lm`: (layout, params,
  mesh, rules) for the entropy."""
  def sample(prompt_BxP, mask_BxP, rng):
    del mask_BxP
    keys.append(np.asarray(rng))
    draw = np.random.default_rng(keys[-1].tolist())
    return (draw.integers(1, 31, (len(prompt_BxP), N)),
            np.full(len(prompt_BxP), N))

  def zeros(rows):
    return np.zeros(rows["tokens"].shape, np.float32)

  layout, _, mesh, rules = lm or (None, None, None, None)
  return types.SimpleNamespace(
      sampler=lambda params, cfg: sample,
      stats=lambda params, rows: (zeros(rows), None),
      ref_logp=lambda rows: zeros(rows) - 0.5, layout=layout, mesh=mesh,
      rules=rules, chunk_size=0)


def _source(records, rounds, keys, *, lm=None, **loop_kwargs):
  algo = Recording(grpo.GRPOConfig(group_size=G,
                                   dynamic_sampling_rounds=rounds))
  params = None if lm is None else lm[1]
  return iteration.RolloutSource(
      forwards=_forwards(keys, lm), algorithm=algo,
      prompts=iteration.PromptBatches(records, P, shuffle=False),
      codec=rollout_lib.Codec(encode=lambda r: r["prompt_ids"], decode=None,
                              stop_ids=(), pad_id=0),
      scorer=_score, rollout_cfg=ROLLOUT_CFG,
      loop_cfg=iteration.RLLoopConfig(
          prompts_per_iteration=P, epochs=1, minibatch_size=P * G,
          **loop_kwargs),
      seed=7, trained_params=lambda state: params)


def _ids(rollout):
  return [r["id"] for r in rollout.records]


@pytest.fixture(scope="module")
def toy_lm(toy):
  """A one-layer LM over the toy's vocabulary (a cheap compile)."""
  cfg = TransformerConfig(vocab_size=32, d_model=16, num_layers=1,
                          num_heads=2, num_kv_heads=1, mlp_dim=32)
  mesh = sharding.make_mesh(toy.mesh_cfg)
  layout, _, _ = layout_lib.make_layout("policy", cfg, mesh,
                                        toy.mesh_cfg.rules)
  # Uncommitted arrays: jit places them (a policy layout's params are the
  # LM's as they are).
  params = toy.random_lm(cfg, 0, 0.3)[1]
  return layout, params, mesh, toy.mesh_cfg.rules


@pytest.fixture(scope="module")
def refilled(toy_lm):
  """Two iterations over 12 prompts of which ids 0, 3, 6, 9 score flat,
  with every monitor on."""
  keys = []
  src = _source(_records({0, 3, 6, 9}, 12), 2, keys, lm=toy_lm,
                log_entropy=True, entropy_floor=1.0, kl_ceiling=1.0)
  metrics, states = [], []
  for _ in range(2):
    batch = src.next_batch(None)
    metrics.append(src.pop_metrics())
    states.append(src.get_state())
  return types.SimpleNamespace(src=src, keys=keys, metrics=metrics,
                               states=states, batch=batch)


def test_dynamic_sampling_refills_from_extra_rounds(refilled):
  """Iteration 1: prompts 0-3 keep 1, 2; the extra round (4-7) adds 4, 5.
  Iteration 2: 8-11 keep 8, 10, 11; the extra round wraps the prompt stream
  (0-3) and adds 1. Extra round r samples with the iteration's key folded
  with r."""
  first, second = refilled.src.algorithm.rollouts
  assert _ids(first) == [1, 1, 2, 2, 4, 4, 5, 5]
  assert _ids(second) == [8, 8, 10, 10, 11, 11, 1, 1]
  for m in refilled.metrics:
    assert m["dynamic_sampling/extra_rounds"] == 1.0
    assert m["dynamic_sampling/dropped_groups"] == 3.0
    assert m["dynamic_sampling/flat_groups_kept"] == 0.0
    assert m["dynamic_sampling/sampled_groups"] == 8.0
    assert m["flat_group_rate"] == 0.0
  assert refilled.metrics[0]["dynamic_sampling/reward"] == np.mean(
      [1, 1, 0, 1, 0, 1, 1, 1] + [0, 1, 0, 1, 1, 1, 0, 1])
  assert [s["prompts"]["cursor"] for s in refilled.states] == [2, 4]
  base = jax.random.fold_in(jax.random.PRNGKey(7), 0)
  want = [base, jax.random.fold_in(base, 1)]
  for got, key in zip(refilled.keys[:2], want):
    np.testing.assert_array_equal(got, np.asarray(key))
  # Rows keep their own samples: id 4's group is rows 0-1 of round 1.
  round1 = np.random.default_rng(refilled.keys[1].tolist()).integers(
      1, 31, (P * G, N))
  np.testing.assert_array_equal(first.response_BxN[4:6], round1[:2])
  np.testing.assert_array_equal(first.rows["targets"][4:6, -N:], round1[:2])
  adv = refilled.batch["advantages"]
  np.testing.assert_allclose(sorted(adv), [-1.0] * 4 + [1.0] * 4,
                             rtol=1e-3)  # (-+0.5) / (0.5 + eps)


def test_dynamic_sampling_fills_with_flat_groups_after_the_last_round():
  """Only id 5 is informative and one extra round is allowed: the batch is
  5 then the first flat groups sampled, 0, 1, 2 (zero advantage)."""
  keys = []
  src = _source(_records(set(range(8)) - {5}, 8), 1, keys)
  batch = src.next_batch(None)
  m = src.pop_metrics()
  assert _ids(src.algorithm.rollouts[0]) == [5, 5, 0, 0, 1, 1, 2, 2]
  assert (m["dynamic_sampling/extra_rounds"],
          m["dynamic_sampling/flat_groups_kept"],
          m["dynamic_sampling/dropped_groups"]) == (1.0, 3.0, 4.0)
  assert len(keys) == 2 and batch["tokens"].shape[0] == P * G
  assert np.count_nonzero(batch["advantages"]) == 2
  # Off (the default): one rollout of prompts 0-3, as before.
  keys = []
  off = _source(_records(set(range(8)) - {5}, 8), 0, keys)
  off.next_batch(None)
  assert _ids(off.algorithm.rollouts[0]) == [0, 0, 1, 1, 2, 2, 3, 3]
  assert len(keys) == 1 and not any(
      k.startswith("dynamic_sampling/") for k in off.pop_metrics())
  assert "monitors" not in off.get_state()


def test_resumed_source_continues_dynamic_sampling_and_monitors(refilled,
                                                                toy_lm):
  keys = []
  src = _source(_records({0, 3, 6, 9}, 12), 2, keys, lm=toy_lm,
                log_entropy=True, entropy_floor=1.0, kl_ceiling=1.0)
  src.set_state(refilled.states[0])
  batch = src.next_batch(None)
  assert _ids(src.algorithm.rollouts[0]) == [8, 8, 10, 10, 11, 11, 1, 1]
  for k in batch:
    np.testing.assert_array_equal(batch[k], refilled.batch[k])
  assert src.pop_metrics() == refilled.metrics[1]
  assert src.get_state() == refilled.states[1]


# -- monitors -----------------------------------------------------------------


def test_monitors_by_hand(monkeypatch):
  warnings = []
  monkeypatch.setattr(monitors.logging, "warning",
                      lambda *args: warnings.append(args[0] % args[1:]))
  mon = monitors.Monitors(entropy_floor=0.5, kl_ceiling=1.0)
  seen = [mon.check(i + 1, {"policy_entropy": e, "kl": kl})
          for i, (e, kl) in enumerate([(2.0, 0.5), (1.2, 1.5), (0.9, 1.0),
                                       (0.5, 2.0)])]
  assert [s["alert/entropy_collapse"] for s in seen] == [0, 0, 1, 1]
  assert [s["alert/entropy_collapse_count"] for s in seen] == [0, 0, 1, 2]
  assert [s["alert/kl"] for s in seen] == [0, 1, 0, 1]
  assert [s["alert/kl_count"] for s in seen] == [0, 1, 1, 2]
  assert len(warnings) == 4
  assert "iteration 3: policy entropy 0.9" in warnings[1]
  assert "RLLoopConfig.kl_ceiling=1" in warnings[0]
  # The baseline and the counts survive a restart.
  again = monitors.Monitors(entropy_floor=0.5, kl_ceiling=1.0)
  again.set_state(mon.get_state())
  assert again.check(5, {"policy_entropy": 1.1, "kl": 0.0}) == {
      "alert/entropy_collapse": 0.0, "alert/entropy_collapse_count": 2.0,
      "alert/kl": 0.0, "alert/kl_count": 2.0}
  assert monitors.Monitors().check(1, {}) == {}
  with pytest.raises(ValueError, match="kl_ceiling"):
    monitors.Monitors(kl_ceiling=1.0).check(1, {})


def test_source_logs_entropy_and_kl_alerts(refilled, toy_lm):
  """policy_entropy = the toy LM's mean next-token entropy over the
  batch's response tokens (float64 numpy from its logits); kl = 0.5 per
  token x 3 tokens > kl_ceiling = 1 alerts every iteration; entropy_floor
  = 1 alerts when the entropy falls below the first iteration's."""
  layout, params = toy_lm[:2]
  forward = jax.jit(lambda p, r: nnx.merge(layout.lm_graphdef, p)(
      r["tokens"], r["positions"], r["segment_ids"]))
  entropies = []
  for ro in refilled.src.algorithm.rollouts:
    logits = np.asarray(forward(params, ro.rows), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(-1)
    mask = ro.rows["loss_mask"]
    entropies.append((ent * mask).sum() / mask.sum())
  m1, m2 = refilled.metrics
  np.testing.assert_allclose([m1["policy_entropy"], m2["policy_entropy"]],
                             entropies, rtol=1e-5)
  assert m1["kl"] == m2["kl"] == 1.5
  assert (m1["alert/kl"], m1["alert/kl_count"]) == (1.0, 1.0)
  assert (m2["alert/kl"], m2["alert/kl_count"]) == (1.0, 2.0)
  collapsed = float(entropies[1] < entropies[0])
  assert m1["alert/entropy_collapse"] == 0.0
  assert m2["alert/entropy_collapse"] == collapsed
  assert refilled.states[1]["monitors"] == {
      "first_entropy": m1["policy_entropy"], "entropy_alerts": collapsed,
      "kl_alerts": 2}
