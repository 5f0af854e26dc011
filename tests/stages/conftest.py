"""Shared tiny runs for stage tests: a world, a base LM and an SFT run."""

import pytest

from lifejax import sharding, stages
from lifejax.eval.instruct import GenerationSpec
from lifejax.model.config import TransformerConfig
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.world import generator

TINY = TransformerConfig(vocab_size=640, d_model=32, num_layers=2,
                         num_heads=4, num_kv_heads=2, mlp_dim=64)
MESH1 = sharding.MeshConfig(data=1, fsdp=1, model=1)


def loop(steps, **kw):
  return LoopConfig(num_steps=steps, log_every=1, progress=False, **kw)


def opt(steps, lr=1e-3):
  return OptimizerConfig(learning_rate=lr, warmup_steps=1, total_steps=steps,
                         weight_decay=0.0)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
  """(root, world) with root/base (pretrained) and root/sft runs."""
  root = tmp_path_factory.mktemp("stage_runs")
  world = root / "world"
  generator.generate_world(str(world), seed=0, scale=0.2)
  stages.pretrain(
      run_dir=str(root / "base"), model=TINY,
      train_files=[str(world / "corpus" / "wiki.jsonl")], mesh=MESH1,
      optimizer=opt(4, 3e-3), loop=loop(4),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4, seq_len=64,
      eval_holdout=0.1)
  stages.sft(
      run_dir=str(root / "sft"), model=TINY, init_from=str(root / "base"),
      train_files=[str(world / "instructions" / "train.jsonl")],
      eval_files=[str(world / "instructions" / "validation.jsonl")],
      skip_bad=True, mesh=MESH1, optimizer=opt(3), loop=loop(3, eval_every=3,
                                                          eval_batches=1,
                                                          early_stop_metric=
                                                          "eval/sft_validation/loss"),
      checkpoint=CheckpointConfig(every_steps=100,
                                  best_metric="eval/sft_validation/loss"),
      batch_size=4, seq_len=384, eval_generation_records=2,
      generation=GenerationSpec(prompt_len=320, max_new_tokens=2,
                                batch_size=2))
  return root, world


@pytest.fixture(scope="session")
def kit():
  """The tiny model, mesh and config helpers, for test modules."""
  import types
  return types.SimpleNamespace(TINY=TINY, MESH1=MESH1, loop=loop, opt=opt)
