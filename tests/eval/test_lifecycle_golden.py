"""The tiny lifecycle's stage evaluations equal the recorded ones.

tests/goldens/lifecycle_eval.json was recorded on main at 63a7560, before
the stage-runner refactor, from the shared tiny lifecycle root. The tiny
lifecycle generates its own world, so a change to the world generator
moves these values: regenerate them then, in a commit of their own that
says why:
  LIFEJAX_REGEN_GOLDENS=1 python -m pytest tests/eval/test_lifecycle_golden.py

Like tests/goldens/losses.json, the file holds one record per host kind
(tests/goldens/hosts.py: XLA:CPU sums in another order on another CPU
generation, and the tiny DPO's eval reward moved by 3e-4 between two AVX-512
generations). On a host that a record names, values are compared at
rel 1e-5; on any other host at rel/abs CROSS_HOST_TOL, with a warning. The
tiny reward model turns last-bit differences into flipped pairs (a Sapphire
Rapids host: pair accuracy 0.55 vs 0.70 recorded), so a host kind without a
record may fail that comparison. Add this host's record next to the others
(its note lists every value beyond the tolerance):
  LIFEJAX_ADD_GOLDEN_HOST=1 python -m pytest tests/eval/test_lifecycle_golden.py
"""

import importlib.util
import json
import math
import os
import warnings

import pytest

from lifejax.run import provenance
from lifejax.run.layout import LifecycleRoot

_GOLDENS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "goldens")
GOLDEN = os.path.join(_GOLDENS, "lifecycle_eval.json")
_spec = importlib.util.spec_from_file_location(
    "golden_hosts", os.path.join(_GOLDENS, "hosts.py"))
hosts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hosts)
# Between two hosts' records (rel and abs): the tiny DPO's eval reward is the
# most sensitive value (3e-4 apart on two AVX-512 generations).
CROSS_HOST_TOL = 2e-3


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


def _differences(got: dict, want: dict, rel: float, abs_: float
                 ) -> list[str]:
  """Where two {stage: eval.json} trees differ (timings ignored): floats
  beyond the tolerance, anything else unequal, keys missing on a side."""
  bad = [f"stages {sorted(got)} != {sorted(want)}"] if sorted(got) != sorted(
      want) else []
  for stage in want:
    if stage not in got:
      continue
    w, g = _numbers(want[stage]), _numbers(got[stage])
    if sorted(g) != sorted(w):
      bad.append(f"{stage}: keys {sorted(set(g) ^ set(w))[:5]}")
      continue
    for k, v in w.items():
      if any(t in k for t in TIMINGS):
        continue
      if isinstance(v, float) and not isinstance(v, bool):
        if math.isnan(v):
          ok = isinstance(g[k], float) and math.isnan(g[k])
        else:
          ok = g[k] == pytest.approx(v, rel=rel, abs=abs_)
      else:
        ok = g[k] == v
      if not ok:
        bad.append(f"{stage}.{k}: got {g[k]!r}, recorded {v!r}")
  return bad


def _write(records: list) -> None:
  with open(GOLDEN, "w", encoding="utf-8") as f:
    json.dump({"records": records}, f, indent=1, sort_keys=True)


def test_stage_evals_equal_the_recorded_ones(tiny_lifecycle):
  got = _eval_jsons(tiny_lifecycle)
  host = hosts.host_spec()
  note = f"recorded at {provenance.git_commit() or 'unknown'}"
  with open(GOLDEN, encoding="utf-8") as f:
    records = json.load(f)["records"]
  if os.environ.get("LIFEJAX_REGEN_GOLDENS"):
    records = [{"host": host, "note": note, "evals": got}]
    _write(records)
  elif os.environ.get("LIFEJAX_ADD_GOLDEN_HOST"):
    assert not hosts.has_own_record(records, host), (
        "LIFEJAX_ADD_GOLDEN_HOST: this host already has a record")
    # The tiny reward model (20 pairs, a few steps) amplifies last-bit
    # differences into flipped pairs, so values may differ beyond the
    # tolerance between hosts; the stages and keys must be the same, and
    # the note counts the values that differ from the first record.
    bad = _differences(got, records[0]["evals"], CROSS_HOST_TOL,
                       CROSS_HOST_TOL)
    structural = [b for b in bad if ": keys " in b or b.startswith("stages")]
    assert not structural, ("LIFEJAX_ADD_GOLDEN_HOST refused: another "
                            f"layout than the first record: {structural}")
    note += (f"; {len(bad)} values differ from the first record beyond "
             f"{CROSS_HOST_TOL}: " + "; ".join(bad))
    records = records + [{"host": host, "note": note, "evals": got}]
    _write(records)
  own = hosts.own_records(records, host)
  if own:
    bad = _differences(got, own[0]["evals"], 1e-5, 1e-6)
    assert not bad, (f"against the record for "
                     f"{hosts.describe(own[0]['host'])}: {bad[:10]}")
    return
  warnings.warn(
      f"tests/goldens/lifecycle_eval.json: no record for this host "
      f"({hosts.describe(host)}); comparing within {CROSS_HOST_TOL} "
      f"(LIFEJAX_ADD_GOLDEN_HOST=1 adds this host)")
  for r in records:
    bad = _differences(got, r["evals"], CROSS_HOST_TOL, CROSS_HOST_TOL)
    assert not bad, (f"against the record for {hosts.describe(r['host'])} "
                     f"(cross-host tolerance): {bad[:10]}")
