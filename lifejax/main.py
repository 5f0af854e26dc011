"""CLI entry: python -m lifejax.main --gin_file=... [--gin_param=...].

Intentionally short: join the multi-process job when `lifejax.launch`
started this process as one of several, parse gin, then run whatever
stage `run.stage` names.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gin
from absl import app, flags
from absl import logging as absl_logging

from lifejax import checks, config_types, launch
from lifejax.train import checkpoint, loop

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "gin_configs")

_GIN_FILES = flags.DEFINE_multi_string(
    "gin_file", [], "Gin config files (searched in cwd and gin_configs/).")
_GIN_PARAMS = flags.DEFINE_multi_string(
    "gin_param", [], "Gin bindings, e.g. --gin_param='pretrain.seed=1'.")


@gin.configurable
def run(stage: Callable[[], Any] = gin.REQUIRED) -> Any:
  """Runs the configured stage (e.g. `run.stage = @pretrain`)."""
  return stage()


def parse_gin(files: Sequence[str], params: Sequence[str]) -> None:
  """Parses gin files and bindings; unknown names fail here, before any work.

  Raises ValueError naming the file/binding gin could not parse.
  """
  import lifejax.stages  # noqa: F401  (registers the configurables)

  for path in (GIN_DIR, os.getcwd(), os.path.dirname(GIN_DIR)):
    gin.add_config_file_search_path(path)
  missing = [f for f in files if not (
      os.path.exists(f) or os.path.exists(os.path.join(GIN_DIR, f)))]
  if missing:
    raise FileNotFoundError(f"gin file(s) not found: {missing} (looked in "
                            f"{os.getcwd()} and {GIN_DIR})")
  files = [f if os.path.exists(f) else os.path.join(GIN_DIR, f) for f in files]
  # gin first tries every `include` as a Python package resource and logs an
  # ERROR when that fails, before finding the file on the search path.
  quiet = _DropGinResourceMisses()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(files, params, finalize_config=False)
  finally:
    logging.getLogger().removeFilter(quiet)


class _DropGinResourceMisses(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    multi = launch.initialize_from_env()
  except (RuntimeError, ValueError, KeyError) as e:
    print(f"lifejax: could not join the multi-process job "
          f"({launch.COORDINATOR}={os.environ.get(launch.COORDINATOR)}): "
          f"{_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  if not multi:
    _main()
    return
  # A process that fails alone must not wait at jax.distributed's exit
  # barrier for peers stuck in a collective: it leaves at once (the
  # launcher then stops the others).
  try:
    _main()
  except SystemExit as e:
    _leave(e.code if isinstance(e.code, int) else int(e.code is not None))
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    _leave(1)


def _leave(code: int) -> None:
  if code:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def _main() -> None:
  try:
    parse_gin(_GIN_FILES.value, _GIN_PARAMS.value)
    config_types.check_bindings()
  except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
    print(f"lifejax: bad gin configuration: {e}", file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS["verbosity"].present:
    # Library INFO lines (orbax saves, ...) would bury the progress bars;
    # --verbosity=0 brings them back.
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    run()
  except (loop.NonFiniteHalt, checkpoint.NonFiniteStateError,
          checkpoint.CheckpointWriteError) as e:
    print(f"lifejax: {e}", file=sys.stderr)
    sys.exit(3)
  except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
    # Before the first train step, such an error is the configuration's or
    # the input's: one line, exit code 2. Later ones keep their traceback.
    if (loop.training_started() and not isinstance(e, checks.ConfigError)
        or os.environ.get("LIFEJAX_TRACEBACK")):
      raise
    print(f"lifejax: {_one_line(e)}\n(set LIFEJAX_TRACEBACK=1 for the "
          "traceback)", file=sys.stderr)
    sys.exit(2)


def _one_line(e: BaseException) -> str:
  """The error's message without gin's "In call to configurable" tail."""
  msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return msg.split("\n  In call to configurable")[0].strip()


if __name__ == "__main__":
  app.run(main)
