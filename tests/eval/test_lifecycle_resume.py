"""The lifecycle skips finished stages and resumes an interrupted one."""

import json
import os
import shutil

import pytest

from lifejax.data.jsonl import read_jsonl
from lifejax.eval import card_audit
from lifejax.run.layout import LifecycleRoot


def _ledger(root):
  with open(LifecycleRoot(root).ledger) as f:
    return {s["name"]: s["status"] for s in json.load(f)["stages"]}


def _losses(path):
  """(step, loss) of each training row of metrics.jsonl, in file order."""
  return [(r["step"], r["loss"]) for r in read_jsonl(path) if "loss" in r]


def test_skip_and_resume(lifecycle_copy, run_lifecycle):
  root = lifecycle_copy(heavy=True)
  run_lifecycle(root)
  statuses = _ledger(root)
  assert statuses and all(v == "skipped" for v in statuses.values()), statuses

  # Interrupt DPO after its step-2 checkpoint: drop what a crash would not
  # have written (the last checkpoint, the summary, the stage's eval).
  dpo = LifecycleRoot(root).stage("dpo")
  before = _losses(dpo.metrics)
  for path in (dpo.eval, dpo.summary):
    os.remove(path)
  steps = dpo.checkpoint_steps()
  assert len(steps) >= 2, steps
  shutil.rmtree(os.path.join(dpo.checkpoints, str(steps[-1])))
  run_lifecycle(root)
  statuses = _ledger(root)
  assert statuses["dpo"] == "resumed", statuses
  assert all(v == "skipped" for k, v in statuses.items()
             if k not in ("dpo", "release")), statuses
  assert os.path.exists(dpo.eval)
  after = _losses(dpo.metrics)
  # metrics.jsonl is appended to: the resumed run adds one row for each step
  # after the checkpoint it restarts from, with the loss the interrupted run
  # logged for it (bitwise: same state, same batch), and nothing else.
  redone = [(s, loss) for s, loss in before if s > steps[-2]]
  assert steps[-1] in [s for s, _ in redone]
  assert after[:len(before)] == before
  assert after[len(before):] == redone
  # The refreshed report and cards still audit clean.
  problems = card_audit.audit_card(dpo.model_card)
  assert not problems, [str(p) for p in problems]


def test_a_world_from_an_older_generator_is_refused(lifecycle_copy,
                                                    run_lifecycle):
  """Reusing a root whose world predates the current format (e.g. without
  the mail source) stops with the manifest's path, not deep in curation."""
  root = lifecycle_copy(heavy=False)
  manifest = LifecycleRoot(root).world_manifest
  with open(manifest) as f:
    data = json.load(f)
  data["format_version"] = 1
  with open(manifest, "w") as f:
    json.dump(data, f)
  with pytest.raises(RuntimeError, match="world format 1, but this lifejax"):
    run_lifecycle(root)


def test_a_world_built_with_other_settings_is_refused(lifecycle_copy,
                                                      run_lifecycle):
  """Asking a finished root for another world (here a different
  lifecycle.world_answer_style or world_seed) stops with the manifest's
  path and the field, instead of training on the world already there."""
  root = lifecycle_copy(heavy=False)
  with pytest.raises(RuntimeError, match=r"answer_style: the world has "
                     r"'restate', lifecycle.world_answer_style asks for "
                     r"'pronoun'"):
    run_lifecycle(root, extra_params=(
        "lifecycle.world_answer_style='pronoun'",))
  with pytest.raises(RuntimeError, match=r"manifest.json: this root's world "
                     r"was built with other settings \(seed: the world has "
                     r"0, lifecycle.world_seed asks for 5\)"):
    run_lifecycle(root, extra_params=("lifecycle.world_seed=5",))
  with pytest.raises(RuntimeError, match=r"heldout_qa: the world has False, "
                     r"lifecycle.world_heldout_qa asks for True"):
    run_lifecycle(root, extra_params=("lifecycle.world_heldout_qa=True",))


def test_until_stops_after_the_named_stage(lifecycle_copy, run_lifecycle):
  """lifecycle.until='pretrain' ends the run after pretraining's evaluation,
  with the ledger and report written and no later stage started."""
  root = lifecycle_copy(heavy=False)
  lr = LifecycleRoot(root)
  for name in ("sft", "reward", "dpo", "release"):
    shutil.rmtree(lr.stage(name).root)
  run_lifecycle(root, extra_params=("lifecycle.until='pretrain'",))
  assert _ledger(root) == {"pretrain": "skipped"}
  assert not os.path.exists(lr.stage("sft").root)
  assert os.path.exists(lr.report)
  log = os.path.join(os.path.dirname(root), "lifecycle.log")
  with open(log) as f:
    assert "stopped after pretrain (lifecycle.until)" in f.read()
  with pytest.raises(RuntimeError, match="lifecycle.until='judge'"):
    run_lifecycle(root, extra_params=("lifecycle.until='judge'",))
