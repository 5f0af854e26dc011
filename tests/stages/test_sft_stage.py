"""SFT stage: data mixing, resume, the forgetting panel, and the run layout."""

import json
import os

import numpy as np
import pytest

from lifejax import sharding, stages
from lifejax.data import chat
from lifejax.eval.forgetting import ForgettingPanel
from lifejax.eval.instruct import GenerationSpec
from lifejax.model.config import TransformerConfig
from lifejax.data.mixture import MixedIterator
from lifejax.run import artifacts
from lifejax.run.lineage import read_lineage
from lifejax.stages.sft import sft
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.world import generator

MODEL = TransformerConfig(vocab_size=640, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)
MESH = sharding.MeshConfig(data=1, fsdp=1, model=1)


class _Counter:

  def __init__(self, tag):
    self.tag, self.i = tag, 0

  def __next__(self):
    self.i += 1
    return (self.tag, self.i)

  def get_state(self):
    return {"i": self.i}

  def set_state(self, s):
    self.i = s["i"]


def test_mixed_iterator_share_and_resume():
  it = MixedIterator(_Counter("sft"), _Counter("gen"), 0.25, seed=3)
  first = [next(it) for _ in range(400)]
  share = np.mean([t == "gen" for t, _ in first])
  assert abs(share - 0.25) < 0.06
  state = json.loads(json.dumps(it.get_state()))
  cont = [next(it) for _ in range(50)]
  it2 = MixedIterator(_Counter("sft"), _Counter("gen"), 0.25, seed=3)
  it2.set_state(state)
  assert [next(it2) for _ in range(50)] == cont
  with pytest.raises(ValueError, match="general_files"):
    MixedIterator(_Counter("sft"), None, 0.1, seed=0)


def test_forgetting_panel_warns_only_on_forgetting():
  def m(ppl, acc):
    return {"eval/general_holdout/perplexity": ppl,
            "eval/instruct/accuracy": acc}
  panel = ForgettingPanel(margin=0.1)
  assert panel(0, m(20.0, 0.1))["eval/forgetting_warning"] == 0.0
  assert panel(10, m(21.0, 0.5))["eval/forgetting_warning"] == 0.0  # +5%
  out = panel(20, m(25.0, 0.6))  # +25% while accuracy rose
  assert out["eval/forgetting_warning"] == 1.0
  assert out["eval/general_ppl_rise"] == pytest.approx(0.25)
  assert len(panel.warnings) == 1 and "forgetting" in panel.warnings[0]
  panel2 = ForgettingPanel(margin=0.1)
  panel2(0, m(20.0, 0.5))
  # Worse general quality but no task gain: not the forgetting trade-off.
  assert panel2(10, m(30.0, 0.4))["eval/forgetting_warning"] == 0.0


@pytest.fixture(scope="module")
def world_and_base(tmp_path_factory):
  root = tmp_path_factory.mktemp("sft")
  world = root / "world"
  generator.generate_world(str(world), seed=0, scale=0.2)
  stages.pretrain(
      run_dir=str(root / "base"), model=MODEL,
      train_files=[str(world / "corpus" / "wiki.jsonl")], mesh=MESH,
      optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=1,
                                total_steps=4),
      loop=LoopConfig(num_steps=4, log_every=1, eval_every=0, progress=False),
      checkpoint=CheckpointConfig(every_steps=100),
      batch_size=4, seq_len=64, eval_holdout=0.1)
  return root, world


def _sft(root, world, run, steps, extend=False, **kw):
  return sft(
      run_dir=str(root / run), model=MODEL, init_from=str(root / "base"),
      train_files=[str(world / "instructions" / "train.jsonl")],
      eval_files=[str(world / "instructions" / "validation.jsonl")],
      general_files=[str(world / "corpus" / "wiki.jsonl")],
      general_eval_files=[str(world / "eval" / "general_holdout.jsonl")],
      general_share=0.3, skip_bad=True, mesh=MESH,
      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1,
                                total_steps=6),
      loop=LoopConfig(num_steps=steps, log_every=1, eval_every=3,
                      eval_batches=2, progress=False, eval_at_start=True,
                      early_stop_metric="eval/sft_validation/loss",
                      extend=extend),
      checkpoint=CheckpointConfig(every_steps=3,
                                  best_metric="eval/sft_validation/loss"),
      batch_size=4, seq_len=384, eval_generation_records=4,
      generation=GenerationSpec(prompt_len=320, max_new_tokens=4,
                                batch_size=4), **kw)


def _losses(path):
  rows = {}
  for line in open(path):
    r = json.loads(line)
    if "loss" in r:
      rows[r["step"]] = r["loss"]
  return rows


def test_sft_run_layout_and_resume(world_and_base):
  root, world = world_and_base
  full = _sft(root, world, "full", 6)
  run = root / "full"
  assert artifacts.load_template(str(run)) == chat.get_template("lifejax")
  lineage = read_lineage(str(run))
  assert lineage.chat_template["name"] == "lifejax"
  assert lineage.init_from == str(root / "base")
  ev = full["eval"]
  for key in ("eval/sft_validation/loss", "eval/instruct/accuracy",
              "eval/general_general_holdout/perplexity",
              "eval/forgetting_warning"):
    assert key in ev, key
  samples = sorted(os.listdir(run / "samples"))
  assert samples == ["step_000000.jsonl", "step_000003.jsonl",
                     "step_000006.jsonl"]
  first = json.loads(open(run / "samples" / samples[0]).readline())
  assert first["prompt"][-1]["role"] == "user"
  # Base (step 0) vs final SFT on the same prompts, each judged.
  side = open(run / "side_by_side.md", encoding="utf-8").read()
  last = [json.loads(l) for l in open(run / "samples" / samples[-1])]
  assert full["side_by_side"] == "side_by_side.md"
  assert side.count("**Base** (judge ") == len(last) == 4
  assert side.count("**SFT** (judge ") == 4
  assert f"## {last[0]['id']} ({last[0]['task']})" in side

  # Finished at step 3, then extended to 6 (explicitly: a rerun alone
  # would only report it): identical losses for 4..6.
  _sft(root, world, "resumed", 3)
  _sft(root, world, "resumed", 6, extend=True)
  a, b = _losses(run / "metrics.jsonl"), _losses(root / "resumed" /
                                                  "metrics.jsonl")
  for step in (4, 5, 6):
    assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
