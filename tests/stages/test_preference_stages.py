"""Reward and DPO stages on tiny runs: the properties the issue pins down."""

import hashlib
import json
import math
import os

import jax
import numpy as np
import pytest

from lifejax import sharding, stages
from lifejax.data import chat
from lifejax.eval import policy_eval
from lifejax.eval.instruct import GenerationSpec
from lifejax.losses import dpo as dpo_lib
from lifejax.stages import common, preference
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.trainer import build_trainer



def _tree_digest(path):
  h = hashlib.sha256()
  for d, _, files in sorted(os.walk(path)):
    for f in sorted(files):
      h.update(os.path.relpath(os.path.join(d, f), path).encode())
      h.update(open(os.path.join(d, f), "rb").read())
  return h.hexdigest()


def _rows(path):
  return [json.loads(l) for l in open(path)]


def _sft_and_base(root, cfg, mesh_cfg):
  """The tiny model's graphdef and the SFT and base runs' params (host)."""
  from flax import nnx
  from lifejax.model import transformer
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, _ = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  sft, base = (jax.device_get(preference.lm_params_from(
      str(root / name), cfg, mesh, mesh_cfg.rules)) for name in ("sft", "base"))
  return graphdef, sft, base


@pytest.fixture(scope="module")
def dpo_run(tiny_runs, kit):
  TINY, MESH1, loop, opt = kit.TINY, kit.MESH1, kit.loop, kit.opt
  root, world = tiny_runs
  before = _tree_digest(root / "sft" / "checkpoints")
  summary = stages.dpo(
      run_dir=str(root / "dpo"), model=TINY, init_from=str(root / "sft"),
      train_files=[str(world / "preferences" / "train.jsonl")],
      eval_file=str(world / "preferences" / "validation.jsonl"),
      prompt_file=str(world / "instructions" / "validation.jsonl"),
      loss_hparams={"beta": 0.1}, mesh=MESH1, optimizer=opt(3, 1e-3),
      loop=loop(3, eval_every=3, eval_batches=1),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4,
      seq_len=384, eval_prompts=2,
      generation=GenerationSpec(prompt_len=320, max_new_tokens=2,
                                batch_size=2))
  return root, world, before, summary


def test_dpo_starts_at_log2_and_leaves_the_reference_untouched(dpo_run):
  root, _, before, summary = dpo_run
  first = [r for r in _rows(root / "dpo" / "metrics.jsonl") if "loss" in r][0]
  # Step 1's loss is computed before any update: policy == reference.
  assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
  assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)
  assert _tree_digest(root / "sft" / "checkpoints") == before
  assert "eval/policy/win_rate_vs_ref" in summary["eval"]
  lineage = json.load(open(root / "dpo" / "lineage.json"))
  assert lineage["reference"].endswith("sft")
  assert chat.load_template(str(root / "dpo")) == chat.load_template(
      str(root / "sft"))


def test_dpo_at_the_reference_log2_and_symmetric_gradient():
  """policy == reference: loss log 2, zero implicit margin, and the gradient
  pushes the chosen log-prob up exactly as hard as the rejected one down
  (d/d chosen = -beta/2 = -d/d rejected); identical responses give a zero
  gradient on the margin."""
  beta = 0.3

  def loss(ch, rj):
    lp = dpo_lib.PreferenceLogps(
        chosen=ch, rejected=rj, chosen_len=np.ones(1), rejected_len=np.ones(1),
        ref_chosen=np.array([-3.0]), ref_rejected=np.array([-5.0]))
    return dpo_lib.dpo_objective(lp, beta=beta)[0].sum()

  ch, rj = np.array([-3.0]), np.array([-5.0])
  assert float(loss(ch, rj)) == pytest.approx(math.log(2), abs=1e-7)
  g_ch, g_rj = jax.grad(loss, argnums=(0, 1))(ch, rj)
  assert float(g_ch[0]) == pytest.approx(-beta / 2, abs=1e-7)
  assert float(g_rj[0]) == pytest.approx(beta / 2, abs=1e-7)

  # Identical chosen and rejected responses: the margin's gradient cancels.
  def margin_loss(x):
    lp = dpo_lib.PreferenceLogps(
        chosen=x, rejected=x, chosen_len=np.ones(1), rejected_len=np.ones(1),
        ref_chosen=np.array([-4.0]), ref_rejected=np.array([-4.0]))
    return dpo_lib.dpo_objective(lp, beta=beta)[0].sum()
  assert float(jax.grad(margin_loss)(np.array([-2.0]))[0]) == 0.0


def test_reward_stage_outputs_stats_and_accuracy(tiny_runs, kit):
  TINY, MESH1, loop, opt = kit.TINY, kit.MESH1, kit.loop, kit.opt
  root, world = tiny_runs
  stages.reward(
      run_dir=str(root / "rm"), model=TINY, init_from=str(root / "sft"),
      train_files=[str(world / "preferences" / "train.jsonl")],
      eval_file=str(world / "preferences" / "validation.jsonl"), mesh=MESH1,
      optimizer=opt(3), loop=loop(3, eval_every=3, eval_batches=1),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4,
      seq_len=384)
  stats = json.load(open(root / "rm" / "reward_stats.json"))
  assert stats["std"] > 0
  ev = json.load(open(root / "rm" / "reward_eval.json"))
  flaws = {r["flaw"] for r in _rows(world / "preferences" / "validation.jsonl")}
  assert set(ev["accuracy_by_flaw"]) == flaws
  assert 0.0 <= ev["ece"] <= 1.0
  assert (root / "rm" / "reward_eval.png").exists()
  lineage = json.load(open(root / "rm" / "lineage.json"))
  assert lineage["model_kind"] == "reward"


def test_kl_estimator_zero_for_identical_policies(tiny_runs, kit):
  TINY, MESH1 = kit.TINY, kit.MESH1
  root, world = tiny_runs
  graphdef, sft_params, base_params = _sft_and_base(root, TINY, MESH1)
  records = [r for r in _rows(world / "instructions" / "validation.jsonl")][:2]
  ev = policy_eval.PolicyEvaluator(
      graphdef, sft_params, common.tokenizer_of(str(root / "sft")),
      chat.load_template(str(root / "sft")), records,
      GenerationSpec(prompt_len=320, max_new_tokens=3, batch_size=2))
  same = ev(sft_params)
  assert same["kl_to_ref"] == pytest.approx(0.0, abs=1e-5)
  assert same["win_rate_vs_ref"] == pytest.approx(0.5)
  other = ev.kl_to_reference(base_params, ev.ref_answers)
  assert other > 1e-4


def test_dpo_step_sharded_equals_single_device(tiny_runs, kit):
  TINY, MESH1, opt = kit.TINY, kit.MESH1, kit.opt
  root, world = tiny_runs
  template = chat.load_template(str(root / "sft"))
  tok = common.tokenizer_of(str(root / "sft"))
  from lifejax.data import sft as sft_data
  from lifejax.eval import reward_eval
  recs = _rows(world / "preferences" / "train.jsonl")[:8]
  c, r = reward_eval.pair_rows(recs, sft_data.ChatRender(template, tok), 256)
  results = []
  for mesh_cfg, devices in ((MESH1, jax.devices()[:1]),
                            (sharding.MeshConfig(data=2, fsdp=2, model=2),
                             jax.devices())):
    mesh = sharding.make_mesh(mesh_cfg, devices)
    t = build_trainer(
        run_dir=str(root / f"dpo_eq_{len(devices)}"), model_cfg=TINY,
        make_loss=lambda g: dpo_lib.make_preference_loss_fn("dpo", g,
                                                            beta=0.1),
        optimizer_cfg=opt(2), mesh=mesh, rules=mesh_cfg.rules,
        example_batch=preference._with_ref(preference.pair_example(8, 256)),
        checkpoint_cfg=CheckpointConfig(every_steps=100), resume=False,
        initial_params=lambda plan, m=mesh, mc=mesh_cfg:
        preference.lm_params_from(str(root / "sft"), TINY, m, mc.rules))
    cc, rr = dict(c), dict(r)
    preference.attach_ref_logps(t.graphdef, jax.device_get(t.state["params"]),
                                cc, rr, 8)
    batch = {"chosen": cc, "rejected": rr}
    state, m = t.train_step(t.state, batch)
    state, m2 = t.train_step(state, batch)
    results.append((float(m["loss"]), float(m2["loss"]),
                    jax.device_get(state["params"])))
  (a1, a2, pa), (b1, b2, pb) = results
  assert a1 == pytest.approx(b1, rel=1e-5)
  assert a2 == pytest.approx(b2, rel=1e-4)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_allclose(x, y, atol=5e-5)


def test_reward_fn_rows_and_gains_vs_reference(tiny_runs, kit):
  """response_reward_fn renders prompt + answer the way the reward model
  reads them; the evaluator reports reward and judge changes vs SFT."""
  TINY, MESH1 = kit.TINY, kit.MESH1
  root, world = tiny_runs
  from lifejax.data import judge
  graphdef, sft_params, base_params = _sft_and_base(root, TINY, MESH1)
  tok = common.tokenizer_of(str(root / "sft"))
  tmpl = chat.load_template(str(root / "sft"))
  records = [r for r in _rows(world / "instructions" / "validation.jsonl")
             if "reference" in r][:2]
  # A checkable "reward model": the number of trained (answer) tokens.
  fn = policy_eval.response_reward_fn(
      lambda rows: rows["loss_mask"].sum(axis=1), tmpl, tok, records, 384)
  answers = ["Yes.", "A longer answer with more words in it."]
  want = [len(chat.render_response(tmpl, tok, a)) for a in answers]
  np.testing.assert_array_equal(fn(answers), want)
  with pytest.raises(ValueError, match="1 answers for 2 prompts"):
    fn(answers[:1])

  ev = policy_eval.PolicyEvaluator(
      graphdef, sft_params, tok, tmpl, records,
      GenerationSpec(prompt_len=320, max_new_tokens=3, batch_size=2),
      reward_fn=fn)
  same = ev(sft_params)
  assert same["reward_gain_vs_ref"] == 0.0
  assert same["judge_gain_vs_ref"] == pytest.approx(0.0, abs=1e-12)
  other = ev(base_params)
  base_answers = ev.last_answers
  assert other["reward_gain_vs_ref"] == pytest.approx(
      np.mean(fn(base_answers)) - np.mean(fn(ev.ref_answers)))
  judge_of = lambda ans: np.mean([judge.score(r, a).total
                                  for r, a in zip(records, ans)])
  assert other["judge_gain_vs_ref"] == pytest.approx(
      judge_of(base_answers) - judge_of(ev.ref_answers))
