"""The chain, link by link, on the real tiny lifecycle: every evaluated
stage writes its per-prompt rows, the rows agree with the stage's own
aggregate metrics, and the report's link statistics are the ones a
brute-force recomputation from those rows gives."""

import json
import os

import numpy as np
import pytest

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl
from lifejax.eval import chain, policy_eval, reward_eval, runs, stats
from lifejax.eval.lifecycle_evals import sft_answers
from lifejax.rl import rollout
from lifejax.run import artifacts
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.stages.lifecycle import balanced_subset


def _eval(run_dir):
  with open(RunDir(run_dir).eval) as f:
    return json.load(f)


def _stages(root):
  stages = runs.read_stages(root)
  return stages, {s.name: runs.stage_metrics(s.run_dir) for s in stages}


def test_every_answer_stage_writes_rows_that_match_its_metrics(
    tiny_lifecycle):
  lr = LifecycleRoot(tiny_lifecycle)
  tests = read_jsonl(lr.world_instructions("test"))
  names = [s.name for s in runs.read_stages(tiny_lifecycle)
           if s.name in ("pretrain", "sft", "dpo", "ppo")]
  assert names[:3] == ["pretrain", "sft", "dpo"]  # the tiny run has no PPO
  sft_rows = read_jsonl(RunDir(lr.stage("sft").root).eval_answers)
  for name in names:
    run = lr.stage(name).root
    ev = _eval(run)
    rows = read_jsonl(RunDir(run).eval_answers)
    n = int(ev["instruct/prompts"])
    assert [r["id"] for r in rows] == [
        t["id"] for t in balanced_subset(tests, n)], name
    assert np.mean([r["correct"] for r in rows]) == pytest.approx(
        ev["instruct/accuracy"]), name
    assert np.mean([r["format"] for r in rows]) == pytest.approx(
        ev["instruct/format"]), name
    kinds = {k for r in rows for k in r["flaws"]}
    for k in kinds:
      have = [r["flaws"][k] for r in rows if k in r["flaws"]]
      assert np.mean(have) == pytest.approx(ev[f"instruct/flaw/{k}"]), (
          name, k)
    if name in ("dpo", "ppo"):  # each row carries SFT's answer's scores
      assert all(set(r["sft"]) >= {"answer", "correct", "format", "flaws"}
                 for r in rows)
      # SFT's answers are its own evaluation's (not generated again).
      assert [r["sft"]["answer"] for r in rows] == [
          r["answer"] for r in sft_rows]
      assert sft_answers(lr.stage("sft").root, tests[:1]) is None


def test_reward_accuracy_is_measured_on_the_test_pairs(tiny_lifecycle):
  lr = LifecycleRoot(tiny_lifecycle)
  ev = _eval(lr.stage("reward").root)
  pairs = read_jsonl(lr.world_preferences("test"))
  assert ev["pair_split"] == "test" and ev["pairs"] == len(pairs)
  assert sum(v for k, v in ev.items() if k.startswith("pairs/")) == len(pairs)
  # Per flaw and task: the counts add up to each flaw's, and the accuracies
  # average back to it.
  for flaw in {p["flaw"] for p in pairs}:
    cells = {k.rsplit("/", 1)[1]: v for k, v in ev.items()
             if k.startswith(f"pairs_by_task/{flaw}/")}
    assert cells == {t: float(sum(p["flaw"] == flaw and p["task"] == t
                                  for p in pairs)) for t in cells}
    assert sum(cells.values()) == ev[f"pairs/{flaw}"]
    assert sum(ev[f"pair_accuracy_by_task/{flaw}/{t}"] * c
               for t, c in cells.items()) == pytest.approx(
                   ev[f"pair_accuracy/{flaw}"] * ev[f"pairs/{flaw}"])
  assert 0.0 <= ev["pair_accuracy"] <= 1.0 and "dev_pair_accuracy" in ev


def test_reward_calibration_is_on_the_raw_bradley_terry_scale(
    tiny_lifecycle):
  """ECE and the mean margin come from sigmoid(raw chosen - raw rejected),
  recomputed here from the reward checkpoint, not from the normalized
  scores RL and the policy evals use (those divide the margin by the
  reward std, which moves ECE)."""
  lr = LifecycleRoot(tiny_lifecycle)
  reward_run, sft_run = lr.stage("reward").root, lr.stage("sft").root
  ev = _eval(reward_run)
  pairs = read_jsonl(lr.world_preferences("test"))
  scorer = rollout.load_reward_scorer(
      reward_run, sharding.make_mesh(sharding.MeshConfig(1, 1, 1)),
      sharding.DEFAULT_RULES)
  # The raw and normalized scales differ, so the checks below tell them
  # apart.
  assert abs(scorer.std - 1.0) > 1e-3
  fn = policy_eval.response_reward_fn(
      scorer.raw, artifacts.load_template(sft_run),
      artifacts.load_tokenizer(sft_run), pairs, 384)
  diff = (np.asarray(fn([p["chosen"] for p in pairs]), np.float64)
          - np.asarray(fn([p["rejected"] for p in pairs]), np.float64))
  assert ev["mean_margin"] == pytest.approx(diff.mean(), rel=1e-4, abs=1e-5)
  ece, _ = reward_eval.calibration(1 / (1 + np.exp(-diff)))
  assert ev["ece"] == pytest.approx(ece, rel=1e-4, abs=1e-5)
  assert ev["pair_accuracy"] == pytest.approx(np.mean(diff > 0))


def test_chain_links_equal_a_recomputation_from_the_rows(tiny_lifecycle):
  stages, metrics = _stages(tiny_lifecycle)
  links = {k.measure: k for k in chain.chain_links(stages, metrics)}
  lr = LifecycleRoot(tiny_lifecycle)
  base = {r["id"]: r for r in read_jsonl(
      RunDir(lr.stage("pretrain").root).eval_answers)}
  sft = {r["id"]: r for r in read_jsonl(
      RunDir(lr.stage("sft").root).eval_answers)}
  fmt = links["format: SFT − base"]
  a = np.array([sft[i]["format"] for i in base], float)
  b = np.array([base[i]["format"] for i in base], float)
  assert fmt.effect == pytest.approx(a.mean() - b.mean())
  gained, lost = int(np.sum(a > b)), int(np.sum(a < b))
  assert fmt.p == pytest.approx(stats.sign_test_p(gained, lost))
  assert fmt.holds == (a.mean() > b.mean() and fmt.p < chain.ALPHA)
  with open(RunDir(lr.stage("sft").root).eval_rows) as f:
    after = json.load(f)["general_holdout"]
  with open(RunDir(lr.stage("pretrain").root).eval_rows) as f:
    before = json.load(f)["general_holdout"]
  forget = links["perplexity on general_holdout: sft / pretrain"]
  # One unit per packed row with tokens (the CI resamples rows, not the
  # few batches).
  assert forget.n == len(after) == len(before) > 8
  assert all(w > 0 for _, w in after)
  la, lb = (sum(x for x, _ in v) for v in (after, before))
  w = sum(y for _, y in after)
  assert forget.effect == pytest.approx(np.exp((la - lb) / w))
  assert forget.effect == pytest.approx(
      _eval(lr.stage("sft").root)["perplexity/general_holdout"]
      / _eval(lr.stage("pretrain").root)["perplexity/general_holdout"],
      rel=1e-5)
  assert forget.holds == (forget.ci[1] < 1 + chain.FORGETTING_MARGIN)
  # Knowledge: the pretrained model's per-fact ranking (fact_rank.json),
  # consistent with its eval.json, tested against chance over facts.
  with open(RunDir(lr.stage("pretrain").root).fact_rank) as f:
    facts = json.load(f)["facts"]
  ev = _eval(lr.stage("pretrain").root)
  hits = [h for r in facts.values() for h in r["hits"]]
  assert np.mean(hits) == pytest.approx(ev["fact_rank/accuracy"])
  assert len(facts) == ev["fact_rank/facts"] == ev["fact_probe_questions"]
  excess = np.array([np.mean(r["hits"]) - 1 / r["candidates"]
                     for r in facts.values()])
  knows = links["fact ranking − chance (pretrain, held-out facts)"]
  assert knows.effect == pytest.approx(excess.mean())
  assert knows.ci[0] <= excess.mean() <= knows.ci[1]
  assert knows.p == pytest.approx(stats.sign_test_p(
      int(np.sum(excess > 0)), int(np.sum(excess < 0))))
  assert knows.holds == (excess.mean() > 0 and knows.p < chain.ALPHA)
  rm = _eval(lr.stage("reward").root)
  pair = links["pair accuracy (held-out pairs)"]
  k = round(rm["pair_accuracy"] * rm["pairs"])
  assert pair.p == pytest.approx(stats.binom_test_p(k, int(rm["pairs"])))
  for name in ("dpo",):
    rows = read_jsonl(RunDir(lr.stage(name).root).eval_answers)
    after = [sum(r["flaws"].values()) for r in rows]
    before = [sum(r["sft"]["flaws"].values()) for r in rows]
    link = links[f"flaws per answer: {name} / SFT"]
    if sum(before):
      assert link.effect == pytest.approx(np.mean(after) / np.mean(before))
    win = links[f"judge win rate vs SFT ({name})"]
    assert win.effect == _eval(lr.stage(name).root)["win_rate_vs_ref"]


def test_report_tells_the_chain_link_by_link(tiny_lifecycle):
  with open(os.path.join(tiny_lifecycle, "report.md")) as f:
    md = f.read()
  section = md.split("## The chain, link by link", 1)[1].split("\n## ", 1)[0]
  for claim in ("SFT teaches the form", "the reward model sees the flaws",
                "DPO beats SFT", "DPO removes what SFT got wrong",
                "the KL term keeps DPO near SFT"):
    assert f"| {claim} |" in section, claim
  assert "tested links." in section


def test_format_value_prints_each_kind_in_its_units():
  assert chain.format_value(0.2184, "pct") == "21.8%"
  assert chain.format_value(-0.031, "pts") == "-3.1 pts"
  assert chain.format_value(0.8912, "ratio") == "0.891"
  assert chain.format_value(None, "pct") == "—"
  assert chain.format_value(float("nan"), "ratio") == "—"
