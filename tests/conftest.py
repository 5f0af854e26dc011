"""Test-wide setup: 8 simulated CPU devices, strict numerics.

The XLA flag must be set before jax is imported anywhere, so it lives here,
at the root of the test tree, and nothing else in the tests sets it.
"""

import os

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


@pytest.fixture(scope="session")
def devices():
  ds = jax.devices()
  assert len(ds) == 8, f"expected 8 simulated devices, got {len(ds)}"
  return ds
