"""Reward and DPO stages on tiny runs: the properties the issue pins down."""

import hashlib
import json
import math
import os

import jax
import numpy as np
import pytest

from lifejax import sharding, stages
from lifejax.data import batching, chat_render
from lifejax.eval import policy_eval
from lifejax.eval.instruct import GenerationSpec
from lifejax.losses import dpo as dpo_lib
from lifejax.model import transformer
from lifejax.run import artifacts
from lifejax.run.lineage import read_lineage
from lifejax.stages.dpo import attach_ref_logps
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
  sft, base = (jax.device_get(artifacts.load_params(
      str(root / name), transformer.Transformer, cfg, mesh,
      mesh_cfg.rules)[1]) for name in ("sft", "base"))
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
  lineage = read_lineage(str(root / "dpo"))
  assert lineage.reference == str(root / "sft")
  assert lineage.details["loss"] == "dpo"
  assert lineage.details["loss_hparams"] == {"beta": 0.1}
  assert artifacts.load_template(str(root / "dpo")) == artifacts.load_template(
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
  ev = json.load(open(root / "rm" / "reward_eval.json"))
  # Recompute the held-out rewards with the saved model: the reward is the
  # head's value at the input position before the response's last token (the
  # last one predicting the response), in the seq_len + 1 = 385 tokens kept
  # of prompt + response (the prompt loses tokens on the left, keeping one,
  # then the response on the right). Causal: right zero-padding is inert.
  from flax import nnx
  from lifejax.data import sft as sft_data
  from lifejax.model import heads
  graphdef, params = artifacts.load_params(
      str(root / "rm"), heads.RewardModel, TINY, sharding.make_mesh(MESH1),
      MESH1.rules)
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
  render = sft_data.ChatRender(artifacts.load_template(str(root / "sft")),
                               artifacts.load_tokenizer(str(root / "sft")))
  records = _rows(world / "preferences" / "validation.jsonl")

  def rewards(side):
    tokens, last = np.zeros((len(records), 384), np.int32), []
    for i, rec in enumerate(records):
      prompt_ids, response_ids = render({**rec, "response": rec[side]})
      prompt_ids = prompt_ids[-max(1, 385 - len(response_ids)):]
      doc = (prompt_ids + response_ids)[:385]
      tokens[i, :len(doc) - 1] = doc[:-1]
      last.append(len(doc) - 2)
    values = np.asarray(forward(params, tokens))
    return values[np.arange(len(records)), last].astype(np.float64)

  r_chosen, r_rejected = rewards("chosen"), rewards("rejected")
  diff = r_chosen - r_rejected
  assert np.abs(diff).min() > 1e-5  # no near-tie that round-off could flip
  correct = diff > 0
  assert ev["accuracy"] == pytest.approx(correct.mean(), abs=1e-9)
  flaw_of = np.array([r["flaw"] for r in records])
  assert ev["accuracy_by_flaw"] == pytest.approx(
      {f: correct[flaw_of == f].mean() for f in set(flaw_of)}, abs=1e-9)
  assert ev["count_by_flaw"] == {f: int(np.sum(flaw_of == f))
                                 for f in set(flaw_of)}
  cell = np.array([f"{r['flaw']}/{r['task']}" for r in records])
  assert len(set(cell)) > len(set(flaw_of))  # some flaw spans tasks
  assert ev["accuracy_by_flaw_task"] == pytest.approx(
      {c: correct[cell == c].mean() for c in set(cell)}, abs=1e-9)
  assert ev["count_by_flaw_task"] == {c: int(np.sum(cell == c))
                                      for c in set(cell)}
  assert ev["mean_margin"] == pytest.approx(diff.mean(), rel=1e-3, abs=1e-5)
  both = np.concatenate([r_chosen, r_rejected])
  assert stats["mean"] == pytest.approx(both.mean(), rel=1e-3, abs=1e-5)
  assert stats["std"] == pytest.approx(both.std(), rel=1e-3)
  last_eval = [r for r in _rows(root / "rm" / "metrics.jsonl")
               if "eval/pair_accuracy" in r][-1]
  assert last_eval["step"] == 3
  assert last_eval["eval/pair_accuracy"] == ev["accuracy"]
  assert 0.0 <= ev["ece"] <= 1.0
  assert (root / "rm" / "reward_eval.png").exists()
  lineage = read_lineage(str(root / "rm"))
  assert lineage.model_kind == "reward"
  assert lineage.init_from == str(root / "sft")


def test_kl_estimator_zero_for_identical_policies(tiny_runs, kit):
  TINY, MESH1 = kit.TINY, kit.MESH1
  root, world = tiny_runs
  graphdef, sft_params, base_params = _sft_and_base(root, TINY, MESH1)
  records = [r for r in _rows(world / "instructions" / "validation.jsonl")][:2]
  ev = policy_eval.PolicyEvaluator(
      graphdef, sft_params, artifacts.load_tokenizer(str(root / "sft")),
      artifacts.load_template(str(root / "sft")), records,
      GenerationSpec(prompt_len=320, max_new_tokens=3, batch_size=2))
  same = ev(sft_params)
  assert ev.last_answers == ev.ref_answers
  assert same["kl_to_ref"] == pytest.approx(0.0, abs=1e-5)
  assert same["win_rate_vs_ref"] == pytest.approx(0.5)

  # The exact KL(pi || pi_ref) summed over an answer's positions: at each
  # input position whose next token is part of the answer, the
  # full-vocabulary KL of the two next-token laws (in float64; each sequence
  # right zero-padded, which a causal model ignores).
  from flax import nnx
  from lifejax.data import prompts
  from lifejax.world import judge
  tmpl = artifacts.load_template(str(root / "sft"))
  tok = artifacts.load_tokenizer(str(root / "sft"))
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))

  def brute_kl(params, answers):
    tokens, spans = np.zeros((len(records), 320 + 3 + 1), np.int32), []
    for i, (rec, ans) in enumerate(zip(records, answers)):
      p = chat_render.render_prompt(tmpl, tok, prompts.prompt_messages(rec))
      doc = p + chat_render.render_response(tmpl, tok, ans)
      assert len(doc) <= 320 + 3 + 2  # the evaluator's rows hold it whole
      tokens[i, :len(doc) - 1] = doc[:-1]
      spans.append((len(p) - 1, len(doc) - 1))
    logits = [np.asarray(forward(x, tokens), np.float64)
              for x in (params, sft_params)]
    logp, logq = (x - x.max(-1, keepdims=True) for x in logits)
    logp, logq = (x - np.log(np.exp(x).sum(-1, keepdims=True))
                  for x in (logp, logq))
    kl_BxT = np.sum(np.exp(logp) * (logp - logq), axis=-1)
    return float(np.mean([kl_BxT[i, a:b].sum()
                          for i, (a, b) in enumerate(spans)]))

  other = ev.kl_to_reference(base_params, ev.ref_answers)
  assert other == pytest.approx(brute_kl(base_params, ev.ref_answers),
                                rel=1e-3)
  assert other > 1e-4
  # The base policy against the SFT reference, whose answers are replaced by
  # the records' gold ones: KL along the policy's own answers, and its
  # judge win rate (ties count half) and gain against the gold answers.
  ev.ref_answers = [r["messages"][-1]["content"] for r in records]
  got = ev(base_params)
  answers = ev.last_answers
  assert got["kl_to_ref"] == pytest.approx(brute_kl(base_params, answers),
                                           rel=1e-3)
  d = [judge.score(r, a).total - judge.score(r, b).total
       for r, a, b in zip(records, answers, ev.ref_answers)]
  assert any(abs(x) > 1e-9 for x in d)
  assert got["win_rate_vs_ref"] == pytest.approx(
      np.mean([0.5 if abs(x) <= 1e-9 else float(x > 0) for x in d]))
  assert got["judge_gain_vs_ref"] == pytest.approx(np.mean(d))


def test_dpo_step_sharded_equals_single_device(tiny_runs, kit):
  TINY, MESH1, opt = kit.TINY, kit.MESH1, kit.opt
  root, world = tiny_runs
  template = artifacts.load_template(str(root / "sft"))
  tok = artifacts.load_tokenizer(str(root / "sft"))
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
        example_batch=batching.example_pair_batch(8, 256,
                                                  with_ref_logp=True),
        checkpoint_cfg=CheckpointConfig(every_steps=100), resume=False,
        initial_params=lambda plan, m=mesh, mc=mesh_cfg:
        artifacts.load_params(str(root / "sft"), transformer.Transformer,
                              TINY, m, mc.rules)[1])
    cc, rr = dict(c), dict(r)
    attach_ref_logps(t.graphdef, jax.device_get(t.state["params"]), cc, rr,
                     8)
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
  from lifejax.world import judge
  graphdef, sft_params, base_params = _sft_and_base(root, TINY, MESH1)
  tok = artifacts.load_tokenizer(str(root / "sft"))
  tmpl = artifacts.load_template(str(root / "sft"))
  records = [r for r in _rows(world / "instructions" / "validation.jsonl")
             if "reference" in r][:2]
  # A checkable "reward model": the number of trained (answer) tokens.
  fn = policy_eval.response_reward_fn(
      lambda rows: rows["loss_mask"].sum(axis=1), tmpl, tok, records, 384)
  answers = ["Yes.", "A longer answer with more words in it."]
  want = [len(chat_render.render_response(tmpl, tok, a)) for a in answers]
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
