"""Runs one lifejax job as N JAX processes on this machine.

  python -m lifejax.launch --processes 2 -- --gin_file=... --gin_param=...

starts N copies of `python -m lifejax.main <args>` (or, with `--script`, of
a Python file), each with 8 / N simulated CPU devices (`--devices`: the
total), a free coordinator port on 127.0.0.1 and its process id in the
environment (`COORDINATOR`, `NUM_PROCESSES`, `PROCESS_ID` below). The
entry point calls `initialize_from_env()` first, which joins the job
through `jax.distributed.initialize` (gloo CPU collectives), so the run sees
one global mesh over every process's devices: the same program a pod
runs, each host being one process here.

Every output line is prefixed with its process ("[p1] ..."). The launcher
waits for all processes; when one fails (a non-zero exit or a signal) it
stops the others and exits non-zero with a message naming the process and
how it ended. Rerunning the same command resumes from the newest intact
checkpoint, as a single-process run does.

A new gloo communicator waits only 30 s for every process to join it, so
processes must not reach a program's first collective far apart: the
engine compiles its steps (and the RL forwards) and waits for every
process before running them the first time (`sharding.compiled_together`;
on CPU only process 0 hits JAX's persistent compile cache), and its
barriers wait in the coordination service (`sharding.sync`).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

COORDINATOR = "LIFEJAX_COORDINATOR"
NUM_PROCESSES = "LIFEJAX_NUM_PROCESSES"
PROCESS_ID = "LIFEJAX_PROCESS_ID"

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
# How long a stopped process gets between SIGTERM and SIGKILL.
_GRACE_S = 5.0


def initialize_from_env() -> bool:
  """Joins the multi-process job this process was launched into (see the
  module docstring); True if it did, False when not launched that way.

  Call it before anything touches a JAX backend."""
  num = os.environ.get(NUM_PROCESSES)
  if num is None or int(num) <= 1:
    return False
  import jax
  # CPU devices of different processes talk through gloo (named here: it
  # is the default only in recent JAX releases).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=os.environ[COORDINATOR],
      num_processes=int(num), process_id=int(os.environ[PROCESS_ID]))
  print(f"lifejax: process {jax.process_index()} of {jax.process_count()} "
        f"joined the job at {os.environ[COORDINATOR]} "
        f"({jax.local_device_count()} of {jax.device_count()} devices)",
        file=sys.stderr, flush=True)
  return True


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(base: dict[str, str], *, process_id: int, num_processes: int,
              local_devices: int, coordinator: str) -> dict[str, str]:
  """The environment of process `process_id`: CPU platform, its device
  count (replacing any in XLA_FLAGS) and the job's coordinates."""
  env = dict(base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith(_DEVICE_FLAG)]
  env["XLA_FLAGS"] = " ".join(flags + [f"{_DEVICE_FLAG}={local_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  env.update({COORDINATOR: coordinator, NUM_PROCESSES: str(num_processes),
              PROCESS_ID: str(process_id)})
  return env


def _pump(stream: IO[bytes], prefix: bytes, out: IO[bytes],
          lock: threading.Lock) -> None:
  """Copies `stream` to `out` line by line (a progress bar's \\r updates
  count as lines), each prefixed."""
  buf = b""
  while chunk := stream.read1(65536):
    buf += chunk
    while True:
      cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0),
                default=-1)
      if cut < 0:
        break
      line, buf = buf[:cut + 1], buf[cut + 1:]
      with lock:
        out.write(prefix + line)
        out.flush()
  if buf:
    with lock:
      out.write(prefix + buf + b"\n")
      out.flush()


def describe_exit(code: int) -> str:
  """How a process ended, from its Popen return code."""
  if code < 0:
    try:
      name = signal.Signals(-code).name
    except ValueError:
      name = f"signal {-code}"
    return f"was killed by {name}"
  return f"exited with code {code}"


def _stop(procs: Sequence[subprocess.Popen]) -> list[int]:
  """SIGTERM to every live process, SIGKILL to those still alive after
  the grace period; returns the indices of those it stopped."""
  live = [p for p in procs if p.poll() is None]
  for p in live:
    p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + _GRACE_S
  for p in live:
    try:
      p.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
  return [procs.index(p) for p in live]


def launch(command: Sequence[str], num_processes: int, total_devices: int,
           port: int | None = None, env: dict[str, str] | None = None,
           out: IO[bytes] | None = None) -> int:
  """Runs `command` as `num_processes` processes; returns the job's exit
  status: 0 when every process exited 0, else that of the first process
  that failed (128 + signal number for a signal)."""
  if num_processes < 1:
    raise ValueError(f"--processes must be >= 1, got {num_processes}")
  if total_devices % num_processes:
    raise ValueError(f"--devices={total_devices} does not divide among "
                     f"{num_processes} processes")
  out = out or sys.stdout.buffer
  coordinator = f"127.0.0.1:{port or free_port()}"
  base = dict(os.environ if env is None else env)
  lock = threading.Lock()
  procs, pumps = [], []
  try:
    for i in range(num_processes):
      procs.append(subprocess.Popen(
          list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, env=child_env(
              base, process_id=i, num_processes=num_processes,
              local_devices=total_devices // num_processes,
              coordinator=coordinator)))
  except OSError:
    _stop(procs)
    raise
  for i, p in enumerate(procs):
    t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ".encode(),
                                             out, lock), daemon=True)
    t.start()
    pumps.append(t)

  # One waiter per process: exits are seen in the order they happen, so
  # the process that failed first is named, not a peer that failed
  # because of it.
  exits: queue.Queue[int] = queue.Queue()
  for i, p in enumerate(procs):
    threading.Thread(target=lambda i=i, p=p: (p.wait(), exits.put(i)),
                     daemon=True).start()

  def on_signal(signum, _):
    _stop(procs)
    sys.exit(128 + signum)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT,
                                                   signal.SIGTERM)}
  failed, stopped, done = None, [], 0
  try:
    while done < len(procs):
      try:
        i = exits.get(timeout=0.5)  # a timeout keeps signals deliverable
      except queue.Empty:
        continue
      done += 1
      if procs[i].returncode:
        failed = i
        stopped = _stop(procs)
        break
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    for t in pumps:
      t.join(timeout=_GRACE_S)
  if failed is None:
    return 0
  code = procs[failed].returncode
  with lock:
    out.write(
        f"lifejax.launch: process {failed} (pid {procs[failed].pid}) "
        f"{describe_exit(code)}; stopped the other processes {stopped}. "
        "Rerun the same command to resume from the newest intact "
        "checkpoint.\n".encode())
    out.flush()
  return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m lifejax.launch",
      description="Run a lifejax job as several JAX processes on this "
      "machine (CPU devices); arguments after -- go to lifejax.main (or "
      "to --script).")
  parser.add_argument("--processes", type=int, required=True,
                      help="number of JAX processes (e.g. 2 or 4)")
  parser.add_argument("--devices", type=int, default=8,
                      help="CPU devices in all (default 8), split evenly")
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port on 127.0.0.1 (default: free)")
  parser.add_argument("--script", default=None,
                      help="a Python file to run instead of lifejax.main")
  argv = list(sys.argv[1:] if argv is None else argv)
  rest: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, rest = argv[:cut], argv[cut + 1:]
  args = parser.parse_args(argv)
  entry = ([args.script] if args.script else ["-m", "lifejax.main"])
  try:
    return launch([sys.executable, *entry, *rest], args.processes,
                  args.devices, args.port)
  except (ValueError, OSError) as e:
    print(f"lifejax.launch: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
