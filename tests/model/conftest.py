"""Fixtures shared by the model tests."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lifejax.model import transformer
from lifejax.model.config import TransformerConfig


@pytest.fixture
def moe_batch():
  """make(b, t, vocab, seed) -> a random next-token batch of b rows of t
  tokens (one segment per row, every target weighted)."""

  def make(b: int = 8, t: int = 8, vocab: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
    return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
            "loss_mask": np.ones((b, t), np.float32),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}

  return make


@pytest.fixture
def moe_host_params():
  """make(cfg) -> N(0, 0.02) params of a model (unit norm gains, the
  router's at std 0.8 so that capacity bites), made on the host as a pure
  dict."""

  def make(cfg: TransformerConfig) -> dict:
    _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
    rng = np.random.default_rng(0)

    def one(path, x):
      if path[-1].key == "scale":
        return np.ones(x.shape, x.dtype)
      std = 0.8 if path[-1].key == "w_router" else 0.02
      return (std * rng.standard_normal(x.shape)).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(one, nnx.to_pure_dict(abstract))

  return make
