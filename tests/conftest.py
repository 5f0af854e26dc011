"""Test-wide setup: 8 simulated CPU devices, strict numerics.

The XLA flag must be set before jax is imported anywhere, so it lives here,
at the root of the test tree, and nothing else in the tests sets it.
"""

import atexit
import os
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


# Test workers (`make test` runs pytest-xdist with two workers): each test
# file runs on one worker, so its module fixtures are built once, and the
# folders whose session fixtures several files share (a tiny lifecycle, the
# golden runs, the experiments' shared base, the multi-process jobs, the
# stage runs) run whole on one worker, so those are built once too. (A
# scheduler, not xdist_group marks: with pytest 9, xdist 3.8's loadgroup
# never sees the marks' group in the node ids.)
_SHARED_FIXTURE_DIRS = ("distributed", "eval", "experiments", "goldens",
                        "stages")


def test_group(nodeid: str) -> str:
  """The unit of work a worker takes: a shared-fixture folder or a file."""
  path = nodeid.split("::", 1)[0]
  parts = path.split("/")
  if len(parts) > 2 and parts[1] in _SHARED_FIXTURE_DIRS:
    return "/".join(parts[:2])
  return path


try:
  from xdist.scheduler import LoadScopeScheduling
except ImportError:  # plain pytest: one process
  LoadScopeScheduling = None

if LoadScopeScheduling is not None:

  class _GroupScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid: str) -> str:
      return test_group(nodeid)

  def pytest_xdist_make_scheduler(config, log):
    return _GroupScheduling(config, log)
