"""Continued pretraining starts from an earlier run's params and tokenizer."""

import json

import pytest

from lifejax import sharding, stages
from lifejax.model.config import TransformerConfig
from lifejax.run.lineage import read_lineage
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
  lineage = read_lineage(str(tmp_path / "cpt"))
  assert lineage.stage == "cpt"
  assert lineage.init_from == str(tmp_path / "base")
  assert lineage.tokenizer.path == str(tmp_path / "base" / "tokenizer.model")
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


def test_cpt_tracks_the_general_panel_and_warns_on_forgetting(tmp_path):
  general = "the quick brown fox jumps over a lazy dog again".split()
  domain = "invoice ledger audit refund stock order vendor tax".split()
  gen_file = _corpus(tmp_path / "general.jsonl", general)
  holdout = _corpus(tmp_path / "general_holdout.jsonl", general, n=40)
  dom_file = _corpus(tmp_path / "domain.jsonl", domain)
  _run(tmp_path / "base", gen_file, 60)
  summary = stages.pretrain(
      run_dir=str(tmp_path / "cpt"), model=MODEL, train_files=[dom_file],
      mesh=sharding.MeshConfig(data=1, fsdp=-1, model=1),
      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2,
                                total_steps=20),
      loop=LoopConfig(num_steps=20, log_every=5, eval_every=10,
                      eval_batches=2, eval_at_start=True, progress=False),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=8, seq_len=32,
      eval_holdout=0.1, init_from=str(tmp_path / "base"), stage_name="cpt",
      general_eval_files=[holdout], forgetting_margin=0.1)
  rows = [json.loads(l) for l in open(tmp_path / "cpt" / "metrics.jsonl")]
  evals = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in evals] == [0, 10, 20]
  ppl = "eval/general_general_holdout/perplexity"
  # Domain loss falls, the frozen general holdout gets worse: the panel warns.
  assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
  assert evals[-1][ppl] > 1.1 * evals[0][ppl]
  assert evals[0]["eval/forgetting_warning"] == 0.0
  assert evals[-1]["eval/forgetting_warning"] == 1.0
  assert summary["forgetting_warnings"]
  lineage = read_lineage(str(tmp_path / "cpt"))
  assert list(lineage.inputs["general_eval_files"]) == [holdout]
