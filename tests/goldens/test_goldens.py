"""Behaviour is unchanged: per-step losses of the golden runs (and of their
killed-and-resumed copies) equal the recorded ones bitwise.

The first record in losses.json was produced before the stage-runner
refactor (main at 63a7560) on AVX-512 hosts. Floats are bitwise only per
CPU kind (hosts.py): on a host some record names, the comparison is
bitwise; on any other host it is within hosts.CROSS_HOST_RTOL/ATOL and a
warning says so. See conftest.py for how to regenerate or add a host.
"""

import importlib.util
import json
import os
import warnings

import numpy as np
import pytest

from lifejax.run import provenance

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "golden_hosts", os.path.join(HERE, "hosts.py"))
hosts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hosts)
GOLDEN = os.path.join(HERE, "losses.json")
STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")


def _write(records: list) -> None:
  with open(GOLDEN, "w", encoding="utf-8") as f:
    json.dump({"records": records}, f, indent=1)


def _update(golden_runs: dict, records: list, host: dict) -> list:
  """Applies LIFEJAX_REGEN_GOLDENS / LIFEJAX_ADD_GOLDEN_HOST; returns the
  records now on disk."""
  note = f"recorded at {provenance.git_commit() or 'unknown'}"
  if os.environ.get("LIFEJAX_REGEN_GOLDENS"):
    records = [{"host": host, "note": note, "stages": golden_runs}]
    _write(records)
  elif os.environ.get("LIFEJAX_ADD_GOLDEN_HOST"):
    if hosts.has_own_record(records, host):
      raise RuntimeError("LIFEJAX_ADD_GOLDEN_HOST: this host already has a "
                         "record in losses.json")
    for r in records:
      bad = hosts.agree_across_hosts(r["stages"], golden_runs)
      if bad:
        raise RuntimeError(
            f"LIFEJAX_ADD_GOLDEN_HOST: this host's runs differ from the "
            f"record for {hosts.describe(r['host'])} beyond the cross-host "
            f"tolerance at {bad[:5]}: behaviour changed; a new host is not "
            f"added over a regression (LIFEJAX_REGEN_GOLDENS=1 replaces all "
            f"records, in a commit of its own that says why)")
    records = records + [{"host": host, "note": note, "stages": golden_runs}]
    _write(records)
  return records


@pytest.fixture(scope="module")
def golden(golden_runs):
  """(records to compare with, bitwise?): this host's own record, or every
  record when none names this host."""
  with open(GOLDEN, encoding="utf-8") as f:
    records = json.load(f)["records"]
  host = hosts.host_spec()
  records = _update(golden_runs, records, host)
  own = hosts.own_records(records, host)
  if own:
    return own[:1], True
  warnings.warn(
      f"tests/goldens: no golden record for this host "
      f"({hosts.describe(host)}); recorded: "
      f"{'; '.join(hosts.describe(r['host']) for r in records)}. Comparing "
      f"within rtol={hosts.CROSS_HOST_RTOL}, atol={hosts.CROSS_HOST_ATOL} "
      f"instead of bitwise (LIFEJAX_ADD_GOLDEN_HOST=1 adds this host).")
  return records, False


@pytest.mark.parametrize("stage", STAGES)
def test_per_step_losses_are_bitwise_unchanged(golden, golden_runs, stage):
  records, bitwise = golden
  got = golden_runs[stage]["losses"]
  for r in records:
    want = r["stages"][stage]["losses"]
    assert len(got) == len(want), (len(got), len(want))
    assert all(np.isfinite(want))
    if bitwise:
      assert got == want  # exact float equality, step by step
    else:
      hosts.assert_close_across_hosts(got, want, f"{stage} losses")


@pytest.mark.parametrize("stage", STAGES)
def test_killed_and_resumed_run_continues_bitwise(golden, golden_runs, stage):
  records, bitwise = golden
  r = golden_runs[stage]
  for g in records:
    want = g["stages"][stage]
    # (resumed_from is not compared: the first record counts RL
    # checkpoints in iterations, later ones in train steps.)
    if bitwise:
      assert r["resumed_losses"] == want["resumed_losses"]
    else:
      hosts.assert_close_across_hosts(r["resumed_losses"],
                                      want["resumed_losses"],
                                      f"{stage} resumed losses")
  # The resumed run redoes exactly the steps after its checkpoint, and they
  # equal the uninterrupted run's: bitwise on every host (same host, same
  # compiled programs).
  tail = len(r["resumed_losses"])
  assert 0 < tail < len(r["losses"])
  assert r["resumed_losses"] == r["losses"][-tail:]


@pytest.mark.parametrize("stage", ("pretrain", "sft", "reward", "dpo"))
def test_eval_metrics_are_unchanged(golden, golden_runs, stage):
  records, bitwise = golden
  got = golden_runs[stage]["eval"]
  for r in records:
    want = r["stages"][stage]["eval"]
    assert sorted(got) == sorted(want)
    for step, metrics in want.items():
      assert sorted(got[step]) == sorted(metrics), step
      for k, v in metrics.items():
        if bitwise:
          np.testing.assert_allclose(got[step][k], v, rtol=1e-6, atol=1e-7,
                                     err_msg=f"step {step} {k}")
        else:
          hosts.assert_close_across_hosts(got[step][k], v,
                                          f"step {step} {k}")


def test_cross_host_tolerance_separates_hosts_from_a_behaviour_change(
    golden_runs):
  """The tolerance is loose enough for another CPU's rounding and tight
  enough to catch a real change: it accepts this host's runs against every
  record, and rejects them with one step's data order swapped (the SFT
  losses of steps 1 and 2 exchanged) or the DPO loss scaled by 1%."""
  with open(GOLDEN, encoding="utf-8") as f:
    records = json.load(f)["records"]
  for r in records:
    assert hosts.agree_across_hosts(r["stages"], golden_runs) == []
  swapped = json.loads(json.dumps(golden_runs))
  sft = swapped["sft"]["losses"]
  sft[0], sft[1] = sft[1], sft[0]
  scaled = json.loads(json.dumps(golden_runs))
  scaled["dpo"]["losses"] = [1.01 * x for x in scaled["dpo"]["losses"]]
  for r in records:
    assert "sft/losses" in hosts.agree_across_hosts(r["stages"], swapped)
    assert "dpo/losses" in hosts.agree_across_hosts(r["stages"], scaled)
