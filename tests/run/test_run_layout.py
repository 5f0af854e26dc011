"""lifejax.run.layout: the on-disk names existing runs use, and the
directory listings built on them."""

import os

from lifejax.run import layout
from lifejax.run.layout import LifecycleRoot, RunDir

# The names existing runs and the recorded demo (experiments/lifecycle_demo)
# have on disk: a rename must be deliberate, and this table then changes.
ON_DISK = {
    "lineage": "lineage.json", "summary": "summary.json",
    "metrics": "metrics.jsonl", "config_gin": "config.gin",
    "operative_gin": "operative_config.gin", "stage_file": "stage.json",
    "tokenizer_model": "tokenizer.model",
    "chat_template": "chat_template.json", "checkpoints": "checkpoints",
    "best": "best", "samples": "samples", "heldout": "heldout",
    "eval": "eval.json", "side_by_side": "side_by_side.md",
    "reward_stats": "reward_stats.json", "reward_eval": "reward_eval.json",
    "reward_eval_png": "reward_eval.png", "preferences": "preferences.jsonl",
    "rlaif_report": "rlaif_report.json", "loss_curve": "loss_curve.png",
    "rl_curves": "rl_curves.png", "tensorboard": "tensorboard",
    "model_card": "model_card.yaml", "hf_export": "hf_export",
    "eval_answers": "eval_answers.jsonl", "eval_rows": "eval_rows.json",
}


def test_run_files_keep_their_names(tmp_path):
  run = RunDir(tmp_path / "sft")
  assert run.root == os.path.abspath(tmp_path / "sft")
  for prop, name in ON_DISK.items():
    assert getattr(run, prop) == os.path.join(run.root, name), prop
  assert run.policy == RunDir(os.path.join(run.root, "policy"))
  assert run.policy.lineage == os.path.join(run.root, "policy",
                                            "lineage.json")


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert RunDir("runs/x").root == str(tmp_path / "runs" / "x")
  assert os.fspath(RunDir("runs/x")) == str(tmp_path / "runs" / "x")


def test_sample_and_heldout_files(tmp_path):
  run = RunDir(tmp_path)
  assert run.sample_file(40) == str(tmp_path / "samples" /
                                    "step_000040.jsonl")
  assert run.iteration_sample_file(3) == str(tmp_path / "samples" /
                                             "iter_000003.jsonl")
  assert run.heldout_file("wiki") == str(tmp_path / "heldout" / "wiki.jsonl")
  assert run.sample_steps() == [] and run.sample_files() == []
  os.makedirs(run.samples)
  for path in (run.sample_file(120), run.sample_file(0),
               run.iteration_sample_file(2)):
    open(path, "w").close()
  open(os.path.join(run.samples, "notes.txt"), "w").close()
  assert run.sample_steps() == [0, 120]
  assert [os.path.basename(p) for p in run.sample_files()] == [
      "iter_000002.jsonl", "step_000000.jsonl", "step_000120.jsonl"]
  os.makedirs(run.heldout)
  for name in ("web", "mail"):
    open(run.heldout_file(name), "w").close()
  assert run.heldout_files() == [run.heldout_file("mail"),
                                 run.heldout_file("web")]


def test_checkpoint_steps_and_lm_run(tmp_path):
  run = RunDir(tmp_path)
  assert run.checkpoint_steps() == []
  for step in ("10", "2", "tmp_3"):
    os.makedirs(os.path.join(run.checkpoints, step))
  os.makedirs(os.path.join(run.best, "7"))
  assert run.checkpoint_steps() == [2, 10]
  assert run.checkpoint_steps(best=True) == [7]
  assert run.checkpoint_dir(best=True) == run.best
  assert run.lm_run() == run
  os.makedirs(run.policy.root)
  assert run.lm_run() == run.policy


def test_lifecycle_root(tmp_path):
  root = LifecycleRoot(tmp_path)
  assert root.ledger == str(tmp_path / "lifecycle.json")
  assert root.report == str(tmp_path / "report.md")
  assert root.world_manifest == str(tmp_path / "world" / "manifest.json")
  assert root.curation_report == str(tmp_path / "curated" /
                                     "curation_report.json")
  assert root.curation_report_md == str(tmp_path / "curated" /
                                        "curation_report.md")
  assert root.loss_curves_plot == str(tmp_path / "plots" / "loss_curves.png")
  assert root.reward_vs_kl_plot == str(tmp_path / "plots" /
                                       "reward_vs_kl.png")
  assert root.forgetting_plot == str(tmp_path / "plots" / "forgetting.png")
  assert root.stage("dpo") == RunDir(tmp_path / "dpo")
  assert root.model_card("dpo") == str(tmp_path / "dpo" / "model_card.yaml")
  assert root.world_instructions("test") == str(
      tmp_path / "world" / "instructions" / "test.jsonl")
  assert root.world_preferences("train") == str(
      tmp_path / "world" / "preferences" / "train.jsonl")
  assert root.world_eval("fact_questions") == str(
      tmp_path / "world" / "eval" / "fact_questions.jsonl")
  os.makedirs(root.curated_dir("web"))
  for name in ("web-00001.jsonl", "web-00000.jsonl", "README"):
    open(os.path.join(root.curated_dir("web"), name), "w").close()
  assert [os.path.basename(p) for p in root.curated_files("web")] == [
      "web-00000.jsonl", "web-00001.jsonl"]


def test_sample_names():
  assert layout.step_sample_name(7) == "step_000007.jsonl"
  assert layout.iteration_sample_name(1234567) == "iter_1234567.jsonl"
