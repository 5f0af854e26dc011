"""The test scheduler (tests/conftest.py): which tests run together on one
worker, and the longest measured group is handed out first."""

import collections
import glob
import os

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _group_of_file(grouping, path: str) -> str:
  return grouping.test_group(f"{path}::test")


def test_files_that_share_a_build_form_one_group(test_grouping):
  for folder, fixtures in test_grouping.shared_builds.items():
    files = sorted(glob.glob(os.path.join(_ROOT, folder, "test_*.py")))
    users = []
    for f in files:
      with open(f) as fh:
        if any(n in fh.read() for n in fixtures):
          users.append(os.path.relpath(f, _ROOT))
    assert users, f"{folder}: no test uses {fixtures}"
    groups = {_group_of_file(test_grouping, u) for u in users}
    assert groups == {f"{folder}/shared_build"}, groups
  # Everything else is grouped by file, the multi-process tests by folder.
  assert _group_of_file(test_grouping, "tests/test_model.py") == \
      "tests/test_model.py"
  assert _group_of_file(test_grouping, "tests/rl/test_rl_stages.py") == \
      "tests/rl/test_rl_stages.py"
  assert _group_of_file(test_grouping, "tests/distributed/test_launch.py") \
      == "tests/distributed"


def test_tiny_experiments_that_share_the_base_form_one_group(test_grouping):
  tiny = ("tests/experiments/test_experiments_tiny.py::"
          "test_experiment_runs_at_tiny_scale[{}]")
  # dpo_vs_ppo starts from the shared tiny lifecycle; warmup does not.
  assert test_grouping.test_group(tiny.format("dpo_vs_ppo")).endswith(
      "[shared_base]")
  assert test_grouping.test_group(tiny.format("warmup")).endswith(
      "[warmup]")


def test_measured_groups_still_exist(test_grouping):
  """A renamed or deleted file leaves a stale entry in
  tests/group_seconds.json that the scheduler never uses: re-record it."""
  files = glob.glob(os.path.join(_ROOT, "tests", "**", "test_*.py"),
                    recursive=True)
  existing = {_group_of_file(test_grouping, os.path.relpath(f, _ROOT))
              for f in files}
  stale = [g for g in test_grouping.measured_seconds()
           if "[" not in g and g not in existing]
  assert not stale, f"tests/group_seconds.json names missing groups: {stale}"


def test_the_longest_group_is_handed_out_first(test_grouping):
  if test_grouping.scheduler is None:
    pytest.skip("pytest-xdist is not installed")
  sched = test_grouping.scheduler.__new__(test_grouping.scheduler)
  sched._seconds = {"a": 5.0, "b": 50.0}
  # "c" is unmeasured: 40 tests at the default seconds per test.
  sched.workqueue = collections.OrderedDict(
      (("a", {"a::1": False}), ("b", {"b::1": False}),
       ("c", {f"c::{i}": False for i in range(40)})))
  sched.assigned_work = {}
  sent = []

  class Node:

    def send_runtest_some(self, indexes):
      sent.append(indexes)

  node = Node()
  sched.registered_collections = {
      node: ["a::1", "b::1"] + [f"c::{i}" for i in range(40)]}
  for _ in range(3):
    sched._assign_work_unit(node)
  assert list(sched.assigned_work[node]) == ["c", "b", "a"]
  assert sent == [list(range(2, 42)), [1], [0]]
