"""One process of a multi-process test job (started by `lifejax.launch
--script`), or a single-process run of the same:

  python tests/distributed/driver.py <root> <compile_cache> <stage,...>

joins the job (`launch.initialize_from_env`), runs the named stages of
`jobs.stage_calls(root)` and writes their per-step losses to
root/losses.p<process>.json. With LIFEJAX_TEST_KILL_AT=<process>:<call>,
that process kills itself (SIGKILL) as it makes its <call>-th train step.
"""

import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lifejax import launch  # noqa: E402

launch.initialize_from_env()

import jax  # noqa: E402

import jobs  # noqa: E402

# As tests/conftest.py sets them for the in-process reference.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


def kill_hook() -> None:
  spec = os.environ.get("LIFEJAX_TEST_KILL_AT", "-1:0")
  process, call = (int(x) for x in spec.split(":"))
  # Installed in every process of every launch, acting or not: the call
  # stack is part of what a program is compiled from, and every launch
  # should hit the compile cache entries of the first.
  orig = jobs.step_lib.jit_train_step

  def wrapped(*args, **kwargs):
    run = orig(*args, **kwargs)
    calls = [0]

    def killing(state, batch):
      calls[0] += 1
      if calls[0] == call and jax.process_index() == process:
        os.kill(os.getpid(), signal.SIGKILL)
      return run(state, batch)

    killing.jitted = run.jitted
    return killing

  jobs.step_lib.jit_train_step = wrapped


def main() -> None:
  root, cache, names = sys.argv[1:4]
  # Processes of later launches of the same job reuse the compiled steps.
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  kill_hook()
  jobs.write_losses(root, jobs.run_chain(root, names.split(",")))


if __name__ == "__main__":
  main()
