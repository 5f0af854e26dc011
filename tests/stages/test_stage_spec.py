"""A new stage written as a spec in a test: SFT with label smoothing.

The stage (its loss and `sft_smooth`, 35 lines between the markers) is all
a new stage needs; the runner gives it resume, lineage, summary and config
checks. The tests show it runs, equals an independent computation at step
1, resumes bitwise, records its lineage and summary, and is refused a bad
binding before it trains.
"""

import dataclasses
import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.data import chat, file_sources, pipeline, sft as sft_data
from lifejax.data.batching import example_lm_batch
from lifejax.losses.registry import register_loss
from lifejax.model import transformer
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import file_digest, read_lineage
from lifejax.stages import runner
from lifejax.train.checkpoint import CheckpointConfig


# --- the new stage -----------------------------------------------------------
@register_loss("test_smoothed_lm", kind="lm")
def smoothed_lm(graphdef, *, smoothing: float = 0.1):
  def loss_fn(params, batch, rng):
    del rng
    logits = nnx.merge(graphdef, params)(batch["tokens"], batch["positions"],
                                         batch["segment_ids"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    per_token = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    w = batch["loss_mask"]
    return jnp.sum(per_token * w) / jnp.maximum(w.sum(), 1e-8), {
        "weight": w.sum()}
  return loss_fn


@gin.configurable("sft_smooth")
def sft_smooth(run_dir, model, init_from, train_file, training,
               smoothing=0.1, batch_size=4, seq_len=256):
  if not 0 <= smoothing < 1:
    raise ValueError(f"sft_smooth.smoothing={smoothing}: must be in [0, 1)")
  tmpl, tok = chat.get_template("lifejax"), artifacts.load_tokenizer(init_from)
  data = lambda ctx: pipeline.JsonStateIterator(iter(  # noqa: E731
      conversations(train_file, tok, tmpl, batch_size, seq_len)))
  return runner.run_stage(runner.StageSpec(
      name="sft_smooth", model_kind="lm", model=model, loss="test_smoothed_lm",
      loss_kind="lm", loss_kwargs={"smoothing": smoothing},
      example_batch=example_lm_batch(batch_size, seq_len), data=data,
      tokenizer=tok, template=tmpl, tokens_per_step=batch_size * seq_len,
      init_from=init_from, inputs={"train_files": [train_file]}),
      run_dir, training)
# --- end of the new stage ----------------------------------------------------


def conversations(path, tok, tmpl, batch_size, seq_len):
  return sft_data.sft_dataset(
      file_sources.JsonlSource(path, fields={"messages": list}), tok, tmpl,
      seq_len=seq_len, batch_size=batch_size, seed=0, skip_bad=True)


def _losses(run_dir):
  rows = [json.loads(l) for l in open(RunDir(run_dir).metrics)]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def smooth_run(tiny_runs, kit, tmp_path_factory):
  root, world = tiny_runs
  out = tmp_path_factory.mktemp("smooth")
  training = runner.Training(
      mesh=kit.MESH1, optimizer=kit.opt(4), loop=kit.loop(4),
      checkpoint=CheckpointConfig(every_steps=2, async_save=False))
  kw = dict(model=kit.TINY, init_from=str(root / "base"),
            train_file=str(world / "instructions" / "train.jsonl"),
            training=training, smoothing=0.2)
  summary = sft_smooth(run_dir=str(out / "full"), **kw)
  return out, kw, summary


def test_new_stage_runs_and_equals_an_independent_loss(smooth_run, kit):
  out, kw, summary = smooth_run
  assert summary["final_step"] == 4
  # Step 1 sees the base params: recompute its loss in float64 numpy.
  graphdef, params = artifacts.load_params(
      kw["init_from"], transformer.Transformer, kit.TINY,
      sharding.make_mesh(kit.MESH1), kit.MESH1.rules)
  tok = artifacts.load_tokenizer(kw["init_from"])
  batch = next(iter(conversations(kw["train_file"], tok,
                                  chat.get_template("lifejax"), 4, 256)))
  logits = np.asarray(nnx.merge(graphdef, params)(
      batch["tokens"], batch["positions"], batch["segment_ids"]), np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  per_token = 0.8 * nll - 0.2 * logp.mean(-1)
  w = batch["loss_mask"]
  want = (per_token * w).sum() / w.sum()
  assert _losses(out / "full")[1] == pytest.approx(want, rel=1e-4)
  assert abs(want - (nll * w).sum() / w.sum()) > 1e-3  # smoothing matters


def test_new_stage_resumes_bitwise(smooth_run):
  out, kw, _ = smooth_run
  full = RunDir(out / "full")
  killed = str(out / "killed")
  shutil.copytree(full.root, killed)
  shutil.rmtree(os.path.join(RunDir(killed).checkpoints, "4"))
  os.remove(RunDir(killed).summary)
  sft_smooth(run_dir=killed, **kw)
  want, got = _losses(full.root), _losses(killed)
  assert [got[s] for s in (3, 4)] == [want[s] for s in (3, 4)]
  rows = [json.loads(l) for l in open(RunDir(killed).metrics)]
  assert [r["step"] for r in rows].count(3) == 2  # step 3 was redone


def test_new_stage_records_lineage_and_summary(smooth_run):
  out, kw, summary = smooth_run
  lin = read_lineage(str(out / "full"))
  assert (lin.stage, lin.model_kind) == ("sft_smooth", "lm")
  assert lin.details["loss"] == "test_smoothed_lm"
  assert lin.details["loss_hparams"] == {"smoothing": 0.2}
  assert lin.init_from == kw["init_from"]
  assert lin.inputs["train_files"] == {
      kw["train_file"]: file_digest(kw["train_file"])}
  assert lin.chat_template["name"] == "lifejax"
  with open(RunDir(out / "full").summary) as f:
    assert json.load(f)["final_step"] == summary["final_step"] == 4
  assert os.path.isfile(RunDir(out / "full").operative_gin)


def test_new_stage_refuses_bad_bindings_before_training(smooth_run, kit,
                                                        tmp_path):
  _, kw, _ = smooth_run
  with gin.unlock_config():
    gin.parse_config("sft_smooth.smoothing = 1.5")
  try:
    with pytest.raises(ValueError, match="sft_smooth.smoothing=1.5"):
      sft_smooth(run_dir=str(tmp_path / "a"), **{
          k: v for k, v in kw.items() if k != "smoothing"})
  finally:
    gin.clear_config()
  assert not (tmp_path / "a").exists()
  with pytest.raises(KeyError, match="unknown loss 'no_such_loss'"):
    runner.run_stage(runner.StageSpec(
        name="sft_smooth", model_kind="lm", model=kit.TINY,
        loss="no_such_loss", loss_kind="lm",
        example_batch=example_lm_batch(4, 256), data=None,
        tokenizer=artifacts.load_tokenizer(kw["init_from"]),
        tokens_per_step=1024), str(tmp_path / "b"), kw["training"])
  assert not (tmp_path / "b").exists()


def _snapshot(root):
  """{relative path: (size, mtime_ns, sha256)} of every file under root."""
  import hashlib
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      st = os.stat(p)
      out[os.path.relpath(p, root)] = (
          st.st_size, st.st_mtime_ns,
          hashlib.sha256(open(p, "rb").read()).hexdigest())
  return out


def test_rerunning_a_finished_run_changes_nothing(smooth_run, capfd):
  out, kw, summary = smooth_run
  copy = str(out / "rerun")
  shutil.copytree(RunDir(out / "full").root, copy)
  before = _snapshot(copy)
  capfd.readouterr()
  again = sft_smooth(run_dir=copy, **kw)
  err = capfd.readouterr().err
  assert f"{copy} already finished at step 4; nothing changed" in err
  assert "LoopConfig.extend" in err
  assert _snapshot(copy) == before
  assert again["final_step"] == 4
  # A larger num_steps alone does not extend it either...
  longer = dict(kw, training=runner.Training(
      **{**kw["training"].__dict__, "loop": dataclasses.replace(
          kw["training"].loop, num_steps=6)}))
  sft_smooth(run_dir=copy, **longer)
  assert _snapshot(copy) == before
  # ...the explicit option does: steps 5 and 6 continue the run.
  extend = dict(longer, training=runner.Training(
      **{**longer["training"].__dict__, "loop": dataclasses.replace(
          longer["training"].loop, extend=True)}))
  assert sft_smooth(run_dir=copy, **extend)["final_step"] == 6
  assert sorted(_losses(copy)) == [1, 2, 3, 4, 5, 6]
