"""Multi-turn rollouts with a tool (issue 20.3): token-in/token-out rows,
observation tokens loss-masked, the final answer scored, the directory
tool, and the learner's log-probs equal to the exact sampler's over a
whole exchange."""

import dataclasses

import jax
import numpy as np
import pytest

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl
from lifejax.rl import fit, grpo as grpo_lib, iteration as iteration_lib
from lifejax.rl import layout as layout_lib, multiturn
from lifejax.rl import rollout as rollout_lib
from lifejax.run.layout import RunDir
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.world import generator, judge, tools

STOP = 31
CALL = 7  # the toy's tool call: a turn whose first id is 7
OBS = [29, 28, 27]  # the toy's observation ids (plus the query's length)


class ToyTool:
  """A turn starting with an id in `calls` calls the tool; its observation
  is OBS followed by min(len(turn), 3) copies of id 26."""

  name = "toy"

  def __init__(self, calls=(CALL,)):
    self.calls = calls

  def parse(self, text):
    ids = [int(t) for t in text.split()]
    return str(len(ids)) if ids and ids[0] in self.calls else None

  def __call__(self, query):
    return " ".join(["26"] * min(int(query), 3))

  def observation(self, query, result):
    return " ".join(str(i) for i in OBS) + (" " + result if result else "")


def toy_codec(stops=(STOP,)):
  return rollout_lib.Codec(
      encode=lambda r: list(r["prompt_ids"]),
      decode=lambda ids: " ".join(str(int(i)) for i in ids
                                  if i not in stops),
      stop_ids=stops, pad_id=0,
      observation=lambda text: [int(t) for t in text.split()])


class Scripted:
  """A sampler that plays fixed turns and records the contexts it saw."""

  def __init__(self, turns):
    self.turns, self.contexts = turns, []

  def __call__(self, prompt_BxP, mask_BxP, rng):
    del rng
    t = len(self.contexts)
    self.contexts.append([row[m > 0].tolist()
                          for row, m in zip(prompt_BxP, mask_BxP)])
    n = max(len(x) for x in self.turns[t])
    toks = np.zeros((len(prompt_BxP), 4), np.int32)
    lens = np.zeros(len(prompt_BxP), np.int32)
    for i, ids in enumerate(self.turns[t]):
      toks[i, :len(ids)] = ids
      lens[i] = len(ids)
    assert n <= 4
    return toks, lens, np.full(toks.shape, -0.5, np.float32)


def test_rows_are_the_ids_sampled_and_observed():
  cfg = rollout_lib.RolloutConfig(prompt_len=5, max_new_tokens=4,
                                  max_turns=3, observation_len=6)
  records = [{"prompt_ids": [11, 12]}, {"prompt_ids": [13, 14, 15]}]
  # Row 0 calls the tool, then answers; row 1 answers at once.
  sampler = Scripted([[[CALL, 9, STOP], [22, 23, STOP]],   # turn 1
                      [[20, 21, STOP], [1, STOP]]])       # turn 2
  ro = multiturn.collect(records, codec=toy_codec(), cfg=cfg, sample=sampler,
                         rng=jax.random.PRNGKey(0), tool=ToyTool())
  obs = OBS + [26, 26]
  assert sampler.contexts[1][0] == [11, 12, CALL, 9, STOP] + obs
  assert len(sampler.contexts) == 2  # every sample finished after turn 2
  p = cfg.prompt_len
  want0 = [CALL, 9, STOP] + obs + [20, 21, STOP]
  assert ro.rows["tokens"][0, p - 1:p - 1 + len(want0)].tolist() == (
      [12] + want0[:-1])
  assert ro.rows["targets"][0, p - 1:p - 1 + len(want0)].tolist() == want0
  mask0 = ro.rows["loss_mask"][0, p - 1:p - 1 + len(want0)].tolist()
  assert mask0 == [1, 1, 1] + [0] * len(obs) + [1, 1, 1]
  assert ro.rows["loss_mask"][0].sum() == 6
  assert ro.rows["loss_mask"][1].sum() == 3
  assert ro.texts == ["20 21", "22 23"]
  assert ro.turns_B.tolist() == [2, 1] and ro.tool_calls_B.tolist() == [1, 0]
  assert ro.stopped_B.tolist() == [True, True]
  assert ro.transcripts[0][1] == {"role": "user",
                                  "content": "29 28 27 26 26"}
  # The sampler's log-probs sit on sampled ids only.
  assert ro.sample_logp[0].sum() == pytest.approx(-0.5 * 6)
  assert cfg.seq_len == 5 + 3 * 4 + 2 * 6 - 1
  assert ro.rows["tokens"].shape == (2, cfg.seq_len)
  m = rollout_lib.rollout_metrics(ro)
  assert m["tool_call_rate"] == 0.5 and m["turns"] == 1.5


def test_a_call_in_the_last_turn_is_the_answer_and_long_results_are_cut():
  cfg = rollout_lib.RolloutConfig(prompt_len=3, max_new_tokens=4,
                                  max_turns=2, observation_len=4)
  sampler = Scripted([[[CALL, 9, 9, STOP]], [[CALL, STOP]]])
  ro = multiturn.collect([{"prompt_ids": [11]}], codec=toy_codec(), cfg=cfg,
                         sample=sampler, rng=jax.random.PRNGKey(0),
                         tool=ToyTool())
  assert ro.observation_cut_B.tolist() == [True]  # 3 + 3 ids > 4: cut
  assert ro.texts == [str(CALL)] and ro.tool_calls_B.tolist() == [1]
  with pytest.raises(ValueError, match="observation_len=2"):
    multiturn.collect([{"prompt_ids": [11]}], codec=toy_codec(),
                      cfg=dataclasses.replace(cfg, observation_len=2),
                      sample=Scripted([[[CALL, STOP]], [[1, STOP]]]),
                      rng=jax.random.PRNGKey(0), tool=ToyTool())


def test_directory_tool():
  facts = ({"subject": "Selma Holley", "statement": "Selma Holley works in "
            "Research."},
           {"subject": "Research", "statement": "Research has 40 people."},
           {"subject": "Selma Holley", "statement": "Selma Holley is a "
            "director."})
  d = tools.Directory(facts, max_facts=2)
  assert d.parse("lookup: Selma Holley\nthanks") == "Selma Holley"
  assert d.parse("Lookup:   ") is None and d.parse("Selma Holley") is None
  assert d.matches("what does selma holley do in research?") == [
      "Selma Holley", "Research"]
  assert d("Selma Holley") == ("Selma Holley works in Research. Selma "
                               "Holley is a director.")
  assert d("Nobody") == ""
  assert "no entry" in d.observation("Nobody", "")
  with pytest.raises(ValueError, match="statement"):
    tools.Directory(({"subject": "x"},))


def test_directory_of_a_generated_world(tmp_path):
  generator.generate_world(str(tmp_path), seed=0, scale=0.2)
  d = tools.Directory.from_world(str(tmp_path))
  rows = read_jsonl(str(tmp_path / "facts" / "facts.jsonl"))
  held = next(r for r in rows if r["heldout"])
  # The tool reaches held-out facts, which no training text states.
  assert held["statement"] in " ".join(
      f["statement"] for f in d.facts if f["subject"] == held["subject"])
  assert held["subject"] in d.matches(f"tell me about {held['subject']}")
  with pytest.raises(FileNotFoundError, match="facts.jsonl"):
    tools.Directory.from_world(str(tmp_path / "nowhere"))
  # The tool-use SFT set and the fact-QA prompts (the RL task).
  counts = tools.tool_use_sets(str(tmp_path), str(tmp_path / "tools"))
  assert counts["train"]["tool_use"] > 0
  assert counts["train"]["fact_qa"] == (counts["train"]["tool_use"]
                                        + counts["train"]["flawed"])
  conv = read_jsonl(str(tmp_path / "tools" / "tool_use_train.jsonl"))[0]
  roles = [m["role"] for m in conv["messages"]]
  assert roles[-4:] == ["user", "assistant", "user", "assistant"]
  call, obs, answer = (m["content"] for m in conv["messages"][-3:])
  fact = next(r for r in rows if r["id"] == conv["reference"]["fact_id"])
  assert call == f"lookup: {fact['subject']}"
  assert fact["statement"] in obs  # the directory returns the fact
  assert judge.score(conv, answer).components["correctness"] == 1.0


def _toy_forwards(toy, sampler_kind):
  mesh = sharding.make_mesh(toy.mesh_cfg)
  layout, abstract, specs = layout_lib.make_layout("policy", toy.cfg, mesh,
                                                   toy.mesh_cfg.rules)
  _, lm = toy.random_lm()
  params = jax.device_put(layout_lib.assemble_params(layout, abstract, lm),
                          sharding.named(mesh, specs))
  return layout_lib.PolicyForwards(layout, mesh, toy.mesh_cfg.rules, lm,
                                   sampler=sampler_kind), params


@pytest.mark.parametrize("sampler_kind", ["exact", "kv_cache"])
def test_learner_sees_the_sampled_exchange(toy, sampler_kind):
  """A random LM that calls the toy tool on some samples: the learner's
  recomputation over the whole exchange equals the exact sampler's
  log-probs bit for bit (token-in/token-out); the KV-cache sampler is
  within rounding."""
  fw, params = _toy_forwards(toy, sampler_kind)
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=5,
                                  max_turns=2, observation_len=6,
                                  sampler=sampler_kind)
  # Random tokens: many stop ids and call ids, so some samples call.
  codec = toy_codec(stops=(STOP, 25, 24, 23, 22))
  ro = multiturn.collect(
      toy.prompt_records(16), codec=codec, cfg=cfg,
      sample=fw.sampler(params, cfg.sampling_config(codec.stop_ids, 0)),
      rng=jax.random.PRNGKey(4), tool=ToyTool(range(1, 12)), group_size=2,
      stats=lambda rows: fw.stats(params, rows))
  assert 0 < ro.tool_calls_B.sum() < len(ro.tool_calls_B)
  mask = ro.rows["loss_mask"] > 0
  if sampler_kind == "exact":
    np.testing.assert_array_equal(ro.sample_logp[mask], ro.old_logp[mask])
  else:
    np.testing.assert_allclose(ro.sample_logp[mask], ro.old_logp[mask],
                               atol=1e-4)


def test_grpo_with_a_tool(toy, tmp_path):
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=5,
                                  max_turns=2, observation_len=6)
  loop = iteration_lib.RLLoopConfig(
      num_iterations=2, prompts_per_iteration=8, epochs=1, minibatch_size=16,
      samples_every=1, tensorboard=False, progress=False)
  _, lm = toy.random_lm()
  common = dict(
      algorithm=grpo_lib.GRPO(grpo_lib.GRPOConfig(group_size=2)),
      layout_kind="policy", policy_cfg=toy.cfg, lm_params=lm,
      mesh=sharding.make_mesh(toy.mesh_cfg), rules=toy.mesh_cfg.rules,
      prompts=iteration_lib.PromptBatches(toy.prompt_records(16), 8, seed=0),
      codec=toy_codec(stops=(STOP, 25, 24, 23, 22)),
      scorer=toy.preferred_share, rollout_cfg=cfg, loop_cfg=loop,
      optimizer_cfg=OptimizerConfig(learning_rate=1e-2, schedule="constant",
                                    warmup_steps=0, weight_decay=0.0),
      checkpoint_cfg=CheckpointConfig(async_save=False))
  run = fit.train(run_dir=str(tmp_path), tool=ToyTool(range(1, 12)),
                  samples_dir=str(tmp_path / "samples"), **common)
  rows = read_jsonl(RunDir(str(tmp_path)).metrics)
  assert [r["iteration"] for r in rows] == [1, 2]
  assert all(0 < r["tool_call_rate"] < 1 for r in rows)
  sample = read_jsonl(RunDir(str(tmp_path)).iteration_sample_file(1))[0]
  assert sample["transcript"][0]["role"] == "assistant"
  assert run.summary["final_iteration"] == 2
  with pytest.raises(ValueError, match="max_turns"):
    fit.train(run_dir=str(tmp_path / "x"), tool=ToyTool(),
              **{**common, "rollout_cfg": dataclasses.replace(
                  cfg, max_turns=1)})
  with pytest.raises(ValueError, match="rollout_lag"):
    fit.train(run_dir=str(tmp_path / "y"), tool=ToyTool(),
              **{**common, "loop_cfg": dataclasses.replace(
                  loop, rollout_lag=1)})
