"""Shared tiny model and batch for the train/ tests."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.model import transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)


@dataclasses.dataclass(frozen=True)
class TinyLM:
  cfg: TransformerConfig
  graphdef: nnx.GraphDef
  params: dict


def tiny_lm_of(cfg: TransformerConfig, seed: int = 0) -> TinyLM:
  """Random params poured into the model's abstract shapes: N(0, 0.02)
  matrices and unit norm gains, like the real init, without compiling it."""
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if str(path[-1].key) == "scale":
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype)

  params = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(abstract))
  return TinyLM(cfg, graphdef, params)


@pytest.fixture(scope="session")
def tiny_lm() -> TinyLM:
  return tiny_lm_of(CFG)


@pytest.fixture(scope="session")
def lm_batch() -> dict[str, np.ndarray]:
  """8 rows whose loss weights differ a lot: per-row token counts 1..16,
  some tokens at weight 0.5, so a per-row or per-microbatch mean differs
  from the per-token mean."""
  b, t = 8, 16
  rng = np.random.default_rng(1)
  toks = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
  lengths = np.array([16, 3, 9, 1, 12, 5, 16, 7])
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  mask[::3, ::2] *= 0.5
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": mask,
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}
