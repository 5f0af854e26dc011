"""Tiny models and batches shared by the loss tests."""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2,
                        num_kv_heads=1, mlp_dim=32)
SEQ_LEN = 8


@dataclasses.dataclass(frozen=True)
class Tiny:
  graphdef: nnx.GraphDef
  params: dict


def random_tiny(model_cls, cfg: TransformerConfig = CFG, seed: int = 0,
                std: float = 0.1) -> Tiny:
  """N(0, std) params (unit norm gains) in `model_cls(cfg)`'s abstract
  shapes: no eager init, which is slow on a busy CPU."""
  graphdef, abstract = nnx.split(heads.abstract(model_cls, cfg), nnx.Param)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if str(path[-1].key) == "scale":
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)

  params = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(abstract))
  return Tiny(graphdef, params)


@pytest.fixture(scope="session")
def tiny_lm() -> Tiny:
  return random_tiny(transformer.Transformer, seed=0)


@pytest.fixture(scope="session")
def tiny_lm_other() -> Tiny:
  """A second LM with different weights (a reference policy)."""
  return random_tiny(transformer.Transformer, seed=1)


def lm_rows(rng: np.random.Generator, b: int, prompt_lens, resp_lens,
            t: int = SEQ_LEN) -> dict[str, np.ndarray]:
  """LM rows of random tokens: loss_mask on targets [p - 1, p - 1 + r)."""
  toks = rng.integers(1, CFG.vocab_size, (b, t + 1)).astype(np.int32)
  mask = np.zeros((b, t), np.float32)
  for i, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
    mask[i, p - 1:p - 1 + r] = 1.0
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": mask,
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}


@pytest.fixture(scope="session")
def pair_batch() -> dict[str, dict[str, np.ndarray]]:
  """4 preference pairs with different prompt/response lengths."""
  rng = np.random.default_rng(0)
  chosen = lm_rows(rng, 4, [2, 3, 1, 4], [5, 2, 7, 3])
  rejected = lm_rows(rng, 4, [2, 3, 1, 4], [3, 5, 4, 4])
  return {"chosen": chosen, "rejected": rejected}


def np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def np_sequence_logps(logits, targets, mask) -> tuple[np.ndarray, np.ndarray]:
  """Brute-force per-row sums of log p(target) under the mask (float64)."""
  logp = np_log_softmax(logits)
  b, t = targets.shape
  sums = np.zeros(b)
  for i in range(b):
    for j in range(t):
      sums[i] += mask[i, j] * logp[i, j, targets[i, j]]
  return sums, np.asarray(mask, np.float64).sum(axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, params: dict,
             rows: dict[str, np.ndarray]) -> jax.Array:
  model = nnx.merge(graphdef, params)
  return model(rows["tokens"], rows["positions"], rows["segment_ids"])


def lm_logits(tiny: Tiny, rows: dict[str, np.ndarray]) -> np.ndarray:
  """The model's outputs (logits (B, T, V) for an LM) as float64 numpy;
  compiled once per graphdef and shapes."""
  return np.asarray(_forward(tiny.graphdef, tiny.params, rows), np.float64)


@pytest.fixture(scope="session")
def helpers() -> types.SimpleNamespace:
  """Plain functions for the tests (test modules cannot import conftest)."""
  return types.SimpleNamespace(
      cfg=CFG, seq_len=SEQ_LEN, random_tiny=random_tiny, lm_rows=lm_rows,
      np_log_softmax=np_log_softmax, np_sequence_logps=np_sequence_logps,
      lm_logits=lm_logits)
