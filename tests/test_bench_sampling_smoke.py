"""tools/bench_sampling.py runs end to end in a tiny configuration.

Only that it runs, reports, and that lifejax and HF decode the same greedy
tokens from the same exported weights are checked: timings are never
asserted (the cores are shared, and speed is what the benchmark reports).
"""

import importlib.util
import os
import sys

import pytest

pytest.importorskip("transformers")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "bench_sampling", os.path.join(_ROOT, "tools", "bench_sampling.py"))
bench_sampling = importlib.util.module_from_spec(_spec)
sys.modules["bench_sampling"] = bench_sampling  # dataclasses look it up
_spec.loader.exec_module(bench_sampling)


@pytest.mark.parametrize("devices", [1, 2])
def test_bench_sampling_runs_and_agrees_with_hf(tmp_path, devices):
  """devices=2: lifejax's batch sharded over two of the simulated CPU
  devices must decode the same tokens as HF (and as one device)."""
  out = tmp_path / "results.md"
  # A large init std makes the logits peaky: no near-ties, so f32 greedy
  # tokens must agree exactly, ragged left padding included.
  text = bench_sampling.main([
      "--model=test", "--batch=3", "--prompt_len=8", "--min_prompt_len=3",
      "--new_tokens=2", "--precision=f32", "--rounds=1", "--init_std=0.3",
      "--batch=4" if devices > 1 else "--batch=3",
      f"--lifejax_devices={devices}", f"--out={out}"])
  assert out.read_text() == text
  assert text.startswith(
      "Command: `python tools/bench_sampling.py --model=test")
  assert "| f32 | lifejax, " in text and "| f32 | HF, 1 thread |" in text
  assert (f"batch over {devices} devices" in text) == (devices > 1)
  assert "| f32 | 100% | 100% | 100% | 2.0 / 2 |" in text, text


def test_bench_sampling_without_peer(tmp_path):
  text = bench_sampling.main([
      "--model=test", "--batch=2", "--prompt_len=4", "--new_tokens=2",
      "--precision=bf16", "--rounds=1", "--no_peer"])
  assert "| bf16 | lifejax, " in text and "| HF, " not in text
