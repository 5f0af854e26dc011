"""Test-wide setup: 8 simulated CPU devices, strict numerics.

The XLA flag must be set before jax is imported anywhere, so it lives here,
at the root of the test tree, and nothing else in the tests sets it.
"""

import atexit
import collections
import functools
import json
import os
import re
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

# One persistent compilation cache for the session, shared with the
# processes tests launch (they inherit the environment): tests that build
# the same programs (the tiny lifecycle run again to resume it, an
# experiment's arms at tiny scale, stages that share a model) compile them
# once. It lives in a fresh temporary folder, so nothing outlives the
# session and no stale entry can be read; the key covers the program, the
# devices and the compile options, and a cached executable is the one XLA
# compiled, so results are unchanged.
_CACHE = tempfile.mkdtemp(prefix="lifejax_test_jit_cache_")
atexit.register(shutil.rmtree, _CACHE, True)
for _name, _value in (("jax_compilation_cache_dir", _CACHE),
                      ("jax_persistent_cache_min_compile_time_secs", 0),
                      ("jax_persistent_cache_min_entry_size_bytes", 0)):
  os.environ[_name.upper()] = str(_value)
  jax.config.update(_name, _value)


@pytest.fixture(scope="session")
def devices():
  ds = jax.devices()
  assert len(ds) == 8, f"expected 8 simulated devices, got {len(ds)}"
  return ds


# Test workers (`make test` runs pytest-xdist with two workers). A worker
# takes a group of tests at a time: a test file, except that the files that
# use a folder's expensive shared build (_SHARED_BUILDS: the tiny lifecycle,
# the golden runs, the stage runs) form one group, so it is built once, and
# the multi-process tests form one group (they launch their own processes).
# The tiny experiment runs that start from the shared tiny lifecycle
# (`BASE_ROOT_PARAM`) are one group; every other experiment is its own. The
# scheduler hands out the group with the largest measured time first
# (tests/group_seconds.json, written by
# `pytest -n 2 --record-group-times=tests/group_seconds.json`), so the long
# groups start at once and the short ones fill in behind them.
# (A scheduler, not xdist_group marks: with pytest 9, xdist 3.8's loadgroup
# never sees the marks' group in the node ids.)
_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)
_WHOLE_FOLDERS = ("distributed",)
_SHARED_BUILDS = {"tests/eval": ("tiny_lifecycle", "lifecycle_copy",
                                 "run_lifecycle"),
                  "tests/goldens": ("golden_root", "golden_runs"),
                  "tests/stages": ("tiny_runs",)}
_GROUP_SECONDS = os.path.join(_TESTS, "group_seconds.json")
# A group missing from the file (a new test file) counts this many seconds
# per test.
_DEFAULT_SECONDS_PER_TEST = 2.0


@functools.lru_cache(maxsize=None)
def _uses_any(path: str, names: tuple[str, ...]) -> bool:
  try:
    with open(os.path.join(_ROOT, path)) as f:
      text = f.read()
  except OSError:
    return False
  return any(re.search(rf"\b{n}\b", text) for n in names)


@functools.lru_cache(maxsize=None)
def _uses_shared_base(experiment: str) -> bool:
  spec = os.path.join(_ROOT, "experiments", experiment, "experiment.py")
  try:
    with open(spec) as f:
      return "BASE_ROOT_PARAM" in f.read()
  except OSError:
    return False


def test_group(nodeid: str) -> str:
  """The unit of work a worker takes (see above)."""
  path, _, rest = nodeid.partition("::")
  parts = path.split("/")
  if len(parts) > 2 and parts[1] in _WHOLE_FOLDERS:
    return "/".join(parts[:2])
  if path == "tests/experiments/test_experiments_tiny.py" and "[" in rest:
    name = rest[rest.index("[") + 1:rest.rindex("]")]
    return f"{path}[{'shared_base' if _uses_shared_base(name) else name}]"
  folder = os.path.dirname(path)
  if folder in _SHARED_BUILDS and _uses_any(path, _SHARED_BUILDS[folder]):
    return f"{folder}/shared_build"
  return path


def _measured_seconds() -> dict[str, float]:
  try:
    with open(_GROUP_SECONDS) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


try:
  from xdist.scheduler import LoadScopeScheduling
except ImportError:  # plain pytest: one process
  LoadScopeScheduling = None

if LoadScopeScheduling is not None:

  class _GroupScheduling(LoadScopeScheduling):
    """xdist's per-scope scheduling with test_group as the scope, longest
    measured group first."""

    def __init__(self, config, log=None):
      super().__init__(config, log)
      self._seconds = _measured_seconds()

    def _split_scope(self, nodeid: str) -> str:
      return test_group(nodeid)

    def _cost(self, scope: str) -> float:
      if scope in self._seconds:
        return self._seconds[scope]
      return _DEFAULT_SECONDS_PER_TEST * len(self.workqueue[scope])

    def _assign_work_unit(self, node) -> None:
      longest = max(self.workqueue, key=self._cost)
      self.workqueue.move_to_end(longest, last=False)
      super()._assign_work_unit(node)

  def pytest_xdist_make_scheduler(config, log):
    return _GroupScheduling(config, log)


def pytest_addoption(parser):
  parser.addoption(
      "--record-group-times", metavar="FILE", default=None,
      help="write each test group's summed setup + call + teardown seconds "
      "to FILE as JSON (the scheduler reads tests/group_seconds.json)")


class _GroupTimes:
  """Sums report durations per test group and per worker (on the xdist
  controller every worker's reports pass through here)."""

  def __init__(self, out: str | None):
    self.out = out
    self.groups: dict[str, float] = collections.defaultdict(float)
    self.workers: dict[str, float] = collections.defaultdict(float)

  def pytest_runtest_logreport(self, report):
    self.groups[test_group(report.nodeid)] += report.duration
    node = getattr(report, "node", None)
    worker = getattr(getattr(node, "gateway", None), "id", "main")
    self.workers[worker] += report.duration

  def pytest_terminal_summary(self, terminalreporter):
    if len(self.workers) > 1:
      terminalreporter.write_line(
          "test seconds per worker: " + ", ".join(
              f"{w} {s:.0f}" for w, s in sorted(self.workers.items())))
    if self.out:
      with open(self.out, "w") as f:
        json.dump({g: round(s, 1) for g, s in sorted(self.groups.items())},
                  f, indent=1)
        f.write("\n")
      terminalreporter.write_line(f"group times written to {self.out}")


def pytest_configure(config):
  if getattr(config, "workerinput", None) is None:  # the controller
    config.pluginmanager.register(
        _GroupTimes(config.getoption("--record-group-times")),
        "lifejax_group_times")


@pytest.fixture(scope="session")
def test_grouping():
  """The scheduler's pieces, for tests/test_scheduling.py (test modules
  cannot import conftest)."""
  import types  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(
      test_group=test_group, measured_seconds=_measured_seconds,
      shared_builds=_SHARED_BUILDS,
      scheduler=_GroupScheduling if LoadScopeScheduling else None)
