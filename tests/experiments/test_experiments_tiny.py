"""Every experiment folder runs end to end at tiny scale.

`python -m lifejax.sweep experiments/<name> --tiny` adds the experiment's
tiny.gin and runs its first seed: every arm's code path, minutes-scale. The
check is that each arm ran and the summary wrote its table (a row per arm)
and plot; what the numbers say is the full-scale run's business.
"""

import glob
import os

import pytest

from lifejax import sweep

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_EXPERIMENTS = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(
    os.path.join(_ROOT, "experiments", "*", sweep.SPEC)))


@pytest.fixture(scope="module")
def shared_base(tmp_path_factory):
  """One lifecycle root for the experiments that start from the tiny
  lifecycle's pretrained (or SFT) model (their `BASE_ROOT_PARAM`): the
  first builds it, the others resume or reuse it."""
  return str(tmp_path_factory.mktemp("tiny_base") / "base")


@pytest.mark.parametrize("name", _EXPERIMENTS)
def test_experiment_runs_at_tiny_scale(name, tmp_path, monkeypatch,
                                       shared_base):
  monkeypatch.chdir(_ROOT)
  exp = os.path.join("experiments", name)
  spec = sweep.load_spec(exp)
  base = getattr(spec, "BASE_ROOT_PARAM", None)
  md = sweep.main([exp, "--tiny", "--in_process", f"--root={tmp_path}/runs",
                   f"--out={tmp_path}/out"]
                  + [f"--gin_param={base}={shared_base!r}"] * bool(base))
  assert (tmp_path / "out" / "results.md").read_text() == md
  tiny_arms = spec.SWEEP.tiny_arms
  for arm in [a for a in spec.SWEEP.arms
              if tiny_arms is None or a.name in tiny_arms]:
    rec = tmp_path / "runs" / arm.name / f"seed{spec.SWEEP.seeds[0]}" / \
        sweep.CELL_RECORD
    assert rec.exists(), f"{name}: arm {arm.name} did not run"
    assert arm.name in md or getattr(spec, "ARM_NAMES_IN_TABLE", True) is \
        False, f"{name}: arm {arm.name} is missing from results.md"
  assert glob.glob(str(tmp_path / "out" / "*.png")), \
      f"{name}: summarize wrote no plot"
