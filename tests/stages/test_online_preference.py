"""ORPO through the DPO stage (no reference), the KTO stage on unpaired
completions, and online DPO over two rounds, on the tiny SFT run; the
unpaired records' checks and the mismatched rows of KTO's KL estimate."""

import json
import math
import sys

import numpy as np
import pytest
from flax import nnx

from lifejax import sharding, stages
from lifejax.data import unpaired, validation
from lifejax.data import sft as sft_data
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import generation
from lifejax.model import transformer
from lifejax.rl import iteration as iteration_lib, rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import read_lineage
from lifejax.stages import pairs as pairs_lib, rl_common
from lifejax.stages.online_dpo import OnlineDPOConfig, round_seed
from lifejax.train.checkpoint import CheckpointConfig, restore_params
from lifejax.train.loop import LoopConfig

SEQ_LEN = 128  # the short general-instruction prompts (<= 82 tokens) fit


def _loop(steps, **kw):
  return LoopConfig(num_steps=steps, log_every=1, progress=False,
                    tensorboard=False, **kw)


def _rows(path):
  return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def short_pairs(tiny_runs, tmp_path_factory):
  """(train, eval) pair files from the world's short general instructions:
  the chosen answer is the record's, the rejected one the next record's."""
  _, world = tiny_runs
  recs = _rows(world / "eval" / "general_instructions.jsonl")
  out = tmp_path_factory.mktemp("short_pairs")

  def pair(i):
    a, b = recs[i], recs[(i + 1) % len(recs)]
    return {"id": a["id"], "task": a["task"], "prompt": a["messages"][:-1],
            "chosen": a["messages"][-1]["content"],
            "rejected": b["messages"][-1]["content"],
            "reference": a["reference"]}

  write_jsonl(str(out / "train.jsonl"), [pair(i) for i in range(8)])
  write_jsonl(str(out / "eval.jsonl"), [pair(i) for i in range(8, 12)])
  return str(out / "train.jsonl"), str(out / "eval.jsonl")


# -- unpaired records ----------------------------------------------------------


def test_unpaired_records_are_checked_at_path_line(tiny_runs, tmp_path,
                                                   short_pairs):
  root, _ = tiny_runs
  template = artifacts.load_template(str(root / "sft"))
  render = sft_data.ChatRender(template,
                               artifacts.load_tokenizer(str(root / "sft")))
  pairs = _rows(short_pairs[0])[:3]
  derived = unpaired.unpaired_from_pairs(pairs)
  assert [r["label"] for r in derived] == [True, False] * 3
  assert [r["completion"] for r in derived[:2]] == [pairs[0]["chosen"],
                                                    pairs[0]["rejected"]]
  assert derived[1]["id"] == f"{pairs[0]['id']}/rejected"
  good = {"messages": pairs[0]["prompt"], "completion": "Fine.",
          "label": True}
  path = tmp_path / "unpaired.jsonl"
  write_jsonl(str(path), derived[:2] + [
      good, {**good, "label": "yes"}, {**good, "completion": "  "},
      {**good, "messages": pairs[0]["prompt"] + [
          {"role": "assistant", "content": "hi"}]},
      {"prompt": pairs[1]["prompt"], "label": False}])
  with pytest.raises(validation.RecordError,
                     match=rf"{path}:4: wrong_type: field 'label'"):
    unpaired.load_unpaired(str(path), policy="strict", template=template)
  kept, counts = unpaired.load_unpaired(str(path), policy="skip",
                                        template=template, render=render,
                                        seq_len=SEQ_LEN)
  # A prompt ending with an assistant turn cannot take the completion.
  assert counts.as_dict() == {
      "read": 7, "kept": 3, "truncated": 0,
      "skipped": {"wrong_type": 1, "empty_response": 1, "repeated_role": 1,
                  "missing_field": 1}}
  assert len(kept) == 3 and kept[2]["prompt"] == pairs[0]["prompt"]

  # The mismatched row of each record has another prompt's completion.
  records = unpaired.unpaired_from_pairs(_rows(short_pairs[0]))
  partner = unpaired.kl_partners(records, seed=3)
  for i, j in enumerate(partner):
    assert records[j]["prompt"] != records[i]["prompt"]
  np.testing.assert_array_equal(partner,
                                unpaired.kl_partners(records, seed=3))
  completion, kl = unpaired.unpaired_rows(records, render, SEQ_LEN, seed=3)
  np.testing.assert_array_equal(completion["desirable"],
                                [1.0, 0.0] * (len(records) // 2))
  # Row i of the mismatched rows is record i's prompt + its partner's
  # completion, exactly as the render gives them.
  prompt_ids, response_ids = render({**records[0],
                                     "response": records[partner[0]][
                                         "completion"]})
  doc = prompt_ids + response_ids
  np.testing.assert_array_equal(kl["tokens"][0, :len(doc) - 1], doc[:-1])
  assert kl["loss_mask"][0].sum() == len(response_ids)
  with pytest.raises(ValueError, match="share one prompt"):
    unpaired.kl_partners(derived[:2], seed=0)


# -- ORPO: the DPO stage without a reference ---------------------------------


def test_orpo_stage_computes_no_reference(tiny_runs, kit, short_pairs,
                                          tmp_path, monkeypatch):
  root, _ = tiny_runs
  train, eval_ = short_pairs

  def no_reference(*args, **kwargs):
    raise AssertionError("a reference-free loss computed reference log-probs")

  monkeypatch.setattr(sys.modules["lifejax.stages.dpo"], "attach_ref_logps",
                      no_reference)
  # Two held-out pairs are less than a batch: no eval set (and no eval
  # step to compile); the held-out loss is the DPO stage's own.
  few = tmp_path / "two_pairs.jsonl"
  write_jsonl(str(few), _rows(eval_)[:2])
  summary = stages.dpo(
      run_dir=str(root / "orpo"), model=kit.TINY, init_from=str(root / "sft"),
      train_files=[train], eval_file=str(few), loss="orpo",
      loss_hparams={"odds_ratio_weight": 0.2}, mesh=kit.MESH1,
      optimizer=kit.opt(1), loop=_loop(1),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4,
      seq_len=SEQ_LEN)
  assert summary["reference_logps"] == pairs_lib.NO_REFERENCE
  lineage = read_lineage(str(root / "orpo"))
  assert lineage.reference is None
  assert lineage.details["reference"] == pairs_lib.NO_REFERENCE
  assert lineage.details["loss"] == "orpo"
  rows = [r for r in _rows(root / "orpo" / "metrics.jsonl") if "loss" in r]
  # ORPO's loss is the NLL plus lambda x a positive odds-ratio term.
  assert len(rows) == 1 and rows[0]["loss"] > rows[0]["chosen_nll"] > 0


# -- KTO -----------------------------------------------------------------------


def test_kto_stage_on_unpaired_completions(tiny_runs, kit, short_pairs,
                                           tmp_path):
  """An unpaired file (derived from pairs) trains end to end; at step 1
  policy == reference, so r = 0 and z0 = 0 and every completion loses
  lambda / 2. The same stage reading the pairs with from_pairs loads the
  same records."""
  root, _ = tiny_runs
  train, eval_ = short_pairs
  files = {}
  for name, path in (("train", train), ("eval", eval_)):
    files[name] = str(tmp_path / f"{name}_unpaired.jsonl")
    write_jsonl(files[name], unpaired.unpaired_from_pairs(_rows(path)))
  summary = stages.kto(
      run_dir=str(root / "kto"), model=kit.TINY, init_from=str(root / "sft"),
      train_files=[files["train"]], eval_file=files["eval"],
      loss_hparams={"beta": 0.1, "desirable_weight": 2.0}, mesh=kit.MESH1,
      optimizer=kit.opt(2), loop=_loop(2),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4,
      seq_len=SEQ_LEN)
  first = _rows(root / "kto" / "metrics.jsonl")[0]
  assert first["kl"] == 0.0
  assert first["desirable_reward"] == 0.0
  assert first["undesirable_reward"] == 0.0
  f = first["desirable_fraction"]
  assert first["loss"] == pytest.approx(0.5 * (2.0 * f + (1.0 - f)),
                                        abs=1e-6)
  assert summary["eval"]["eval/kl"] >= 0.0
  assert summary["input_records"][files["train"]]["kept"] == 16
  lineage = read_lineage(str(root / "kto"))
  assert lineage.reference == str(root / "sft")
  assert (lineage.details["train_desirable"],
          lineage.details["train_undesirable"]) == (8, 8)

  from_pairs = pairs_lib.prepare_unpaired(
      "kto", kit.MESH1, 4, str(root / "sft"), [train], eval_, SEQ_LEN,
      "skip", "strict", from_pairs=True)
  from_file = pairs_lib.prepare_unpaired(
      "kto", kit.MESH1, 4, str(root / "sft"), [files["train"]],
      files["eval"], SEQ_LEN, "skip", "strict", from_pairs=False)
  assert from_pairs.train == from_file.train
  assert from_pairs.eval == from_file.eval


# -- online DPO ----------------------------------------------------------------

ROLLOUT = rollout_lib.RolloutConfig(prompt_len=96, max_new_tokens=8)
PAIRS = rlaif_lib.RLAIFConfig(min_margin=0.0, drop_truncated=False,
                              prompts_per_batch=4)


def test_online_dpo_two_rounds_sample_the_current_policy(tiny_runs, kit):
  """Two rounds of 2 steps. Each round's pairs are exactly what the RLAIF
  code samples and labels with the policy at the start of that round (the
  SFT model for round 1, the checkpoint after round 1 for round 2), not
  what the SFT model would give for round 2; ties and pairs are counted
  per round; with the reference the SFT model, round 1 starts at log 2."""
  root, world = tiny_runs
  run_dir = str(root / "online_dpo")
  prompt_file = str(world / "eval" / "general_instructions.jsonl")
  summary = stages.online_dpo(
      run_dir=run_dir, init_from=str(root / "sft"),
      prompt_files=[prompt_file], judge_preset="length_hackable",
      online=OnlineDPOConfig(prompts_per_round=4, steps_per_round=2),
      pairs=PAIRS, rollout=ROLLOUT, loss_hparams={"beta": 0.1},
      mesh=kit.MESH1, optimizer=kit.opt(4, 1e-2), loop=_loop(4),
      checkpoint=CheckpointConfig(every_steps=2, async_save=False),
      batch_size=2, seq_len=112)
  rows = _rows(RunDir(run_dir).metrics)
  starts = [r for r in rows if "round" in r]
  assert [(r["step"], r["round"]) for r in starts] == [(1, 1.0), (3, 2.0)]
  for r, hist in zip(starts, summary["rounds"]):
    got = read_jsonl(RunDir(run_dir).iteration_sample_file(int(r["round"])))
    assert r["pairs"] == len(got) == hist["pairs"]
    assert r["ties"] == r["filtered_tie"]
    assert r["pairs"] + r["filtered"] == r["prompts"] == 4
  assert starts[0]["pairs"] >= 1
  assert starts[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
  assert starts[1]["loss"] != pytest.approx(math.log(2), abs=1e-4)

  # Rebuild each round's pairs with the RLAIF code and the policy of the
  # start of the round.
  tmpl = artifacts.load_template(str(root / "sft"))
  tok = artifacts.load_tokenizer(str(root / "sft"))
  codec = rollout_lib.chat_codec(tmpl, tok)
  records, _ = rl_common.prompts([prompt_file], codec, ROLLOUT.prompt_len,
                                 need_judge=True)
  batches = iteration_lib.PromptBatches(records, 4, seed=0)
  round_prompts = [next(batches), next(batches)]
  mesh = sharding.make_mesh(kit.MESH1)
  graphdef, abstract = nnx.split(transformer.abstract_model(kit.TINY),
                                 nnx.Param)
  specs = sharding.param_specs(abstract, mesh, kit.MESH1.rules)
  _, sft_params = artifacts.load_params(str(root / "sft"),
                                        transformer.Transformer, kit.TINY,
                                        mesh, kit.MESH1.rules)
  after_round1 = restore_params(
      run_dir, nnx.to_pure_dict(abstract),
      sharding.named(mesh, nnx.to_pure_dict(specs)), step=2)
  scorer = rollout_lib.JudgeScorer(rollout_lib.judge_config(
      "length_hackable"))
  sample_cfg = ROLLOUT.sampling_config(codec.stop_ids, codec.pad_id,
                                       codec.vocab_limit)

  def labelled(params, rnd):
    sample = generation.make_sampler(generation.default_sample_fn(),
                                     graphdef, params, sample_cfg)
    return rlaif_lib.generate_preferences(
        round_prompts[rnd], codec=codec, rollout_cfg=ROLLOUT, sample=sample,
        scorer=scorer, cfg=PAIRS, seed=round_seed(0, rnd),
        id_prefix=f"online_dpo-r{rnd + 1}")

  logged = [read_jsonl(RunDir(run_dir).iteration_sample_file(k))
            for k in (1, 2)]
  assert labelled(sft_params, 0)[0] == logged[0]
  pairs2, report2 = labelled(after_round1, 1)
  assert pairs2 == logged[1]
  assert report2["filtered_by_reason"]["tie"] == starts[1]["ties"]
  assert labelled(sft_params, 1)[0] != logged[1]


@pytest.mark.parametrize("kwargs,match", [
    (dict(loop=_loop(5)), r"LoopConfig.num_steps=5 is not a multiple of "
     r"OnlineDPOConfig.steps_per_round=2"),
    (dict(checkpoint=CheckpointConfig(every_steps=3)),
     "CheckpointConfig.every_steps=3"),
    (dict(loss="orpo", online=OnlineDPOConfig(steps_per_round=2,
                                              reference="round")),
     "OnlineDPOConfig.reference is set but has no effect"),
    (dict(pairs=rlaif_lib.RLAIFConfig(prompts_per_batch=3)),
     "RLAIFConfig.prompts_per_batch=3 does not divide"),
    (dict(seq_len=64), r"online_dpo.seq_len=64 < RolloutConfig.prompt_len"),
    (dict(loss="kto"), "online_dpo.loss: 'kto' is not a preference loss"),
])
def test_online_dpo_option_errors_name_the_option(tmp_path, kwargs, match):
  """Checked before anything is loaded (the run directory and init_from
  need not exist)."""
  args = dict(run_dir=str(tmp_path / "run"), init_from=str(tmp_path / "no"),
              prompt_files=["none.jsonl"],
              online=OnlineDPOConfig(prompts_per_round=4, steps_per_round=2),
              pairs=PAIRS, rollout=ROLLOUT, loop=_loop(4),
              checkpoint=CheckpointConfig(every_steps=2), seq_len=112,
              batch_size=2)
  with pytest.raises((ValueError, KeyError), match=match):
    stages.online_dpo(**{**args, **kwargs})
  assert not (tmp_path / "run").exists()


def test_kto_option_errors_name_the_option(tmp_path, kit):
  args = dict(run_dir=str(tmp_path / "run"), model=kit.TINY,
              init_from=str(tmp_path / "no"), train_files=["none.jsonl"],
              eval_file="none.jsonl", mesh=kit.MESH1)
  with pytest.raises(ValueError, match="kto.loss_hparams: 'gamma'"):
    stages.kto(**args, loss_hparams={"gamma": 1.0})
  with pytest.raises(KeyError, match="kto.loss: 'dpo' is not a unpaired"):
    stages.kto(**args, loss="dpo")
  with pytest.raises(ValueError, match="kto.bad_records='maybe'"):
    stages.kto(**args, bad_records="maybe")
