"""The lifecycle skips finished stages and resumes an interrupted one."""

import json
import os
import shutil

import pytest

from lifejax.eval import card


def _ledger(root):
  with open(os.path.join(root, "lifecycle.json")) as f:
    return {s["name"]: s["status"] for s in json.load(f)["stages"]}


def _losses(path):
  out = {}
  for line in open(path):
    r = json.loads(line)
    if "loss" in r:
      out[r["step"]] = r["loss"]
  return out


def test_skip_and_resume(lifecycle_copy, run_lifecycle):
  root = lifecycle_copy(heavy=True)
  run_lifecycle(root)
  statuses = _ledger(root)
  assert statuses and all(v == "skipped" for v in statuses.values()), statuses

  # Interrupt DPO after its step-2 checkpoint: drop what a crash would not
  # have written (the last checkpoint, the summary, the stage's eval).
  dpo = os.path.join(root, "dpo")
  before = _losses(os.path.join(dpo, "metrics.jsonl"))
  for name in ("eval.json", "summary.json"):
    os.remove(os.path.join(dpo, name))
  ckpts = os.path.join(dpo, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
  assert len(steps) >= 2, steps
  shutil.rmtree(os.path.join(ckpts, str(steps[-1])))
  run_lifecycle(root)
  statuses = _ledger(root)
  assert statuses["dpo"] == "resumed", statuses
  assert all(v == "skipped" for k, v in statuses.items()
             if k not in ("dpo", "release")), statuses
  assert os.path.exists(os.path.join(dpo, "eval.json"))
  after = _losses(os.path.join(dpo, "metrics.jsonl"))
  assert after[steps[-1]] == before[steps[-1]]  # the redone step matches
  # The refreshed report and cards still audit clean.
  problems = card.audit_card(os.path.join(root, "dpo", "model_card.yaml"))
  assert not problems, [str(p) for p in problems]


def test_a_world_from_an_older_generator_is_refused(lifecycle_copy,
                                                    run_lifecycle):
  """Reusing a root whose world predates the current format (e.g. without
  the mail source) stops with the manifest's path, not deep in curation."""
  root = lifecycle_copy(heavy=False)
  manifest = os.path.join(root, "world", "manifest.json")
  with open(manifest) as f:
    data = json.load(f)
  data["format_version"] = 1
  with open(manifest, "w") as f:
    json.dump(data, f)
  with pytest.raises(RuntimeError, match="world format 1, but this lifejax"):
    run_lifecycle(root)
