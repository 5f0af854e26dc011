"""A tiny pretraining run of a mixture of experts: the loss falls and the
metrics log the aux losses and the dropped fraction."""

import json

import numpy as np

from lifejax import sharding, stages
from lifejax.model.config import TransformerConfig
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig


def test_tiny_pretrain_with_moe_trains_and_logs_aux(tmp_path):
  rng = np.random.default_rng(0)
  # Cyclic sequences of made-up words: easy to learn, so the loss falls.
  syl = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze"]
  words = ["".join(rng.choice(syl, 3)) for _ in range(40)]
  docs = [" ".join(words[(i + j) % 40]
                   for j in range(int(rng.integers(20, 60))))
          for i in range(120)]
  train = tmp_path / "train.jsonl"
  train.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  cfg = TransformerConfig(vocab_size=320, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=32,
                          num_experts=4, experts_per_token=2,
                          expert_capacity_factor=1.0, moe_aux_loss_coef=0.01,
                          moe_z_loss_coef=0.001)
  run = tmp_path / "run"
  steps = 8
  stages.pretrain(
      run_dir=str(run), model=cfg, train_files=[str(train)],
      mesh=sharding.MeshConfig(data=1, fsdp=1, model=1),
      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1,
                                total_steps=steps, weight_decay=0.0),
      loop=LoopConfig(num_steps=steps, log_every=1, progress=False),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4, seq_len=32,
      eval_holdout=0.05)
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text()
          .splitlines()]
  train_rows = [r for r in rows if "moe_aux_loss" in r]
  assert len(train_rows) == steps
  for r in train_rows:
    assert 0.0 <= r["moe_dropped_fraction"] < 1.0
    assert r["moe_aux_loss"] >= 1.0 and r["moe_z_loss"] > 0.0
  # The eval loss leaves the aux losses out (it is the cross-entropy,
  # perplexity = exp(loss)) but logs their values.
  evals = [r for r in rows if "eval/loss" in r]
  assert evals and "eval/moe_aux_loss" in evals[-1]
  assert evals[-1]["eval/loss"] == evals[-1]["eval/cross_entropy"]
  losses = [r["loss"] for r in train_rows]
  assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.5, losses
