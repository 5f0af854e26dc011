"""Continued pretraining starts from an earlier run's params and tokenizer."""

import json

import pytest

from lifejax import sharding, stages
from lifejax.model.config import TransformerConfig
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

MODEL = TransformerConfig(vocab_size=320, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)


def _corpus(path, words, n=240):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"text": " ".join(
          words[(i + j) % len(words)] for j in range(10)) + "."}) + "\n")
  return str(path)


def _run(run_dir, files, steps, **kw):
  return stages.pretrain(
      run_dir=str(run_dir), model=MODEL, train_files=[files],
      mesh=sharding.MeshConfig(data=1, fsdp=-1, model=1),
      optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=2,
                                total_steps=steps),
      loop=LoopConfig(num_steps=steps, log_every=1, eval_every=0,
                      progress=False),
      checkpoint=CheckpointConfig(every_steps=100),
      batch_size=8, seq_len=32, eval_holdout=0.1, **kw)


def _losses(run_dir):
  rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
  return [r["loss"] for r in rows if "loss" in r]


def test_cpt_starts_from_the_base_run(tmp_path):
  words = "the quick brown fox jumps over a lazy dog again".split()
  corpus = _corpus(tmp_path / "c.jsonl", words)
  _run(tmp_path / "base", corpus, 30)
  base = _losses(tmp_path / "base")
  assert base[-1] < base[0] - 1.0
  _run(tmp_path / "cpt", corpus, 3, init_from=str(tmp_path / "base"),
       stage_name="cpt")
  cpt = _losses(tmp_path / "cpt")
  # Starts where the base run ended, far below a fresh model's loss.
  assert cpt[0] < base[0] - 1.0
  assert cpt[0] == pytest.approx(base[-1], abs=0.5)
  lineage = json.load(open(tmp_path / "cpt" / "lineage.json"))
  assert lineage["init_from"].endswith("base")
  assert lineage["tokenizer"]["path"].endswith("base/tokenizer.model")
  assert not (tmp_path / "cpt" / "tokenizer.model").exists()


def test_cpt_rejects_a_different_shape(tmp_path):
  corpus = _corpus(tmp_path / "c.jsonl", "a b c d e f g h".split())
  _run(tmp_path / "base", corpus, 2)
  global MODEL
  saved = MODEL
  try:
    MODEL = TransformerConfig(vocab_size=320, d_model=32, num_layers=3,
                              num_heads=4, num_kv_heads=2, mlp_dim=64)
    with pytest.raises(ValueError, match="num_layers"):
      _run(tmp_path / "cpt", corpus, 2, init_from=str(tmp_path / "base"))
  finally:
    MODEL = saved
