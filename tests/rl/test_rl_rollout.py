"""Rollouts: row layout, log-probs against an independent forward pass,
left-padding invariance, and PPO advantages against loop/GAE references."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.eval import generation
from lifejax.losses import ppo as ppo_loss
from lifejax.rl import ppo, rollout as rollout_lib


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, ids_1xL):
  return nnx.merge(graphdef, params)(ids_1xL)


def _unpadded_logp(graphdef, params, prompt, response):
  """log p(response) of one sequence starting at column 0 with default
  positions and segments (right-padded to 16: causal attention never looks
  right)."""
  seq = list(prompt) + list(response)
  ids = np.zeros((1, 16), np.int32)
  ids[0, :len(seq)] = seq
  logits = _forward(graphdef, params, ids)
  logp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
  tgt = np.asarray(seq[1:])
  return np.asarray(logp[np.arange(len(tgt)), tgt])[len(prompt) - 1:]


def _sampler(toy, params, cfg, stops=()):
  graphdef, _ = toy.random_lm()
  return generation.make_sampler(generation.default_sample_fn(), graphdef,
                                 params, cfg.sampling_config(stops, 0))


def test_build_rows_layout():
  prompt = np.array([[0, 0, 5, 6], [7, 8, 9, 4]], np.int32)
  mask = (prompt > 0).astype(np.int32)
  resp = np.array([[11, 3, 0], [12, 13, 14]], np.int32)
  rows = rollout_lib.build_rows(prompt, mask, resp, np.array([2, 3]))
  np.testing.assert_array_equal(rows["tokens"][0], [0, 0, 5, 6, 11, 3])
  np.testing.assert_array_equal(rows["targets"][0], [0, 5, 6, 11, 3, 0])
  np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(rows["loss_mask"][1], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(rows["positions"][0], [0, 0, 0, 1, 2, 3])
  np.testing.assert_array_equal(rows["segment_ids"][0], [0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(rows["positions"][1], np.arange(6))


@pytest.fixture(scope="module")
def learner_and_rollout(toy, tmp_path_factory):
  """A learner whose policy and reference differ, a greedy rollout in which
  row 0 stops early (the stop id is a token it emits greedily after its
  first), and a sampled rollout with 2 samples per prompt."""
  graphdef, policy = toy.random_lm(seed=0)
  _, ref = toy.random_lm(seed=1)
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6)
  records = toy.prompt_records(8)
  greedy = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6,
                                     temperature=0.0)
  probe = rollout_lib.collect(records, codec=toy.codec(), cfg=greedy,
                              sample=_sampler(toy, policy, greedy),
                              rng=jax.random.PRNGKey(0))
  first = probe.response_BxN[0]
  stop_at = next(j for j in range(1, len(first)) if first[j] not in first[:j])
  stop = int(first[stop_at])
  learner = toy.build_forwards(ppo.PPO(ppo.PPOConfig()), "separate",
                               lm_params=policy, ref_params=ref)
  codec = rollout_lib.Codec(encode=lambda r: list(r["prompt_ids"]),
                            decode=None, stop_ids=(stop,), pad_id=0)
  rollout = rollout_lib.collect(
      records, codec=codec, cfg=greedy, sample=learner.sampler(
          greedy.sampling_config((stop,), 0)),
      rng=jax.random.PRNGKey(1), stats=learner.stats,
      ref_logp=learner.ref_logp, scorer=toy.preferred_share)
  sampled = rollout_lib.collect(
      records[:4], codec=codec, cfg=cfg, group_size=2,
      sample=learner.sampler(cfg.sampling_config((stop,), 0)),
      rng=jax.random.PRNGKey(2), stats=learner.stats,
      ref_logp=learner.ref_logp, scorer=toy.preferred_share)
  return graphdef, policy, ref, stop, stop_at, rollout, sampled


def test_rollout_masks_and_logprobs_match_a_separate_forward(
    learner_and_rollout):
  graphdef, policy, ref, stop, stop_at, greedy_ro, sampled = (
      learner_and_rollout)
  assert greedy_ro.lengths_B[0] == stop_at + 1 and greedy_ro.stopped_B[0]
  for ro in (greedy_ro, sampled):
    rows = ro.rows
    np.testing.assert_array_equal(rows["loss_mask"].sum(1), ro.lengths_B)
    np.testing.assert_array_equal(rows["tokens"][:, 1:],
                                  rows["targets"][:, :-1])
    for i, rec in enumerate(ro.records):
      n = ro.lengths_B[i]
      resp = ro.response_BxN[i, :n]
      on = rows["loss_mask"][i] > 0
      np.testing.assert_array_equal(rows["targets"][i][on], resp)
      assert (ro.response_BxN[i, n:] == 0).all()
      assert ro.stopped_B[i] == (resp[-1] == stop)
      np.testing.assert_allclose(
          ro.old_logp[i][on], _unpadded_logp(graphdef, policy,
                                             rec["prompt_ids"], resp),
          atol=2e-5)
      np.testing.assert_allclose(
          ro.ref_logp[i][on], _unpadded_logp(graphdef, ref,
                                             rec["prompt_ids"], resp),
          atol=2e-5)
  assert sampled.batch_size == 8
  assert [r["id"] for r in sampled.records[:4]] == [0, 0, 1, 1]


def test_left_padding_does_not_change_greedy_rollouts(toy):
  _, policy = toy.random_lm(seed=0)
  records = toy.prompt_records(8)
  outs = []
  for prompt_len in (8, 13):
    cfg = rollout_lib.RolloutConfig(prompt_len=prompt_len, max_new_tokens=6,
                                    temperature=0.0)
    outs.append(rollout_lib.collect(
        records, codec=toy.codec(stop=True), cfg=cfg,
        sample=_sampler(toy, policy, cfg, (toy.stop_id,)),
        rng=jax.random.PRNGKey(0), scorer=toy.preferred_share))
  a, b = outs
  np.testing.assert_array_equal(a.response_BxN, b.response_BxN)
  np.testing.assert_array_equal(a.lengths_B, b.lengths_B)
  np.testing.assert_array_equal(a.score_B, b.score_B)
  # The same response targets, shifted by the extra padding.
  np.testing.assert_array_equal(a.rows["targets"][a.rows["loss_mask"] > 0],
                                b.rows["targets"][b.rows["loss_mask"] > 0])
  with pytest.raises(ValueError, match="exceed prompt_len"):
    rollout_lib.collect(records, codec=toy.codec(),
                        cfg=rollout_lib.RolloutConfig(prompt_len=4),
                        sample=None, rng=jax.random.PRNGKey(0))


def _loop_gae(rewards, values, mask, gamma, lam):
  """Textbook GAE over each row's response positions (float64)."""
  adv = np.zeros_like(rewards, np.float64)
  for b in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[b] > 0)
    next_v = next_a = 0.0
    for t in idx[::-1]:
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      next_a = delta + gamma * lam * next_a
      next_v = values[b, t]
      adv[b, t] = next_a
  return adv, (adv + values) * mask


def test_ppo_advantages_from_a_rollout_match_gae(learner_and_rollout):
  *_, sampled = learner_and_rollout
  rng = np.random.default_rng(0)
  mask = sampled.rows["loss_mask"]
  b, t = mask.shape
  rollout = dataclasses.replace(
      sampled, score_B=rng.normal(size=b).astype(np.float32),
      values=rng.normal(size=(b, t)).astype(np.float32))
  beta, gamma, lam = 0.1, 0.9, 0.8
  algo = ppo.PPO(ppo.PPOConfig(kl_coef=beta, gamma=gamma, lam=lam,
                               whiten_advantages=False))
  adv, ret, metrics = algo.advantages(rollout)

  # Hand-made rewards: the KL penalty on every response token, the score
  # on the last one.
  rewards = -beta * (rollout.old_logp - rollout.ref_logp) * mask
  for i in range(b):
    rewards[i, np.flatnonzero(mask[i])[-1]] += rollout.score_B[i]
  want_adv, want_ret = _loop_gae(rewards.astype(np.float64),
                                 rollout.values.astype(np.float64), mask,
                                 gamma, lam)
  np.testing.assert_allclose(adv, want_adv, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, atol=1e-5)
  ref_adv, ref_ret = ppo_loss.gae(jnp.asarray(rewards), rollout.values, mask,
                                  gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, atol=1e-6)
  np.testing.assert_allclose(ret, ref_ret, atol=1e-6)
  kl = ((rollout.old_logp - rollout.ref_logp) * mask).sum(1).mean()
  assert metrics["kl"] == pytest.approx(kl, abs=1e-5)
  assert metrics["kl_coef"] == pytest.approx(beta)

  white = ppo.PPO(ppo.PPOConfig(kl_coef=beta, gamma=gamma, lam=lam))
  adv_w, ret_w, _ = white.advantages(rollout)
  on = mask > 0
  assert abs(adv_w[on].mean()) < 1e-5 and adv_w[on].std() == pytest.approx(
      1.0, abs=0.05)
  np.testing.assert_allclose(ret_w, ret, atol=1e-6)  # returns unwhitened
  batch, _ = white.prepare(rollout)
  assert set(batch) == set(white.example_minibatch(8, t))


def test_judge_config_by_name_or_instance():
  from lifejax.world import judge as judge_lib
  assert rollout_lib.judge_config("default") is judge_lib.DEFAULT
  custom = judge_lib.JudgeConfig(length=0.0, length_bonus_per_word=0.05)
  assert rollout_lib.judge_config(custom) is custom
  with pytest.raises(KeyError, match="unknown judge 'nope'"):
    rollout_lib.judge_config("nope")


def test_rollouts_sampled_on_all_devices_equal_one_device(toy, monkeypatch):
  """RolloutConfig.sampling_devices=-1: the policy's params replicated on
  the 8 devices, the prompts split over them; the rollout (tokens, the
  sampler's log-probs, the learner's stats) is the one-device rollout."""
  _, policy = toy.random_lm(seed=0)
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6)
  records = toy.prompt_records(8)  # 16 rows, 2 per device
  spread_calls = []
  run = generation.Placement.run

  def counted(self, fn, *rows):
    spread_calls.append((len(self.devices), rows[0].shape))
    return run(self, fn, *rows)

  monkeypatch.setattr(generation.Placement, "run", counted)
  out = []
  for devices in (1, -1):
    learner = toy.build_forwards(ppo.PPO(ppo.PPOConfig()), "separate",
                                 lm_params=policy, sampling_devices=devices)
    out.append(rollout_lib.collect(
        records, codec=toy.codec(), cfg=cfg, group_size=2,
        sample=learner.sampler(cfg.sampling_config((), 0)),
        rng=jax.random.PRNGKey(7), stats=learner.stats,
        ref_logp=learner.ref_logp, scorer=toy.preferred_share))
  one, spread = out
  assert spread_calls == [(8, (16, 8))]  # one sampler call, on 8 devices
  np.testing.assert_array_equal(spread.response_BxN, one.response_BxN)
  np.testing.assert_array_equal(spread.lengths_B, one.lengths_B)
  np.testing.assert_allclose(spread.sample_logp, one.sample_logp, atol=1e-5)
  np.testing.assert_array_equal(spread.score_B, one.score_B)
  np.testing.assert_allclose(spread.old_logp, one.old_logp, atol=1e-5)
