"""Runs (or resumes) one golden stage into a run directory, as its own
process, so a test can kill it with SIGKILL at any point.

  python tests/goldens/kill_driver.py <stage> <golden_root> <run_dir> <cache>
      [<rl_iterations>]

The stage is configured as in `conftest._stage_calls(golden_root)` (its
inputs are the golden runs under golden_root), so the uninterrupted golden
run of the same stage is the reference; `rl_iterations` lengthens an RL
run (the reference is then an uninterrupted launch of the same).
"""

import dataclasses
import os
import sys

# The device count of the in-process golden runs: with 1 host device
# instead of 8, XLA CPU computed a different step-5 pretrain loss (a
# 1-device mesh either way), so the count is part of the reference.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import conftest  # noqa: E402  (tests/goldens/conftest.py: the stage calls)


def main() -> None:
  stage, root, run_dir, cache = sys.argv[1:5]
  # Every launch compiles the same steps: share them through a disk cache.
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  fn, kwargs = next((f, kw) for name, f, kw in conftest._stage_calls(root)  # pylint: disable=protected-access
                    if name == stage)
  # Asynchronous saves (the stages' default; the golden configs save
  # synchronously): a kill can then land while a save is in flight. The
  # losses do not depend on how checkpoints are written.
  kwargs["checkpoint"] = dataclasses.replace(kwargs["checkpoint"],
                                             async_save=True)
  if len(sys.argv) > 5:
    kwargs["loop"] = dataclasses.replace(kwargs["loop"],
                                         num_iterations=int(sys.argv[5]))
  fn(run_dir=run_dir, **kwargs)


if __name__ == "__main__":
  main()
