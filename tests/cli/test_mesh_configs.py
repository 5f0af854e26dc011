"""The hardware mesh configs: each binds a fixed mesh of its slice's device
count, and the train step lowers ahead of time on such a mesh.

Lowering runs against a `jax.sharding.AbstractMesh` of the config's shape
for the config's platform (`lowering_platforms`), so a 32-chip TPU mesh
lowers in this 8-CPU-device process: same jitted step, same shardings,
partitioned for that many devices. Nothing is compiled.
"""

from __future__ import annotations

import math
import re

import gin
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType

from lifejax import main as main_lib, sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model.config import TransformerConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training

# file -> (lowering platform, JAX devices in the slice). v4 and v5p names
# count TensorCores, two per chip, and JAX sees one device per chip.
MESHES = {
    "tpu_v4_8": ("tpu", 4),
    "tpu_v5e_16": ("tpu", 16),
    "tpu_v5p_64": ("tpu", 32),
    "gpu_1": ("cuda", 1),
    "gpu_8": ("cuda", 8),
}
CFG = TransformerConfig(vocab_size=256, d_model=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, mlp_dim=128,
                        compute_dtype="bfloat16", remat_policy="full",
                        attention_impl="einsum", matmul_impl="xla",
                        fuse_projections="off", layer_loop="scan")


def _mesh_config(name: str) -> sharding.MeshConfig:
  gin.clear_config()
  try:
    main_lib.parse_gin([f"mesh/{name}.gin"], [])
    return gin.get_configurable(sharding.MeshConfig)()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_config_lowers_on_its_device_count(name):
  platform, devices = MESHES[name]
  cfg = _mesh_config(name)
  shape = (cfg.data, cfg.fsdp, cfg.model)
  assert -1 not in shape and math.prod(shape) == devices
  with open(f"{main_lib.GIN_DIR}/mesh/{name}.gin") as f:
    assert f"Devices: {devices} " in f.read()
  mesh = AbstractMesh(shape, sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)
  batch = 2 * cfg.data * cfg.fsdp
  data = {k: jax.ShapeDtypeStruct((batch, 32), jnp.float32 if k ==
                                  "loss_mask" else jnp.int32)
          for k in ("tokens", "targets", "loss_mask", "segment_ids",
                    "positions")}
  p = plan_training(model_cfg=CFG, make_loss=make_lm_loss_fn,
                    optimizer_cfg=OptimizerConfig(), mesh=mesh,
                    rules=cfg.rules, example_batch=data)
  with_sh = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
  lowered = p.train_step.jitted.trace(
      jax.tree.map(with_sh, p.abstract_state, p.state_shardings),
      jax.tree.map(with_sh, data, p.batch_shardings)).lower(
          lowering_platforms=(platform,))
  text = lowered.as_text()
  assert re.search(r"mhlo\.num_partitions = (\d+)", text).group(1) == str(
      devices)
  # A layer's q projection (L, D, H, E) is split over fsdp like the
  # planner assumes (D = 64 divides by every fsdp size here).
  wq = p.state_shardings["params"]["layers"]["attn"]["wq"].spec
  assert wq == jax.sharding.PartitionSpec(
      None, "fsdp" if cfg.fsdp > 1 else None, None, None)
