"""Golden runs: tiny pretrain -> SFT -> reward -> DPO / PPO / GRPO on fixed
data, each also killed after its first checkpoint and resumed.

The data under `data/` is a frozen slice of a scale-0.2 world (seed 0),
committed so that later changes to the world generator do not move these
numbers. Every stage reads only those files; PPO and GRPO are rewarded by
the golden reward-model run, never by the world's judge.

`golden_runs` returns, per stage, the per-train-step losses of the
uninterrupted run, the losses the resumed run computed after its restart,
and (for the supervised stages) the eval rows of metrics.jsonl. Per-step
losses are read from every call of the one jitted train step
(`train.step.jit_train_step`), so RL minibatch steps are covered too.

`losses.json` holds one record per host kind (hosts.py says why floats are
bitwise only per CPU kind). Replace every record with this host's, after an
intended behaviour change (only in a commit of its own that says why):
  LIFEJAX_REGEN_GOLDENS=1 python -m pytest tests/goldens/test_goldens.py
Add this host's record next to the others, refused unless its runs agree
with every record within the cross-host tolerance:
  LIFEJAX_ADD_GOLDEN_HOST=1 python -m pytest tests/goldens/test_goldens.py
"""

from __future__ import annotations

import os
import shutil

import jax
import pytest

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.train import step as step_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
GOLDEN = os.path.join(HERE, "losses.json")

MODEL = TransformerConfig(vocab_size=512, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)
MESH = sharding.MeshConfig(data=1, fsdp=1, model=1)
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=2, total_steps=6,
                      weight_decay=0.01)


def data(name: str) -> str:
  return os.path.join(DATA, name)


class StepRecorder:
  """Wraps every jitted train step built while active; records its loss."""

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
    return [float(v) for v in jax.device_get(self.losses)]


def kill_after_first_checkpoint(run_dir: str, copy_to: str) -> int:
  """Makes `copy_to` a copy of `run_dir` as a crash right after its first
  checkpoint would have left it: later checkpoints, the summary, the
  exported policy and later metric rows are gone. Returns that step."""
  shutil.copytree(run_dir, copy_to)
  run = RunDir(copy_to)
  keep_step = run.checkpoint_steps()[0]
  for best in (False, True):
    for s in run.checkpoint_steps(best):
      if s > keep_step:
        shutil.rmtree(os.path.join(run.checkpoint_dir(best), str(s)))
  for path in (run.summary, run.eval):
    if os.path.exists(path):
      os.remove(path)
  if os.path.isdir(run.policy.root):
    shutil.rmtree(run.policy.root)
  write_jsonl(run.metrics, [r for r in read_jsonl(run.metrics)
                            if r["step"] <= keep_step])
  return keep_step


def eval_rows(run_dir: str) -> dict[str, dict[str, float]]:
  out = {}
  for r in read_jsonl(RunDir(run_dir).metrics):
    ev = {k: v for k, v in r.items() if k.startswith("eval/")}
    if ev:
      out[str(r["step"])] = ev
  return out


def _loop(steps: int, **kw) -> LoopConfig:
  return LoopConfig(num_steps=steps, log_every=1, progress=False, **kw)


def _stage_calls(root: str) -> list[tuple[str, object, dict]]:
  """(name, stage function, kwargs) in dependency order."""
  from lifejax import stages
  from lifejax.rl import iteration as iteration_lib, rollout as rollout_lib
  from lifejax.stages import rl as rl_stages

  ckpt = CheckpointConfig(every_steps=3, keep_last=2, async_save=False)
  rl_loop = iteration_lib.RLLoopConfig(
      num_iterations=2, prompts_per_iteration=4, epochs=2, minibatch_size=4,
      samples_every=0, checkpoint_every=1, tensorboard=False, progress=False)
  rollout = rollout_lib.RolloutConfig(prompt_len=96, max_new_tokens=8)
  # RL checkpoints every RLLoopConfig.checkpoint_every iterations.
  rl_ckpt = CheckpointConfig(keep_last=2, async_save=False)
  rl_opt = OptimizerConfig(learning_rate=1e-3, schedule="constant",
                           warmup_steps=0, weight_decay=0.0)
  run = lambda name: LifecycleRoot(root).stage(name).root  # noqa: E731
  return [
      ("pretrain", stages.pretrain, dict(
          model=MODEL, train_files=[data("corpus.jsonl")], mesh=MESH,
          optimizer=OPT, loop=_loop(6, eval_every=3, eval_batches=2),
          checkpoint=ckpt, batch_size=4, seq_len=64, eval_holdout=0.1)),
      ("sft", stages.sft, dict(
          model=MODEL, init_from=run("pretrain"),
          train_files=[data("sft_train.jsonl")],
          eval_files=[data("sft_eval.jsonl")], skip_bad=True, mesh=MESH,
          optimizer=OPT,
          loop=_loop(6, eval_every=3, eval_batches=1,
                     early_stop_metric="eval/sft_sft_eval/loss"),
          checkpoint=CheckpointConfig(
              every_steps=3, async_save=False,
              best_metric="eval/sft_sft_eval/loss"),
          batch_size=4, seq_len=256, eval_generation_records=0)),
      ("reward", stages.reward, dict(
          model=MODEL, init_from=run("sft"),
          train_files=[data("pref_train.jsonl")],
          eval_file=data("pref_eval.jsonl"), mesh=MESH, optimizer=OPT,
          loop=_loop(6, eval_every=3), checkpoint=ckpt, batch_size=4,
          seq_len=256)),
      ("dpo", stages.dpo, dict(
          model=MODEL, init_from=run("sft"),
          train_files=[data("pref_train.jsonl")],
          eval_file=data("pref_eval.jsonl"), loss="dpo",
          loss_hparams={"beta": 0.1}, mesh=MESH, optimizer=OPT,
          loop=_loop(6, eval_every=3), checkpoint=ckpt, batch_size=4,
          seq_len=256)),
      ("ppo", rl_stages.ppo, dict(
          sft_run=run("sft"), prompt_files=[data("prompts.jsonl")],
          reward="reward_model", reward_run=run("reward"),
          value_model="separate", loop=rl_loop, rollout=rollout,
          optimizer=rl_opt, mesh=MESH, checkpoint=rl_ckpt, seed=0)),
      ("grpo", rl_stages.grpo, dict(
          sft_run=run("sft"), prompt_files=[data("prompts.jsonl")],
          reward="reward_model", reward_run=run("reward"),
          loop=rl_loop, rollout=rollout, optimizer=rl_opt, mesh=MESH,
          checkpoint=rl_ckpt, seed=0)),
  ]


@pytest.fixture(scope="session")
def golden_root(tmp_path_factory) -> str:
  """Where `golden_runs` writes its run directories (one per stage)."""
  return str(tmp_path_factory.mktemp("golden_runs"))


@pytest.fixture(scope="session")
def golden_runs(golden_root) -> dict[str, dict]:
  root = golden_root
  out: dict[str, dict] = {}
  for name, fn, kwargs in _stage_calls(root):
    run_dir = os.path.join(root, name)
    with StepRecorder() as rec:
      fn(run_dir=run_dir, **kwargs)
    entry = {"losses": rec.values()}
    if name not in ("ppo", "grpo"):
      entry["eval"] = eval_rows(run_dir)
    resumed = os.path.join(root, f"{name}_resumed")
    keep = kill_after_first_checkpoint(run_dir, resumed)
    with StepRecorder() as rec:
      fn(run_dir=resumed, **kwargs)
    entry["resumed_from"] = keep
    entry["resumed_losses"] = rec.values()
    out[name] = entry
  return out
