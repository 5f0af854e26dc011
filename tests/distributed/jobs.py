"""The tiny lifecycle the multi-process tests run: pretrain -> SFT -> reward
-> DPO -> PPO -> GRPO on the golden data (tests/goldens/data), on an
8-device mesh, recording every train step's loss.

`run_chain` runs it in this process (the single-process 8-device
reference, or one process of a `lifejax.launch` job via driver.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax

from lifejax import sharding
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import LifecycleRoot
from lifejax.train import step as step_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "goldens", "data")
STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")

MODEL = TransformerConfig(vocab_size=512, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)
# Params sharded over all 8 devices (fsdp), so every step all-gathers
# params and reduce-scatters gradients across the processes.
MESH = sharding.MeshConfig(data=1, fsdp=-1, model=1)
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, total_steps=6,
                      weight_decay=0.01)


def data(name: str) -> str:
  return os.path.join(DATA, name)


def stage_calls(root: str) -> list[tuple[str, object, dict]]:
  """(name, stage function, kwargs) in dependency order."""
  from lifejax import stages
  from lifejax.rl import iteration as iteration_lib, rollout as rollout_lib
  from lifejax.stages import rl as rl_stages

  def loop(steps: int, **kw) -> LoopConfig:
    return LoopConfig(num_steps=steps, log_every=1, progress=False,
                      tensorboard=False, **kw)

  ckpt = CheckpointConfig(every_steps=2, keep_last=2)
  rl_loop = iteration_lib.RLLoopConfig(
      num_iterations=2, prompts_per_iteration=8, epochs=1, minibatch_size=8,
      samples_every=0, checkpoint_every=1, tensorboard=False, progress=False)
  rollout = rollout_lib.RolloutConfig(prompt_len=96, max_new_tokens=4)
  rl_opt = OptimizerConfig(learning_rate=1e-3, schedule="constant",
                           warmup_steps=0, weight_decay=0.0)
  run = lambda name: LifecycleRoot(root).stage(name).root  # noqa: E731
  prefs = dict(model=MODEL, init_from=run("sft"),
               train_files=[data("pref_train.jsonl")],
               eval_file=data("pref_eval.jsonl"), mesh=MESH, optimizer=OPT,
               loop=loop(3), checkpoint=ckpt, batch_size=8, seq_len=128)
  return [
      ("pretrain", stages.pretrain, dict(
          model=MODEL, train_files=[data("corpus.jsonl")], mesh=MESH,
          optimizer=OPT, loop=loop(6, eval_every=3, eval_batches=1),
          checkpoint=ckpt, batch_size=8, seq_len=64, eval_holdout=0.1)),
      ("sft", stages.sft, dict(
          model=MODEL, init_from=run("pretrain"),
          train_files=[data("sft_train.jsonl")], skip_bad=True, mesh=MESH,
          optimizer=OPT, loop=loop(3), checkpoint=ckpt, batch_size=8,
          seq_len=128, eval_generation_records=0)),
      ("reward", stages.reward, prefs),
      ("dpo", stages.dpo, dict(prefs, loss="dpo",
                               loss_hparams={"beta": 0.1})),
      ("ppo", rl_stages.ppo, dict(
          sft_run=run("sft"), prompt_files=[data("prompts.jsonl")],
          reward="reward_model", reward_run=run("reward"),
          value_model="separate", loop=rl_loop, rollout=rollout,
          optimizer=rl_opt, mesh=MESH, checkpoint=CheckpointConfig())),
      ("grpo", rl_stages.grpo, dict(
          sft_run=run("sft"), prompt_files=[data("prompts.jsonl")],
          reward="reward_model", reward_run=run("reward"),
          loop=dataclasses.replace(rl_loop, prompts_per_iteration=2),
          rollout=rollout, optimizer=rl_opt, mesh=MESH,
          checkpoint=CheckpointConfig())),
  ]


class StepRecorder:
  """Records the loss of every call of every jitted train step built
  while active."""

  def __init__(self):
    self.losses: list = []
    self._orig = step_lib.jit_train_step

  def __enter__(self):
    orig = self._orig

    def wrapped(*args, **kwargs):
      run = orig(*args, **kwargs)

      def recording(state, batch):
        state, metrics = run(state, batch)
        self.losses.append(metrics["loss"])
        return state, metrics

      recording.jitted = run.jitted
      return recording

    step_lib.jit_train_step = wrapped
    return self

  def __exit__(self, *exc):
    step_lib.jit_train_step = self._orig

  def values(self) -> list[float]:
    return [float(v) for v in sharding.fetch(self.losses)]


# The PRNG of these runs (reference and jobs alike): on CPU, threefry makes
# a fresh model's init program compile about 3x slower, and which PRNG
# draws the weights is not what the multi-process tests compare.
PRNG = "unsafe_rbg"


def run_chain(root: str, names: Sequence[str]) -> dict[str, list[float]]:
  """Runs the named stages (in STAGES order) into root/<stage> with the
  PRNG `PRNG`; returns each stage's per-step losses."""
  before = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", PRNG)
  out = {}
  try:
    for name, fn, kwargs in stage_calls(root):
      if name in names:
        with StepRecorder() as rec:
          fn(run_dir=LifecycleRoot(root).stage(name).root, **kwargs)
        out[name] = rec.values()
  finally:
    jax.config.update("jax_default_prng_impl", before)
  return out


def losses_file(root: str, process: int) -> str:
  return os.path.join(root, f"losses.p{process}.json")


def write_losses(root: str, losses: dict[str, list[float]]) -> None:
  with open(losses_file(root, jax.process_index()), "w",
            encoding="utf-8") as f:
    json.dump(losses, f)
