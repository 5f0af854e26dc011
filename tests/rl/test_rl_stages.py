"""The ppo / grpo / rlaif stages end to end on a tiny world, from a tiny
SFT run and a reward-model run directory built to the reward stage's
contract; their gin files parse."""

import dataclasses
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax import main as main_lib, sharding
from lifejax.data import preference, sft as sft_data
from lifejax.model import heads, transformer
from lifejax.data.jsonl import read_jsonl
from lifejax.model.config import TransformerConfig
from lifejax.rl import iteration as iteration_lib, rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import Lineage, read_lineage, write_lineage
from lifejax.stages import rl as rl_stages
from lifejax.stages.rlaif import rlaif
from lifejax.stages.pretrain import pretrain
from lifejax.stages.sft import sft
from lifejax.train.checkpoint import Checkpointer, CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.world import generator, judge

MODEL = TransformerConfig(vocab_size=512, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)
MESH = sharding.MeshConfig(data=1, fsdp=-1, model=1)
ROLLOUT = rollout_lib.RolloutConfig(prompt_len=64, max_new_tokens=8)
OPT = OptimizerConfig(learning_rate=1e-3, schedule="constant",
                      warmup_steps=0, weight_decay=0.0)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _loop(iterations):
  return iteration_lib.RLLoopConfig(
      num_iterations=iterations, prompts_per_iteration=8, epochs=1,
      minibatch_size=8, samples_every=1, checkpoint_every=iterations,
      tensorboard=False, progress=False)


def _reward_run(sft_run: str, out: str) -> None:
  """A RewardModel run directory as the reward stage writes it: backbone
  from the SFT LM, a fresh head, reward_stats.json, chat template."""
  mesh = sharding.make_mesh(MESH)
  _, lm = artifacts.load_params(sft_run, transformer.Transformer, MODEL,
                                mesh, MESH.rules)
  _, abstract = nnx.split(heads.abstract(heads.RewardModel, MODEL),
                          nnx.Param)
  fresh = nnx.to_pure_dict(abstract)
  kernel = fresh["head"]["kernel"]
  fresh["head"] = {  # a random head, as the reward stage would train one
      "kernel": jnp.asarray(np.random.default_rng(3).normal(
          0, MODEL.d_model ** -0.5, kernel.shape), kernel.dtype),
      "bias": jnp.zeros(fresh["head"]["bias"].shape)}
  rm = {"backbone": jax.tree.map(jnp.asarray, jax.device_get(
      heads.backbone_params_from_lm(lm))), "head": fresh["head"]}
  ckpt = Checkpointer(out, CheckpointConfig(async_save=False))
  ckpt.save(1, {"params": rm}, force=True)
  ckpt.wait()
  ckpt.close()
  write_lineage(out, Lineage(stage="reward", model_kind="reward",
                             init_from=sft_run, model=MODEL))
  with open(RunDir(out).reward_stats, "w") as f:
    json.dump({"mean": 0.5, "std": 2.0}, f)
  artifacts.save_template(out, artifacts.load_template(sft_run))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("rl_stages")
  world = root / "world"
  generator.generate_world(str(world), seed=0, scale=0.2)
  pretrain(run_dir=str(root / "base"), model=MODEL,
           train_files=[str(world / "corpus" / "wiki.jsonl")], mesh=MESH,
           optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=1,
                                     total_steps=2),
           loop=LoopConfig(num_steps=2, log_every=1, progress=False,
                           eval_batches=1),
           checkpoint=CheckpointConfig(every_steps=100), batch_size=8,
           seq_len=64, eval_holdout=0.1)
  prompts = [str(world / "eval" / "general_instructions.jsonl")]
  # Short conversations keep the SFT step small; they are also the prompts.
  sft(run_dir=str(root / "sft"), model=MODEL, init_from=str(root / "base"),
      train_files=prompts, mesh=MESH, skip_bad=True,
      optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=1,
                                total_steps=2),
      loop=LoopConfig(num_steps=2, log_every=1, progress=False),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=8,
      seq_len=128, eval_generation_records=0)
  _reward_run(str(root / "sft"), str(root / "reward"))
  return root, world, prompts


def _metrics(run_dir):
  return read_jsonl(RunDir(run_dir).metrics)


def test_ppo_stage_with_a_reward_model(runs):
  root, _, prompts = runs
  run_dir = str(root / "ppo")
  summary = rl_stages.ppo(
      run_dir=run_dir, sft_run=str(root / "sft"), prompt_files=prompts,
      reward="reward_model", reward_run=str(root / "reward"),
      value_model="separate", value_init="reward_model", loop=_loop(2),
      rollout=ROLLOUT, optimizer=OPT, mesh=MESH, missing_stop_penalty=0.5)
  rows = _metrics(run_dir)
  assert [r["iteration"] for r in rows] == [1, 2]
  for k in ("reward", "true_judge", "kl", "kl_k3", "clip_fraction",
            "approx_kl", "value_loss", "explained_variance", "entropy",
            "response_length", "refusal_rate", "kl_coef"):
    assert all(np.isfinite(r[k]) for r in rows), k
  assert os.path.getsize(RunDir(run_dir).rl_curves) > 0
  sample = read_jsonl(RunDir(run_dir).iteration_sample_file(2))[0]
  assert isinstance(sample["response"], str) and "true_judge" in sample
  lineage = read_lineage(run_dir)
  assert lineage.model_kind == "policy_value_separate"
  assert lineage.details["critic"]["init_from"] == str(root / "reward")
  assert lineage.details["reward"]["std"] == 2.0
  # The exported policy is a plain LM run directory that differs from SFT.
  policy_dir = summary["policy_dir"]
  assert policy_dir == RunDir(run_dir).policy.root
  assert artifacts.load_template(policy_dir) == artifacts.load_template(
      str(root / "sft"))
  mesh = sharding.make_mesh(MESH)
  _, new = artifacts.load_params(policy_dir, transformer.Transformer,
                                 artifacts.load_model_config(policy_dir),
                                 mesh, MESH.rules)
  _, old = artifacts.load_params(str(root / "sft"), transformer.Transformer,
                                 MODEL, mesh, MESH.rules)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(jax.device_get(new)),
      jax.tree.leaves(jax.device_get(old))))


def test_grpo_stage_with_the_judge(runs):
  root, _, prompts = runs
  run_dir = str(root / "grpo")
  loop = dataclasses.replace(_loop(2), prompts_per_iteration=4)
  rl_stages.grpo(
      run_dir=run_dir, sft_run=str(root / "sft"), prompt_files=prompts,
      reward="judge", reward_judge="length_hackable",
      grpo_config=rl_stages.grpo_lib.GRPOConfig(group_size=2),
      loop=loop, rollout=ROLLOUT, optimizer=OPT, mesh=MESH)
  rows = _metrics(run_dir)
  assert [r["iteration"] for r in rows] == [1, 2]
  records = {r["id"]: r for p in prompts for r in map(json.loads, open(p))}
  g = 2
  for row in rows:
    samples = read_jsonl(RunDir(run_dir).iteration_sample_file(
        row["iteration"]))
    assert len(samples) == 4 * g
    # Each prompt's group is g consecutive rows, scored by the
    # length-hackable judge; the logged group statistics are theirs.
    ids_NxG = np.array([s["id"] for s in samples]).reshape(-1, g)
    assert (ids_NxG == ids_NxG[:, :1]).all() and len(set(ids_NxG[:, 0])) == 4
    for s in samples:
      want = judge.score(records[s["id"]], s["response"],
                         judge.LENGTH_HACKABLE).total
      assert s["score"] == pytest.approx(want, abs=1e-6)
    s_NxG = np.array([s["score"] for s in samples]).reshape(-1, g)
    assert row["reward"] == pytest.approx(s_NxG.mean(), abs=1e-6)
    assert row["group_score_std"] == pytest.approx(
        s_NxG.std(axis=1).mean(), abs=1e-6)
    assert row["flat_group_rate"] == np.mean(s_NxG.max(1) == s_NxG.min(1))
    # One update per rollout, from the sampling policy (ratio 1, nothing
    # clipped): the policy loss is minus the mean advantage, 0 for advantages
    # centred within each group (not for raw scores).
    assert row["clip_fraction"] == 0.0
    assert row["policy_loss"] == pytest.approx(0.0, abs=1e-5)
  assert rows[0]["flat_group_rate"] < 1  # iteration 1 has a gradient
  # The policy starts at the SFT reference (zero KL on iteration 1's own
  # samples) and has moved away from it by iteration 2.
  assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
  assert rows[0]["kl_k3"] == pytest.approx(0.0, abs=1e-6)
  assert rows[0]["update/kl"] == pytest.approx(0.0, abs=1e-6)
  assert rows[1]["kl_k3"] > 1e-6
  # The GRPO run directory itself holds the LM (init_from-compatible): the
  # final policy, two Adam steps from the SFT params (a step moves a
  # parameter by at most ~lr, one with a gradient by about lr).
  mesh = sharding.make_mesh(MESH)
  _, new = artifacts.load_params(run_dir, transformer.Transformer, MODEL,
                                 mesh, MESH.rules)
  _, old = artifacts.load_params(str(root / "sft"), transformer.Transformer,
                                 MODEL, mesh, MESH.rules)
  moved = max(float(np.max(np.abs(np.asarray(a, np.float64) - b)))
              for a, b in zip(jax.tree.leaves(jax.device_get(new)),
                              jax.tree.leaves(jax.device_get(old))))
  assert 0.9 * OPT.learning_rate <= moved <= 2.001 * OPT.learning_rate
  assert read_lineage(run_dir).details["reward"]["judge"] == (
      "length_hackable")


def test_rlaif_stage_writes_a_dpo_dataset(runs):
  root, _, prompts = runs
  run_dir = str(root / "rlaif")
  report = rlaif(
      run_dir=run_dir, policy_run=str(root / "sft"), prompt_files=prompts,
      judge="judge", num_prompts=12,
      config=rlaif_lib.RLAIFConfig(min_margin=0.01, drop_truncated=False,
                                   prompts_per_batch=4),
      rollout=ROLLOUT, mesh=MESH)
  assert report["prompts"] == 12
  # Deterministic for these seeds: a barely trained model's pairs mostly
  # tie under the judge, but not all of them.
  assert report["kept"] >= 1 and report["filtered_by_reason"]["tie"] >= 1
  assert report["kept"] + report["filtered"] == 12
  assert report["filtered"] == sum(report["filtered_by_reason"].values())
  pairs = read_jsonl(RunDir(run_dir).preferences)
  assert len(pairs) == report["kept"]
  template = artifacts.load_template(run_dir)
  tokenizer = artifacts.load_tokenizer(str(root / "sft"))
  to_rows = preference.PreferencePairToRows(
      sft_data.ChatRender(template, tokenizer), seq_len=128)
  for p in pairs:
    assert set(p) == {"id", "task", "prompt", "chosen", "rejected", "flaw",
                      "reference", "margin"}
    assert p["flaw"] == "ai_judged" and p["prompt"][-1]["role"] == "user"
    margin = (judge.score(p, p["chosen"]).total
              - judge.score(p, p["rejected"]).total)
    assert margin == pytest.approx(p["margin"], abs=1e-6)
    assert margin >= 0.01
    to_rows.map(p)  # what the DPO stage does with each record


def test_rlaif_stage_best_of_n_with_the_greedy_answer(runs, monkeypatch):
  """Three samples plus the greedy answer per prompt: every prompt is kept
  or filtered once, and the report counts the pairs in which the greedy
  answer is the chosen or the rejected side."""
  root, _, prompts = runs
  run_dir = str(root / "rlaif_greedy")
  seen = []  # (records, texts) of each rollout the judge scores
  judge_call = rollout_lib.JudgeScorer.__call__

  def recording(self, rollout):
    seen.append(([r["id"] for r in rollout.records], list(rollout.texts)))
    return judge_call(self, rollout)

  monkeypatch.setattr(rollout_lib.JudgeScorer, "__call__", recording)
  report = rlaif(
      run_dir=run_dir, policy_run=str(root / "sft"), prompt_files=prompts,
      judge="judge", num_prompts=8,
      config=rlaif_lib.RLAIFConfig(min_margin=0.0, drop_truncated=False,
                                   prompts_per_batch=4, samples_per_prompt=3,
                                   include_greedy=True),
      rollout=ROLLOUT, mesh=MESH)
  assert report["prompts"] == 8 and report["samples_per_prompt"] == 3
  assert report["kept"] + report["filtered"] == 8
  # Each batch of 4 prompts: 3 samples per prompt, then the greedy answers.
  assert [len(texts) for _, texts in seen] == [12, 4, 12, 4]
  ids, cands = [], []  # per prompt: [greedy answer, sample 1, 2, 3]
  for (s_ids, s_texts), (g_ids, g_texts) in zip(seen[::2], seen[1::2]):
    for i, pid in enumerate(g_ids):
      assert s_ids[3 * i:3 * i + 3] == [pid] * 3
      ids.append(pid)
      cands.append([g_texts[i]] + s_texts[3 * i:3 * i + 3])
  records = {r["id"]: r for p in prompts for r in map(json.loads, open(p))}
  scores = np.array([[judge.score(records[pid], t).total for t in c]
                     for pid, c in zip(ids, cands)])
  assert report["mean_score"] == pytest.approx(scores.mean(), abs=1e-6)
  assert report["mean_best_score"] == pytest.approx(
      scores.max(axis=1).mean(), abs=1e-6)
  # The kept pairs are the best against the worst candidate of their
  # prompt; the greedy answer's roles are counted from them.
  pairs = read_jsonl(RunDir(run_dir).preferences)
  assert len(pairs) == report["kept"] >= 1
  roles = {"chosen": 0, "rejected": 0}
  for p in pairs:
    k = int(p["id"].rsplit("-", 1)[1])
    assert p["chosen"] in cands[k] and p["rejected"] in cands[k]
    assert judge.score(records[ids[k]], p["chosen"]).total == scores[k].max()
    assert judge.score(records[ids[k]], p["rejected"]).total == min(
        s for t, s in zip(cands[k], scores[k])
        if t.strip() and t.strip() != p["chosen"].strip())
    for side in roles:
      roles[side] += p[side] == cands[k][0]
  assert report["greedy_answer_in_pairs"] == roles


def test_label_pairs_on_world_pairs(runs):
  """The world's chosen/rejected pairs, each sampled "twice" in either
  order, plus one identical pair: the judge's verdicts are kept with the
  better response as chosen; ties and identical pairs are counted."""
  _, world, _ = runs
  records = [json.loads(line) for line in open(
      world / "preferences" / "validation.jsonl")][:6]
  texts, scores, recs = [], [], []
  for i, r in enumerate(records):
    a, b = (r["chosen"], r["rejected"]) if i % 2 else (r["rejected"],
                                                        r["chosen"])
    for t in (a, b):
      texts.append(t)
      scores.append(judge.score(r, t).total)
      recs.append(r)
  texts += [records[0]["chosen"]] * 2
  scores += [1.0, 1.0]
  recs += [records[0]] * 2
  n = len(texts)
  ro = rollout_lib.Rollout(
      records=recs, rows={}, response_BxN=np.zeros((n, 1), np.int32),
      lengths_B=np.ones(n, np.int32), stopped_B=np.ones(n, bool),
      texts=texts, score_B=np.asarray(scores, np.float32))
  cfg = rlaif_lib.RLAIFConfig(min_margin=0.05)
  kept, counts = rlaif_lib.label_pairs(ro, cfg)
  assert counts["identical"] == 1
  assert len(kept) + sum(counts.values()) == 7
  want = sum(judge.score(r, r["chosen"]).total
             - judge.score(r, r["rejected"]).total >= 0.05 for r in records)
  assert len(kept) == want and want >= 3
  for p in kept:
    src = next(r for r in records if r["prompt"] == p["prompt"])
    assert p["chosen"] == src["chosen"] and p["rejected"] == src["rejected"]
  truncated = dataclasses.replace(ro, stopped_B=np.zeros(n, bool))
  _, counts = rlaif_lib.label_pairs(truncated, cfg)
  assert counts["truncated"] == 7


@pytest.mark.parametrize("name", ["ppo.gin", "grpo.gin", "rlaif.gin"])
def test_rl_gin_files_parse(name):
  gin.clear_config()
  try:
    main_lib.parse_gin([os.path.join(REPO, "gin_configs", "stages", name)],
                       [])
    stage = gin.query_parameter("run.stage")
    assert stage.selector == name[:-len(".gin")]
  finally:
    gin.clear_config()


def test_grpo_stage_with_the_directory_tool(runs):
  """The stage wires the directory tool of the world into multi-turn
  rollouts rendered by the SFT run's chat template (the tiny SFT model
  rarely calls it; tests/rl/test_multiturn.py checks the exchange)."""
  root, world, prompts = runs
  run_dir = str(root / "grpo_tool")
  kw = dict(sft_run=str(root / "sft"), prompt_files=prompts,
            reward="judge",
            grpo_config=rl_stages.grpo_lib.GRPOConfig(group_size=2),
            loop=dataclasses.replace(_loop(1), prompts_per_iteration=4),
            optimizer=OPT, mesh=MESH)
  multi = dataclasses.replace(ROLLOUT, max_turns=2, observation_len=48)
  rl_stages.grpo(run_dir=run_dir, tool="directory", tool_world=str(world),
                 rollout=multi, **kw)
  row = _metrics(run_dir)[0]
  assert row["turns"] >= 1.0 and "tool_call_rate" in row
  sample = read_jsonl(RunDir(run_dir).iteration_sample_file(1))[0]
  assert sample["transcript"][-1]["content"] == sample["response"]
  with pytest.raises(ValueError, match="max_turns"):
    rl_stages.grpo(run_dir=str(root / "grpo_tool1"), tool="directory",
                   tool_world=str(world), rollout=ROLLOUT, **kw)
  with pytest.raises(ValueError, match="go together"):
    rl_stages.grpo(run_dir=str(root / "grpo_tool2"), tool="directory",
                   rollout=multi, **kw)
