"""The tiny lifecycle's stage evaluations equal the recorded ones.

tests/goldens/lifecycle_eval.json was recorded on main at 63a7560, before
the stage-runner refactor, from the shared tiny lifecycle root. The tiny
lifecycle generates its own world, so a change to the world generator
moves these values: regenerate them then, in a commit of their own that
says why:
  LIFEJAX_REGEN_GOLDENS=1 python -m pytest tests/eval/test_lifecycle_golden.py
"""

import json
import math
import os

import pytest

from lifejax.run.layout import LifecycleRoot

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "goldens", "lifecycle_eval.json")


def _numbers(obj, prefix=""):
  """Flattens a JSON tree to {dotted.key: number} (strings and bools
  compared as they are)."""
  out = {}
  if isinstance(obj, dict):
    for k, v in obj.items():
      out.update(_numbers(v, f"{prefix}{k}."))
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      out.update(_numbers(v, f"{prefix}{i}."))
  else:
    out[prefix[:-1]] = obj
  return out


# Wall-clock figures differ from run to run; they are not behaviour.
TIMINGS = ("latency", "per_sec", "seconds")


def _eval_jsons(root):
  lr = LifecycleRoot(root)
  with open(lr.ledger) as f:
    names = [s["name"] for s in json.load(f)["stages"]]
  out = {}
  for name in names:
    path = lr.stage(name).eval
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def test_stage_evals_equal_the_recorded_ones(tiny_lifecycle):
  got = _eval_jsons(tiny_lifecycle)
  if os.environ.get("LIFEJAX_REGEN_GOLDENS"):
    with open(GOLDEN, "w", encoding="utf-8") as f:
      json.dump(got, f, indent=1, sort_keys=True)
  with open(GOLDEN, encoding="utf-8") as f:
    want = json.load(f)
  assert sorted(got) == sorted(want)
  for stage in want:
    w, g = _numbers(want[stage]), _numbers(got[stage])
    assert sorted(g) == sorted(w), stage
    for k, v in w.items():
      if any(t in k for t in TIMINGS):
        continue
      if isinstance(v, float) and not isinstance(v, bool):
        if math.isnan(v):
          assert math.isnan(g[k]), (stage, k)
        else:
          assert g[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (stage, k)
      else:
        assert g[k] == v, (stage, k, g[k], v)
