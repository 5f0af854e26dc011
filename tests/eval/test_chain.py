"""The chain, link by link, on the real tiny lifecycle: every evaluated
stage writes its per-prompt rows, the rows agree with the stage's own
aggregate metrics, and the report's link statistics are the ones a
brute-force recomputation from those rows gives."""

import json
import os

import numpy as np
import pytest

from lifejax.data.jsonl import read_jsonl
from lifejax.eval import chain, runs, stats
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


def test_reward_accuracy_is_measured_on_the_test_pairs(tiny_lifecycle):
  lr = LifecycleRoot(tiny_lifecycle)
  ev = _eval(lr.stage("reward").root)
  pairs = read_jsonl(lr.world_preferences("test"))
  assert ev["pair_split"] == "test" and ev["pairs"] == len(pairs)
  assert sum(v for k, v in ev.items() if k.startswith("pairs/")) == len(pairs)
  assert 0.0 <= ev["pair_accuracy"] <= 1.0 and "dev_pair_accuracy" in ev


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
  with open(RunDir(lr.stage("sft").root).eval_batches) as f:
    after = json.load(f)["general_holdout"]
  with open(RunDir(lr.stage("pretrain").root).eval_batches) as f:
    before = json.load(f)["general_holdout"]
  forget = links["perplexity on general_holdout: sft / pretrain"]
  la, lb = (sum(x for x, _ in v) for v in (after, before))
  w = sum(y for _, y in after)
  assert forget.effect == pytest.approx(np.exp((la - lb) / w))
  assert forget.effect == pytest.approx(
      _eval(lr.stage("sft").root)["perplexity/general_holdout"]
      / _eval(lr.stage("pretrain").root)["perplexity/general_holdout"],
      rel=1e-5)
  assert forget.holds == (forget.ci[1] < 1 + chain.FORGETTING_MARGIN)
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
