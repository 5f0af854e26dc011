"""The distill stage end to end on tiny runs: a smaller student learns from
the tiny pretrained teacher (`tiny_runs`' base) on the teacher's own data;
its step-1 loss equals an independent float64 computation on the first
batch, its loss falls, the teacher is untouched, it resumes bitwise; the
on-policy option trains on the student's samples; bad options fail before
anything is written."""

import hashlib
import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding, stages
from lifejax.data import files, pipeline
from lifejax.data.batching import example_lm_batch
from lifejax.losses import lm
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import iteration as iteration_lib
from lifejax.rl.rollout import RolloutConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import read_lineage
from lifejax.train import trainer as trainer_lib
from lifejax.train.checkpoint import CheckpointConfig

# A quarter of the teacher's width, one layer instead of two.
STUDENT = TransformerConfig(vocab_size=640, d_model=8, num_layers=1,
                            num_heads=2, num_kv_heads=1, mlp_dim=16)
# Pure distillation at T = 0.5: the 4-step teacher is close to uniform, so
# a sharper temperature gives the KL something to fall from.
KW = dict(temperature=0.5, alpha=0.0, batch_size=4, seq_len=64,
          eval_holdout=0.1, seed=0)


def _rows(run_dir):
  return [json.loads(l) for l in open(RunDir(run_dir).metrics)]


def _losses(run_dir):
  return {r["step"]: r["loss"] for r in _rows(run_dir) if "loss" in r}


def _digest(root):
  h = hashlib.sha256()
  for d, _, names in sorted(os.walk(root)):
    for n in sorted(names):
      h.update(n.encode())
      h.update(open(os.path.join(d, n), "rb").read())
  return h.hexdigest()


def _np_log_softmax(x):
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def distilled(tiny_runs, kit, tmp_path_factory):
  root, _ = tiny_runs
  teacher = str(root / "base")
  before = _digest(RunDir(teacher).checkpoints)
  out = tmp_path_factory.mktemp("distill")
  kw = dict(teacher=teacher, model=STUDENT, mesh=kit.MESH1,
            optimizer=kit.opt(8, 3e-2), loop=kit.loop(8, eval_every=8,
                                                      eval_batches=2),
            checkpoint=CheckpointConfig(every_steps=4, async_save=False),
            **KW)
  summary = stages.distill(run_dir=str(out / "full"), **kw)
  return out, kw, summary, before


def test_step1_loss_equals_an_independent_computation(distilled, kit):
  out, kw, summary, _ = distilled
  assert summary["final_step"] == 8
  mesh = sharding.make_mesh(kit.MESH1)
  t_gd, t_params = artifacts.load_params(
      kw["teacher"], transformer.Transformer, kit.TINY, mesh, kit.MESH1.rules)
  # The student at step 1: seed 0's fresh params, from the trainer's own
  # initializer (the same program, so the compilation cache has it).
  plan = trainer_lib.plan_training(
      model_cfg=STUDENT, make_loss=lm.make_lm_loss_fn,
      optimizer_cfg=kw["optimizer"], mesh=mesh, rules=kit.MESH1.rules,
      example_batch=example_lm_batch(4, 64), seed=0)
  with jax.set_mesh(mesh):
    s_gd, s_params = plan.graphdef, plan.init_state()["params"]
  # The first batch: the teacher's training files (its lineage), minus the
  # share it held out.
  paths = list(read_lineage(kw["teacher"]).inputs["train_files"])
  train, _ = files.holdout_split(
      [files.source_from_path(p, "text", policy="skip") for p in paths],
      "text", 0.1)
  tok = artifacts.load_tokenizer(kw["teacher"])
  batch = next(iter(pipeline.lm_dataset(train, tok, seq_len=64,
                                        batch_size=4, seed=0)))
  args = (batch["tokens"], batch["positions"], batch["segment_ids"])
  forward = jax.jit(lambda gd, p, *a: nnx.merge(gd, p)(*a),
                    static_argnums=0)
  s = np.asarray(forward(s_gd, s_params, *args), np.float64)
  t = np.asarray(forward(t_gd, t_params, *args), np.float64)
  temp, w = 0.5, batch["loss_mask"].astype(np.float64)
  log_q, log_p = _np_log_softmax(s / temp), _np_log_softmax(t / temp)
  kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
  want = temp ** 2 * (kl * w).sum() / w.sum()
  assert _losses(out / "full")[1] == pytest.approx(want, rel=1e-4)


def test_loss_falls_and_evals_read_the_teacher(distilled):
  out, _, summary, _ = distilled
  losses = _losses(out / "full")
  assert np.mean([losses[7], losses[8]]) < 0.8 * losses[1]
  ev = [r for r in _rows(out / "full") if "eval/kl" in r][-1]
  # eval/loss is the student's cross-entropy (alpha = 1 in eval).
  assert ev["eval/loss"] == pytest.approx(ev["eval/cross_entropy"])
  assert ev["eval/teacher_cross_entropy"] > 0 and ev["eval/kl"] > 0
  first = _rows(out / "full")[0]
  assert first["loss"] == pytest.approx(0.25 * first["kl"])  # T^2 KL


def test_teacher_is_untouched_and_recorded(distilled):
  out, kw, _, before = distilled
  assert _digest(RunDir(kw["teacher"]).checkpoints) == before
  lin = read_lineage(str(out / "full"))
  assert (lin.stage, lin.model_kind, lin.init_from) == ("distill", "lm",
                                                        None)
  assert lin.details["teacher"] == os.path.abspath(kw["teacher"])
  assert lin.details["loss_hparams"] == {
      "divergence": "forward", "temperature": 0.5, "alpha": 0.0,
      "teacher_metrics": True}
  assert lin.model.d_model == 8
  # The student holds out exactly the teacher's eval documents.
  mine, theirs = (RunDir(out / "full").heldout_files(),
                  RunDir(kw["teacher"]).heldout_files())
  assert [open(p).read() for p in mine] == [open(p).read() for p in theirs]


def test_resume_equals_the_uninterrupted_run(distilled):
  out, kw, _, _ = distilled
  killed = str(out / "killed")
  shutil.copytree(out / "full", killed)
  shutil.rmtree(os.path.join(RunDir(killed).checkpoints, "8"))
  os.remove(RunDir(killed).summary)
  stages.distill(run_dir=killed, **kw)
  want, got = _losses(out / "full"), _losses(killed)
  assert [got[s] for s in (5, 6, 7, 8)] == [want[s] for s in (5, 6, 7, 8)]


def test_hard_labels_only_is_plain_next_token_training(distilled, tmp_path):
  """alpha = 1 (the from-scratch baseline): the teacher is not run in the
  step, so the step loss is the plain cross-entropy; eval still reads it."""
  out, kw, _, _ = distilled
  run = str(tmp_path / "ce")
  stages.distill(run_dir=run, **{**kw, "alpha": 1.0,
                                 "loop": kw["loop"].__class__(
                                     num_steps=1, log_every=1,
                                     progress=False)})
  row = _rows(run)[0]
  assert "kl" not in row and row["loss"] == pytest.approx(
      row["cross_entropy"])
  assert "eval/kl" in _rows(run)[-1]


def test_on_policy_trains_on_the_students_samples(distilled, tmp_path):
  _, kw, _, _ = distilled
  run = str(tmp_path / "onpolicy")
  summary = stages.distill(
      run_dir=run, **{**kw, "alpha": 0.0, "on_policy": True,
                      "rollout": RolloutConfig(prompt_len=8,
                                               max_new_tokens=6),
                      "loop": kw["loop"].__class__(
                          num_steps=2, log_every=1, progress=False)})
  assert summary["final_step"] == 2
  rows = _rows(run)
  assert all(0 < r["sample_length"] <= 6 for r in rows if "loss" in r)
  lin = read_lineage(run)
  assert lin.details["on_policy"] and lin.details["loss_hparams"][
      "divergence"] == "reverse"


def test_student_samples_are_seeded_by_batch_and_resume():
  """Batch k samples with fold_in(PRNGKey(seed), k) after the k-th prompt
  batch; a restored source continues the stream."""
  distill_stage = importlib.import_module("lifejax.stages.distill")

  class Tok:
    bos_id, eos_id, pad_id, vocab_size = 3, 1, 0, 50

    def encode(self, text):
      return [5 + (ord(c) % 40) for c in text]

  codec = distill_stage.prefix_codec(Tok(), 4, "text")
  assert codec.encode({"text": "abcdef"}) == [3] + Tok().encode("abc")
  cfg = RolloutConfig(prompt_len=4, max_new_tokens=3)

  def sampler(params):
    def sample(prompt, mask, rng):
      del mask
      r = np.asarray(jax.random.randint(rng, (len(prompt), 3), 5, 50))
      return r + params, np.full(len(prompt), 3)
    return sample

  records = [{"text": t} for t in ("ab", "cde", "fghi", "j", "kl")]

  def source():
    return distill_stage.StudentSamples(
        iteration_lib.PromptBatches(records, 2, seed=0), codec, cfg, sampler,
        lambda state: state, seed=7)

  a = source()
  first = [a.next_batch(0) for _ in range(3)]
  assert first[0]["loss_mask"].sum() == 2 * 3  # the sampled tokens only
  b = source()
  b.next_batch(0)
  b.set_state(json.loads(json.dumps(a.get_state())))
  c = source()
  c.set_state({"prompts": {"cursor": 1}})
  np.testing.assert_array_equal(c.next_batch(0)["tokens"],
                                first[1]["tokens"])
  assert a.pop_metrics()["sample_length"] == 3.0


@pytest.mark.parametrize("kwargs,match", [
    ({"divergence": "js"}, "distill.divergence='js'"),
    ({"temperature": 0.0}, "distill.temperature=0.0"),
    ({"alpha": -0.1}, "distill.alpha=-0.1"),
    ({"on_policy": True, "alpha": 0.5}, "distill.alpha=0.5: on-policy"),
    ({"rollout": RolloutConfig(prompt_len=8)}, "distill.rollout is set"),
    ({"eval_files": ["x.jsonl"]}, "distill.eval_holdout is set"),
    ({"eval_holdout": 0.02}, "distill.eval_holdout: the documents held"),
    ({"source_weights": [1.0, 2.0]}, "distill.source_weights: 2 weights for "
     "1 train_files"),
    ({"model": TransformerConfig(vocab_size=512, d_model=8, num_layers=1,
                                 num_heads=2, num_kv_heads=1, mlp_dim=16)},
     "distill.model: vocab_size=512"),
])
def test_bad_options_fail_before_anything_is_written(distilled, tmp_path,
                                                     kwargs, match):
  _, kw, _, _ = distilled
  with pytest.raises(ValueError, match=match):
    stages.distill(run_dir=str(tmp_path / "x"), **{**kw, **kwargs})
  assert not (tmp_path / "x").exists()


def test_card_rerun_command_restarts_the_distillation(distilled, kit):
  """A card's rollback entry for a run a distill stage started from gives a
  rerun command that binds the teacher, the loss options and the student's
  shape (student/TransformerConfig, what stages/distill.gin reads). The
  distill run's own checkpoint stands in for that run here."""
  import dataclasses
  import shlex

  import gin

  from lifejax import main as main_lib
  from lifejax.eval import card_rollback
  out, kw, _, _ = distilled
  child = {"kind": "distill", "name": "distill", "run_dir": str(out / "full"),
           "lineage": read_lineage(str(out / "full"))}
  cmds = card_rollback.restore_commands(
      str(out / "full"), 8, child, dataclasses.asdict(STUDENT))
  argv = shlex.split(cmds["rerun_distill"])
  try:
    main_lib.parse_gin(
        [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")],
        [a.split("=", 1)[1] for a in argv if a.startswith("--gin_param=")])
    assert gin.query_parameter("distill.teacher") == os.path.abspath(
        kw["teacher"])
    assert gin.query_parameter("distill.init_from") == str(out / "full")
    assert gin.query_parameter("distill.temperature") == 0.5
    assert gin.query_parameter("student/TransformerConfig.d_model") == 8
  finally:
    gin.clear_config()
