"""RL trains on the one engine, so the engine's features hold in RL runs:
dynamic loss scaling, keep-best and early stopping on a dev reward, and
per-process minibatch rows. (LoRA: test_rl_lora.py; resume:
test_rl_ppo.py and tests/goldens.)"""

import json
import os

import jax
import numpy as np
import pytest

from lifejax.eval import generation
from lifejax.rl import grpo, iteration, ppo
from lifejax.run.layout import RunDir
from lifejax.train.state import LossScaleConfig


def _rows(run_dir):
  return [json.loads(l) for l in open(RunDir(run_dir).metrics)]


def test_loss_scaling_in_an_rl_run_is_exact_and_traced(toy, tmp_path):
  """Power-of-two scaling is exact in f32: the scaled GRPO run ends with
  the very same params as the plain one, while the logged scale doubles
  every `growth_interval` finite steps."""
  algo = lambda: grpo.GRPO(grpo.GRPOConfig(group_size=4))  # noqa: E731
  _, plain = toy.run_toy(tmp_path / "plain", algo(), "policy", iterations=2,
                         prompts=4, epochs=2)
  scale = LossScaleConfig(initial_scale=2.0 ** 10, growth_interval=2)
  _, scaled = toy.run_toy(tmp_path / "scaled", algo(), "policy",
                          iterations=2, prompts=4, epochs=2,
                          loss_scale=scale)
  for a, b in zip(jax.tree.leaves(jax.device_get(plain.policy_params())),
                  jax.tree.leaves(jax.device_get(scaled.policy_params()))):
    np.testing.assert_array_equal(a, b)
  rows = _rows(tmp_path / "scaled")
  per_iter = rows[0]["step"]  # 16 rows x 2 epochs / minibatch 8 = 4 steps
  assert per_iter == 4
  # Each row is the mean over its 4 steps: scales 2^10, 2^10, 2^11, 2^11,
  # then 2^12, 2^12, 2^13, 2^13; nothing skipped.
  assert [r["loss_scale"] for r in rows] == [1.5 * 2 ** 10, 1.5 * 2 ** 12]
  assert all(r["skipped"] == 0.0 for r in rows)
  assert int(jax.device_get(scaled.state["loss_scale"]["scale"])) == 2 ** 14
  assert "loss_scale" not in _rows(tmp_path / "plain")[0]


def test_keep_best_and_early_stopping_on_the_dev_reward(toy, tmp_path):
  """With a zero learning rate the dev reward never improves after the
  first eval: patience 1 stops the run at the second eval (of five
  iterations), and best/ keeps one checkpoint of the best reward."""
  run_dir = tmp_path / "stop"
  summary, run = toy.run_toy(
      run_dir, ppo.PPO(ppo.PPOConfig()), "separate", iterations=5, lr=0.0,
      eval_records=toy.prompt_records(6, seed=9), eval_every=1,
      early_stop_patience=1)
  rows = _rows(run_dir)
  per_iter = [r for r in rows if "iteration" in r][0]["step"]
  evals = [r for r in rows if "eval/reward" in r]
  assert [r["step"] for r in evals] == [per_iter, 2 * per_iter]
  assert evals[0]["eval/reward"] == evals[1]["eval/reward"]
  # The dev reward is the mean toy score of greedy answers on those prompts.
  assert 0.0 <= evals[0]["eval/reward"] <= 1.0
  assert summary["stopped_early"] and summary["final_step"] == 2 * per_iter
  assert summary["final_iteration"] == 2
  assert summary["best_step"] in (per_iter, 2 * per_iter)
  assert sorted(int(s) for s in os.listdir(RunDir(run_dir).best)
                if s.isdigit()) == [summary["best_step"]]


def test_dev_reward_options_need_dev_prompts(toy, tmp_path):
  with pytest.raises(ValueError, match="eval_every"):
    toy.run_toy(tmp_path, grpo.GRPO(grpo.GRPOConfig(group_size=4)), "policy",
                iterations=1, prompts=4, eval_every=1)


def test_each_process_takes_its_contiguous_rows_of_every_minibatch(toy):
  """Every process builds the same rollout; process i feeds rows
  [i*m/n, (i+1)*m/n) of each minibatch, which the engine assembles into
  exactly the single-process global minibatch."""
  import types
  fwd = toy.build_forwards(None, "policy")
  forwards = types.SimpleNamespace(
      sampler=lambda params, cfg: fwd.sampler(cfg),
      stats=lambda params, rows: fwd.stats(rows), ref_logp=fwd.ref_logp)
  loop = iteration.RLLoopConfig(num_iterations=1, prompts_per_iteration=4,
                                epochs=2, minibatch_size=8)
  from lifejax.rl import rollout as rollout_lib
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6)

  def batches(shard):
    src = iteration.RolloutSource(
        forwards=forwards, algorithm=grpo.GRPO(grpo.GRPOConfig(group_size=4)),
        prompts=iteration.PromptBatches(toy.prompt_records(8), 4),
        codec=toy.codec(), scorer=toy.preferred_share, rollout_cfg=cfg,
        loop_cfg=loop, shard=shard, trained_params=lambda state: None)
    return [src.next_batch(None) for _ in range(src.steps_per_iteration)]

  whole = batches((0, 1))
  halves = [batches((i, 2)) for i in range(2)]
  assert len(whole) == 4
  for step, full in enumerate(whole):
    for k, v in full.items():
      assert v.shape[0] == 8
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][k], halves[1][step][k]]), v)
  with pytest.raises(ValueError, match="minibatch_size=8"):
    iteration.RolloutSource(
        forwards=forwards, algorithm=grpo.GRPO(grpo.GRPOConfig(group_size=4)),
        prompts=iteration.PromptBatches(toy.prompt_records(8), 4),
        codec=toy.codec(), scorer=toy.preferred_share, rollout_cfg=cfg,
        loop_cfg=loop, shard=(0, 3))


def test_rollout_sampling_devices_reach_the_sampler(toy, tmp_path,
                                                    monkeypatch):
  """RolloutConfig.sampling_devices=-1 in an RL run: every rollout is
  sampled in one call over the 8 devices, and the run ends with the
  params of the run sampled on one device (the same draws)."""
  calls = []
  run = generation.Placement.run

  def counted(self, fn, *rows):
    calls.append((len(self.devices), rows[0].shape[0]))
    return run(self, fn, *rows)

  monkeypatch.setattr(generation.Placement, "run", counted)
  algo = lambda: grpo.GRPO(grpo.GRPOConfig(group_size=4))  # noqa: E731
  _, one = toy.run_toy(tmp_path / "one", algo(), "policy", iterations=2,
                       prompts=4, epochs=1)
  assert calls == []
  _, spread = toy.run_toy(tmp_path / "spread", algo(), "policy",
                          iterations=2, prompts=4, epochs=1,
                          sampling_devices=-1)
  assert calls == [(8, 16), (8, 16)], calls  # 4 prompts x group 4, twice
  for a, b in zip(jax.tree.leaves(jax.device_get(one.policy_params())),
                  jax.tree.leaves(jax.device_get(spread.policy_params()))):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
