"""`lifejax.launch`: process environments, failure handling and the
lifejax.main hook (no training here: see test_multiprocess.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest

from lifejax import launch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_child_env_sets_devices_and_coordinates():
  env = launch.child_env(
      {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8",
       "KEEP": "1"}, process_id=1, num_processes=4, local_devices=2,
      coordinator="127.0.0.1:1234")
  assert env["XLA_FLAGS"].split() == [
      "--xla_cpu_foo=1", "--xla_force_host_platform_device_count=2"]
  assert env[launch.PROCESS_ID] == "1"
  assert env[launch.NUM_PROCESSES] == "4"
  assert env[launch.COORDINATOR] == "127.0.0.1:1234"
  assert env["JAX_PLATFORMS"] == "cpu" and env["KEEP"] == "1"


def test_a_failing_process_stops_the_others(tmp_path):
  script = tmp_path / "job.py"
  ready = tmp_path / "ready"
  ready.mkdir()
  script.write_text(textwrap.dedent(f"""
      import os, sys, time
      i = int(os.environ[{launch.PROCESS_ID!r}])
      print("hello from", i, "of", os.environ[{launch.NUM_PROCESSES!r}],
            os.environ["XLA_FLAGS"], flush=True)
      open(os.path.join({str(ready)!r}, str(i)), "w").close()
      if i == 2:  # fails once every process has said hello
        while len(os.listdir({str(ready)!r})) < 4:
          time.sleep(0.01)
        sys.exit(3)
      time.sleep(600)  # stopped by the launcher
  """))
  out = io.BytesIO()
  code = launch.launch([sys.executable, str(script)], 4, 8, out=out)
  text = out.getvalue().decode()
  assert code == 3, text
  for i in range(4):
    assert (f"[p{i}] hello from {i} of 4 "
            "--xla_force_host_platform_device_count=2") in text
  assert ("lifejax.launch: process 2 (pid " in text
          and "exited with code 3; stopped the other processes [0, 1, 3]"
          in text), text


def test_signals_are_named():
  assert launch.describe_exit(-9) == "was killed by SIGKILL"
  assert launch.describe_exit(2) == "exited with code 2"


def test_devices_must_divide_among_processes(capsys):
  assert launch.main(["--processes", "3", "--", "--gin_file=x"]) == 2
  assert "--devices=8 does not divide among 3 processes" in (
      capsys.readouterr().err)


def test_main_joins_the_job_and_fails_in_one_line():
  """Both processes of a lifejax.main job join it, then the bad binding is
  reported in one line and the launcher exits 2. Which process reports
  first is a race: the launcher stops the others when one exits, so the
  second may be stopped before it prints (seen under load)."""
  proc = subprocess.run(
      [sys.executable, "-m", "lifejax.launch", "--processes", "2", "--",
       "--gin_param=no_such_configurable.x = 1"], cwd=REPO,
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stdout[-3000:]
  for i in (0, 1):
    assert (f"[p{i}] lifejax: process {i} of 2 joined the job at "
            "127.0.0.1:") in proc.stdout
    assert "(4 of 8 devices)" in proc.stdout
  assert any(f"[p{i}] lifejax: bad gin configuration: " in proc.stdout
             for i in (0, 1)), proc.stdout[-3000:]
  assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
  assert "exited with code 2" in proc.stdout


@pytest.mark.parametrize("value", ("", "1"))
def test_not_launched_means_single_process(monkeypatch, value):
  monkeypatch.delenv(launch.NUM_PROCESSES, raising=False)
  if value:
    monkeypatch.setenv(launch.NUM_PROCESSES, value)
  assert launch.initialize_from_env() is False
