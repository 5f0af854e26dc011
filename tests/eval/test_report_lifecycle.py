"""report.md of a real tiny lifecycle: a row per stage with the runs' own
numbers, the failure -> fix chain computed from them, plots, curation."""

import dataclasses
import json
import os

import pytest

from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import lifecycle_evals, report, runs
from lifejax.run import lineage
from lifejax.run.layout import LifecycleRoot, RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _eval(run_dir: str) -> dict:
  with open(RunDir(run_dir).eval) as f:
    return json.load(f)


def _write_eval(run_dir: str, **updates: float) -> None:
  ev = _eval(run_dir)
  ev.update(updates)
  with open(RunDir(run_dir).eval, "w") as f:
    json.dump(ev, f)


def _ledger(root: str) -> dict:
  """lifecycle.json with each run_dir resolved against the root (the ledger
  stores them relative to it)."""
  with open(LifecycleRoot(root).ledger) as f:
    ledger = json.load(f)
  for s in ledger["stages"]:
    assert not os.path.isabs(s["run_dir"]), s["run_dir"]
    s["run_dir"] = os.path.join(root, s["run_dir"])
  return ledger


def _stage_rows(md: str) -> dict[str, str]:
  section = md.split("## Stages", 1)[1].split("\n## ", 1)[0]
  rows = [l for l in section.splitlines() if l.startswith("| `")]
  return {r.split("`")[1]: r for r in rows}


def _is_png(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 2000


def test_one_row_per_stage_with_the_runs_numbers(tiny_lifecycle):
  path = report.write_report(tiny_lifecycle)
  assert path == LifecycleRoot(tiny_lifecycle).report
  with open(path, encoding="utf-8") as f:
    md = f.read()
  stages = _ledger(tiny_lifecycle)["stages"]
  rows = _stage_rows(md)
  assert list(rows) == [s["name"] for s in stages]
  expected = {  # label in the row -> (eval.json key, format)
      "pretrain": [("held-out ppl", "perplexity", "num"),
                   ("fact-probe acc", "fact_probe_accuracy", "pct"),
                   ("instruction acc", "instruct/accuracy", "pct")],
      "sft": [("instruction acc", "instruct/accuracy", "pct"),
              ("format", "instruct/format", "pct"),
              ("refusal correct", "instruct/refusal", "pct")],
      "reward": [("pair acc", "pair_accuracy", "pct"), ("ECE", "ece", "num")],
      "dpo": [("win rate vs SFT", "win_rate_vs_ref", "pct"),
              ("win rate SE", "win_rate_se", "pct"),
              ("wins", "wins", "int"), ("losses", "losses", "int"),
              ("sign test p", "sign_test_p", "num"),
              ("KL to ref", "kl_to_ref", "num"),
              ("words/answer", "response_words", "num"),
              ("refusal rate", "refusal_rate", "pct")],
  }
  for s in stages:
    ev = _eval(s["run_dir"])
    row = rows[s["name"]]
    for label, key, kind in expected.get(s["kind"], []):
      assert f"{label} {report.fmt(ev[key], kind)}" in row, (label, row)
    for key in ev:
      if s["kind"] == "pretrain" and key.startswith("perplexity/"):
        name = key.split("/", 1)[1]
        assert f"ppl {name} {report.fmt(ev[key])}" in row
    summary = RunDir(s["run_dir"]).summary
    if s["kind"] == "release":  # an evaluation, not a training run
      assert not os.path.exists(summary)
      continue
    with open(summary) as f:
      steps = json.load(f).get("final_step")
    if steps is not None:
      assert f"| {steps} |" in row
    # Every stage compiled something (a fresh process per lifecycle), and
    # the compile time is part of the stage's time and in its row.
    assert s["compiles"] > 0 and 0 < s["compile_seconds"] < s["seconds"], s
    # The evaluation after the run is timed on its own, within the stage.
    assert 0 < s["eval_seconds"] < s["seconds"], s
    assert (f"| {s['compile_seconds']:.1f} | {s['eval_seconds']:.1f} |"
            in row), row
  # The lifecycle scores DPO's answers with the reward model too.
  dpo_eval = _eval(next(s["run_dir"] for s in stages if s["name"] == "dpo"))
  assert (f"reward Δ vs SFT {report.fmt(dpo_eval['reward_gain_vs_ref'])}"
          in rows["dpo"])
  assert (f"judge Δ vs SFT {report.fmt(dpo_eval['judge_gain_vs_ref'])}"
          in rows["dpo"])


def test_plots_and_curation_summary(tiny_lifecycle):
  report.write_report(tiny_lifecycle)
  lr = LifecycleRoot(tiny_lifecycle)
  assert _is_png(lr.loss_curves_plot)
  assert _is_png(lr.forgetting_plot)
  with open(lr.report, encoding="utf-8") as f:
    md = f.read()
  assert "![Loss curves](plots/loss_curves.png)" in md
  assert "![Forgetting panel](plots/forgetting.png)" in md
  with open(lr.curation_report) as f:
    cur = json.load(f)
  t = cur["totals"]
  assert f"Documents in {t['docs_in']:,} → out {t['docs_out']:,}" in md
  for r in cur["mix"]:
    assert f"| {r['source']} | {r['docs']:,} | {r['words']:,} |" in md


def test_chain_is_built_from_the_numbers(lifecycle_copy):
  root = lifecycle_copy(heavy=False)
  dirs = {s["name"]: s["run_dir"] for s in _ledger(root)["stages"]}
  base_ppl = _eval(dirs["pretrain"])["perplexity/general_holdout"]
  _write_eval(dirs["pretrain"], **{"instruct/accuracy": 0.03})
  _write_eval(dirs["sft"], **{"instruct/accuracy": 0.85,
                              "perplexity/general_holdout": 1.01 * base_ppl})
  _write_eval(dirs["dpo"], win_rate_vs_ref=0.68)
  with open(report.write_report(root), encoding="utf-8") as f:
    md = f.read()
  assert ("**base model: instruction accuracy 3.0% → SFT 85.0% → DPO win "
          "rate 68.0% vs SFT**") in md
  assert "(+82.0 pts): fixed by SFT" in md
  assert "dpo: beats SFT under the judge (68.0%)" in md
  assert "(+1.0%) from pretrain to sft" in md
  assert "no forgetting beyond 10%" in md

  _write_eval(dirs["sft"], **{"instruct/accuracy": 0.03,
                              "perplexity/general_holdout": 1.5 * base_ppl})
  _write_eval(dirs["dpo"], win_rate_vs_ref=0.25)
  with open(report.write_report(root), encoding="utf-8") as f:
    md = f.read()
  assert "→ SFT 3.0% → DPO win rate 25.0% vs SFT" in md
  assert "not fixed by SFT" in md and "dpo: loses to SFT" in md
  assert "(+50.0%) from pretrain to sft (perplexity/general_holdout): " \
      "forgetting." in md


def test_missing_metrics_show_a_dash_and_a_ppo_run_is_plotted(lifecycle_copy):
  root = lifecycle_copy(heavy=False)
  ledger = _ledger(root)
  dirs = {s["name"]: s["run_dir"] for s in ledger["stages"]}
  reward = RunDir(dirs["reward"])
  os.remove(reward.eval)
  os.remove(reward.reward_eval)
  with open(reward.summary, "w") as f:
    json.dump({"final_step": 3, "eval": {}}, f)
  # A PPO run directory as lifejax.rl writes it: rollout rows per iteration.
  ppo = os.path.join(root, "ppo_layout")
  os.makedirs(ppo)
  write_jsonl(RunDir(ppo).metrics, [
      {"step": it, "reward": 0.1 * it, "kl": 0.5 * it, "true_judge": 0.3,
       "loss": 1.0 / it} for it in range(1, 5)])
  with open(RunDir(ppo).eval, "w") as f:
    json.dump({"win_rate_vs_ref": 0.6, "kl_to_ref": 1.5,
               "reward_gain_vs_ref": 0.25, "judge_gain_vs_ref": -0.1}, f)
  ledger["stages"].append({"name": "ppo", "kind": "ppo", "run_dir": ppo,
                           "status": "done", "seconds": 1.0})
  with open(LifecycleRoot(root).ledger, "w") as f:
    json.dump(ledger, f)
  with open(report.write_report(root), encoding="utf-8") as f:
    md = f.read()
  rows = _stage_rows(md)
  assert "pair acc —" in rows["reward"] and "ECE —" in rows["reward"]
  assert "win rate vs SFT 60.0%" in rows["ppo"]
  assert "reward Δ vs SFT 0.250" in rows["ppo"]
  assert "judge Δ vs SFT -0.100" in rows["ppo"]
  assert "reward hacking suspected" in md
  assert "PPO win rate 60.0% vs SFT" in md
  # The same drop within two paired SEs of zero is not called hacking.
  with open(RunDir(ppo).eval, "w") as f:
    json.dump({"win_rate_vs_ref": 0.6, "kl_to_ref": 1.5,
               "reward_gain_vs_ref": 0.25, "judge_gain_vs_ref": -0.1,
               "judge_gain_se": 0.06}, f)
  with open(report.write_report(root), encoding="utf-8") as f:
    md = f.read()
  assert "reward hacking suspected" not in md
  assert "judge change within 2 SE of zero" in md
  assert _is_png(LifecycleRoot(root).reward_vs_kl_plot)
  series = runs.reward_kl_series(ppo)
  assert series["kl"] == [0.5, 1.0, 1.5, 2.0]


def test_progress_lines_name_each_stage(tiny_lifecycle):
  """The console shows which stage runs ([k/n name]) and the total time."""
  log = os.path.join(os.path.dirname(tiny_lifecycle), "lifecycle.log")
  with open(log, encoding="utf-8") as f:
    text = f.read()
  # tiny.gin runs PPO off: pretrain, sft, reward, dpo, release.
  for k, name in enumerate(("pretrain", "sft", "reward", "dpo", "release"), 1):
    assert f"[lifecycle] [{k}/5 {name}] starting" in text, text[-2000:]
  assert "[lifecycle] finished in " in text


def test_release_candidate_is_picked_on_dev_and_reported_on_test(
    tiny_lifecycle):
  """The release stage scores every candidate on the dev (validation)
  prompts and picks the best there; its reported numbers are the test
  prompts'. A dev tie goes to the earlier stage."""
  lr = LifecycleRoot(tiny_lifecycle)
  with open(lr.stage("release").stage_file) as f:
    picked = json.load(f)
  assert picked["selected_on"] == "validation"
  assert set(picked["dev_judge"]) == {"sft", "dpo"}
  assert picked["candidate"] == lifecycle_evals.pick_release(
      picked["dev_judge"])
  with open(lr.stage("release").eval) as f:
    ev = json.load(f)
  assert ev["candidate"] == picked["candidate"]
  assert ev["dev_judge/sft"] == picked["dev_judge"]["sft"]
  dev_ids = {r["id"] for r in read_jsonl(lr.world_instructions("validation"))}
  test_ids = {r["id"] for r in read_jsonl(lr.world_instructions("test"))}
  assert dev_ids and test_ids and not dev_ids & test_ids
  # The ledger names the code the run came from (the recording check).
  with open(lr.ledger) as f:
    code = json.load(f)["code"]
  assert code["files"]["lifejax/stages/lifecycle.py"]
  assert lifecycle_evals.pick_release({"sft": 0.5, "dpo": 0.5,
                                       "ppo": 0.4}) == "sft"
  assert lifecycle_evals.pick_release({"sft": 0.5, "dpo": 0.6}) == "dpo"
  with pytest.raises(ValueError, match="no release candidates"):
    lifecycle_evals.pick_release({})


def test_a_run_rewarded_by_the_eval_judge_is_flagged(lifecycle_copy):
  root = lifecycle_copy(heavy=False)
  dpo = LifecycleRoot(root).stage("dpo").root
  assert not lifecycle_evals.trained_on_eval_judge(dpo)
  lin = lineage.read_lineage(dpo)
  lineage.write_lineage(dpo, dataclasses.replace(
      lin, details={**lin.details, "reward": {"kind": "judge"}}))
  assert lifecycle_evals.trained_on_eval_judge(dpo)


def test_flaw_rates_and_circular_judges_are_told(lifecycle_copy):
  root = lifecycle_copy(heavy=False)
  dirs = {s["name"]: s["run_dir"] for s in _ledger(root)["stages"]}
  _write_eval(dirs["sft"], **{"demo_pool/flaw/verbose": 0.05,
                              "instruct/flaw/verbose": 0.04,
                              "demo_pool/flaw/rude": 0.06,
                              "instruct/flaw/rude": 0.05})
  _write_eval(dirs["dpo"], win_rate_vs_ref=0.7,
              **{"instruct/flaw/verbose": 0.01, "instruct/flaw/rude": 0.0,
                 "eval_judge_is_training_reward": 1.0})
  with open(report.write_report(root), encoding="utf-8") as f:
    md = f.read()
  pool = next(ln for ln in md.splitlines() if "sft imitates its demon" in ln)
  assert "flaw rates in the training pool → in its answers:" in pool
  assert "rude 6.0% → 5.0%" in pool and "verbose 5.0% → 4.0%" in pool
  tuned = next(ln for ln in md.splitlines() if "flaw rates SFT → dpo" in ln)
  assert "rude 5.0% → 0.0%" in tuned and "verbose 4.0% → 1.0%" in tuned
  assert "dpo was rewarded by the judge that scores it" in md


def test_calibrated_judge_and_lm_eval_metrics_reach_the_tables(
    lifecycle_copy):
  root = lifecycle_copy(heavy=False)
  dirs = {s["name"]: s["run_dir"] for s in _ledger(root)["stages"]}
  _write_eval(dirs["sft"], **{"instruct/judge_calibrated": 0.4321})
  _write_eval(dirs["release"], **{"lm_eval/my_task/acc": 0.8765})
  with open(report.write_report(root), encoding="utf-8") as f:
    md = f.read()
  assert "judge calibrated (base 0) 0.432" in md
  assert "lm-eval my_task/acc 0.876" in md
