"""Published shapes (Llama-3.2-1B, Llama-2-7B) plan and compile abstractly."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "tools", "plan_memory.py")
_spec = importlib.util.spec_from_file_location("plan_memory", _PATH)
plan_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_memory)


@pytest.mark.parametrize("model,mesh,shards", [
    ("llama3_2_1b", (2, 2, 2), 4),   # params split over fsdp x model
    ("llama2_7b", (1, 8, 1), 8),     # pure FSDP
])
def test_published_shapes_compile_abstractly(model, mesh, shards):
  res = plan_memory.plan(model, mesh, batch=8, seq=64)
  n = res["num_params"]
  # Every large parameter is sharded `shards` ways; only norms replicate.
  assert res["param_bytes_per_device"] == pytest.approx(4 * n / shards,
                                                        rel=0.01)
  # Adam: two f32 moments per parameter, sharded like the parameter.
  assert res["opt_state_bytes_per_device"] == pytest.approx(
      2 * res["param_bytes_per_device"], rel=0.01)
  # XLA's own accounting of the compiled step's inputs is the state plus this
  # device's slice of the batch (five (8, 64) 4-byte arrays split over
  # data x fsdp), up to a few scalars (step counter, RNG key).
  data, fsdp, _ = mesh
  state = res["param_bytes_per_device"] + res["opt_state_bytes_per_device"]
  batch_bytes = 5 * (8 // (data * fsdp)) * 64 * 4
  extra_in = res["argument_size_in_bytes"] - state - batch_bytes
  assert 0 <= extra_in <= 64, extra_in
  # The step returns the updated state (plus scalar metrics), nothing more.
  extra_out = res["output_size_in_bytes"] - state
  assert 0 <= extra_out <= 4096, extra_out
