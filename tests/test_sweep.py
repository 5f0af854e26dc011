"""lifejax.sweep: grids, resumable cells, statistics against scipy/numpy."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from lifejax import sweep


def test_grid_is_the_cartesian_product_with_gin_bindings():
  arms = sweep.grid("lr", {"a/OptimizerConfig.learning_rate": [1e-3, 3e-3],
                           "a/OptimizerConfig.warmup_steps": [0, 10],
                           "m.kind": ["x"]})
  assert [a.name for a in arms] == [
      "lr_learning_rate0.001_warmup_steps0_kindx",
      "lr_learning_rate0.001_warmup_steps10_kindx",
      "lr_learning_rate0.003_warmup_steps0_kindx",
      "lr_learning_rate0.003_warmup_steps10_kindx"]
  assert arms[1].gin_params == ("a/OptimizerConfig.learning_rate=0.001",
                                "a/OptimizerConfig.warmup_steps=10",
                                "m.kind='x'")
  assert arms[3].labels == {"learning_rate": 0.003, "warmup_steps": 10,
                            "kind": "x"}


def test_duplicate_arm_names_are_refused():
  with pytest.raises(ValueError, match="duplicates"):
    sweep.Sweep(arms=[sweep.Arm("a"), sweep.Arm("a")])
  with pytest.raises(ValueError, match="directory name"):
    sweep.Arm("a/b")


def test_paired_t_equals_scipy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1, 1, 5), rng.normal(0, 1, 5)
  got = sweep.paired_t(a, b)
  ref = stats.ttest_rel(a, b)
  assert math.isclose(got["p"], ref.pvalue, rel_tol=1e-9)
  ci = ref.confidence_interval()
  assert math.isclose(got["ci_lo"], ci.low, rel_tol=1e-9)
  assert math.isclose(got["ci_hi"], ci.high, rel_tol=1e-9)
  assert math.isnan(sweep.paired_t([1.0], [0.0])["p"])
  assert sweep.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_fmt_paired_t():
  # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3); t(0.975, 2 df) = 4.302653
  # gives the half width 2.484138; p = 2 sf_t2(2 sqrt(3)) = 0.0742.
  t = sweep.paired_t([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
  assert sweep.fmt_paired_t(t) == "+2.000 [-0.484, +4.484], p=0.074"
  assert sweep.fmt_paired_t(t, 2) == "+2.00 [-0.48, +4.48], p=0.074"
  assert (sweep.fmt_paired_t(sweep.paired_t([1.0], [2.5]))
          == "-1.500 (n=1, no test)")
  assert (sweep.fmt_paired_t(sweep.paired_t([1.0, 2.0], [0.0, 1.0]), 1)
          == "+1.0 (n=2, no test)")  # zero spread: no test either


def test_fmt_paired_stats_both_layouts():
  st = {"wins": 7.0, "losses": 3.0, "ties": 2.0, "win_rate_vs_ref": 0.66666,
        "judge_gain_vs_ref": 0.01234, "judge_gain_ci_lo": -0.00051,
        "judge_gain_ci_hi": 0.02999, "sign_test_p": 0.34375}
  assert sweep.fmt_paired_stats(st) == {
      "wins": 7, "losses": 3, "ties": 2, "mean diff": "+0.0123",
      "95% bootstrap CI": "[-0.0005, +0.0300]", "sign-test p": "0.344"}
  got = sweep.fmt_paired_stats(st, compact=True)
  assert got == {"W/T/L": "7/2/3", "win rate (ties ½)": "0.667",
                 "mean diff [95% bootstrap CI]": "+0.0123 [-0.0005, +0.0300]",
                 "sign-test p": "0.344"}
  assert list(got) == ["W/T/L", "win rate (ties ½)",
                       "mean diff [95% bootstrap CI]", "sign-test p"]
  # On paired_stats' own output: d = (1, 0, -0.2, 0.2) has 2 wins, 1 tie,
  # 1 loss, mean 0.25; the sign test of 2 vs 1 gives p = 1.
  from lifejax.eval.policy_eval import paired_stats
  real = sweep.fmt_paired_stats(paired_stats([1.0, 0.5, 0.2, 0.3],
                                             [0.0, 0.5, 0.4, 0.1]), True)
  assert (real["W/T/L"], real["win rate (ties ½)"], real["sign-test p"]) == (
      "2/1/1", "0.625", "1")
  assert real["mean diff [95% bootstrap CI]"].startswith("+0.2500 [")


def test_iteration_rows_and_first_last(tmp_path):
  rows = [{"iteration": 3, "reward": 3.0, "kl": 0.3},
          {"step": 9, "loss": 1.0},  # not an iteration row
          {"iteration": 1, "reward": 1.0, "kl": 0.1},
          {"iteration": 2, "reward": 2.0, "kl": 0.2},
          {"iteration": 4, "reward": 8.0}]  # no kl
  (tmp_path / "ppo").mkdir()
  (tmp_path / "ppo" / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  cell = sweep.Cell(sweep.Arm("a"), 0, str(tmp_path), {})
  its = sweep.iteration_rows(cell, "ppo/metrics.jsonl", ("reward", "kl"))
  assert [r["iteration"] for r in its] == [1, 2, 3]
  assert sweep.first_last(its, ["reward", "kl"], 2) == pytest.approx({
      "first/reward": 1.5, "last/reward": 2.5, "first/kl": 0.15,
      "last/kl": 0.25})
  # A window longer than the run: every row at both ends.
  assert sweep.first_last(its, ["reward"], 5) == {"first/reward": 2.0,
                                                  "last/reward": 2.0}
  with pytest.raises(ValueError, match="first_last.window=0"):
    sweep.first_last(its, ["reward"], 0)
  with pytest.raises(ValueError, match="no iteration rows with reward, x"):
    sweep.iteration_rows(cell, "ppo/metrics.jsonl", ("reward", "x"))


def test_cells_run_once_and_resume(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(sweep, "_run_in_process",
                      lambda files, params: calls.append(params))
  sw = sweep.Sweep(arms=sweep.grid("", {"x.y": [1, 2]}), seeds=(0, 1),
                   root_param="r.root", seed_params=("r.seed",))
  cells = sweep.run(sw, str(tmp_path), in_process=True, log=lambda s: None)
  assert len(cells) == len(calls) == 4
  assert calls[0] == ["x.y=1", "r.seed=0",
                      f"r.root={str(tmp_path / 'y1' / 'seed0')!r}"]
  rec = json.loads((tmp_path / "y2" / "seed1" / sweep.CELL_RECORD)
                   .read_text())
  assert rec["arm"] == "y2" and rec["seed"] == 1 and rec["labels"] == {"y": 2}
  again = sweep.run(sw, str(tmp_path), in_process=True, log=lambda s: None)
  assert len(calls) == 4, "finished cells must not run again"
  assert [c.run_dir for c in again] == [c.run_dir for c in cells]
  with pytest.raises(ValueError, match="no arm named"):
    sweep.run(sw, str(tmp_path), in_process=True, only=["nope"])


def test_tiny_runs_the_tiny_arms_with_the_tiny_gin_and_one_seed(
    tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(sweep, "_run_in_process",
                      lambda files, params: calls.append((files, params)))
  (tmp_path / "spec").mkdir()
  (tmp_path / "spec" / "tiny.gin").write_text("")
  sw = sweep.Sweep(arms=sweep.grid("", {"x.y": [1, 2, 3]}), seeds=(4, 5),
                   tiny_arms=("y1", "y3"))
  cells = sweep.run(sw, str(tmp_path / "r"), spec_dir=str(tmp_path / "spec"),
                    tiny=True, in_process=True, extra_params=("a.b=1",),
                    log=lambda s: None)
  assert [(c.arm.name, c.seed) for c in cells] == [("y1", 4), ("y3", 4)]
  files, params = calls[0]
  assert files[-1] == str(tmp_path / "spec" / "tiny.gin")
  assert params[:2] == ["x.y=1", "a.b=1"]
  with pytest.raises(ValueError, match="tiny_arms"):
    sweep.Sweep(arms=[sweep.Arm("a")], tiny_arms=("b",))
