"""experiments/early_stopping: the small training set is balanced, seeded and
drawn from the train split only; bad sizes are named."""

import os
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # the module name experiment.py and gin use
  sys.path.insert(0, _REPO)
from experiments.early_stopping import cell  # noqa: E402

TASKS = ("a", "b", "c")
RECORDS = [{"id": f"{t}{i}", "task": t} for t in TASKS for i in range(7)]


def test_subset_is_balanced_seeded_and_in_order():
  s0 = cell.draw_subset(RECORDS, 6, seed=0)
  assert [r["task"] for r in s0].count("a") == 2
  assert {r["task"] for r in s0} == set(TASKS)
  assert len({r["id"] for r in s0}) == 6  # without replacement
  assert s0 == cell.draw_subset(RECORDS, 6, seed=0)
  assert s0 != cell.draw_subset(RECORDS, 6, seed=1)
  idx = [RECORDS.index(r) for r in s0]
  assert idx == sorted(idx)


@pytest.mark.parametrize("n, match", [(4, "multiple of the 3 tasks"),
                                      (0, "multiple of the 3 tasks"),
                                      (24, "needs 8 records per task")])
def test_bad_sizes_name_the_field(n, match):
  with pytest.raises(ValueError, match=match) as e:
    cell.draw_subset(RECORDS, n, seed=0)
  assert "early_stopping_cell.train_records" in str(e.value)


def test_base_root_defaults_to_the_sweep_root():
  assert cell.default_base_root("/r/sweep/overfit/seed2") == "/r/sweep/base"
