"""Low-rank adapters (LoRA) on chosen projections of the decoder.

Adapters live in their own params pytree, keyed like the base params
(`{"layers": {"attn": {"wq": {"a": ..., "b": ...}}}}`), so only they are
trained and only they have optimizer state. A projection W of shape
(Y, in..., out...) gets A (Y, in, r) and B (Y, r, out) with the effective
weight W + (alpha / r) * A @ B; B starts at zero so training starts from the
base model exactly. `merge` folds the adapters into W for serving and
export; `unmerge` takes them out again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# Number of input axes after the stacked-layer axis, per projection name:
# wq (Y, D, H, E) has one input axis (D); wo (Y, H, E, D) has two (H, E).
INPUT_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2,
              "w_gate": 1, "w_up": 1, "w_down": 1}
GROUP = {"wq": "attn", "wk": "attn", "wv": "attn", "wo": "attn",
         "w_gate": "mlp", "w_up": "mlp", "w_down": "mlp"}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")

  def __post_init__(self):
    unknown = [t for t in self.targets if t not in INPUT_AXES]
    if unknown:
      raise ValueError(f"LoraConfig.targets {unknown} are not projections; "
                       f"choose from {sorted(INPUT_AXES)}")
    if self.rank < 1:
      raise ValueError(f"LoraConfig.rank must be >= 1, got {self.rank}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _split_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
  n_in = INPUT_AXES[name]
  y = shape[0]
  d_in = math.prod(shape[1:1 + n_in])
  d_out = math.prod(shape[1 + n_in:])
  return y, d_in, d_out


def init_lora(base_params: dict, cfg: LoraConfig, rng: jax.Array,
              dtype: jnp.dtype = jnp.float32) -> dict:
  """Adapters for every target projection: A ~ N(0, 1/in), B = 0."""
  lora: dict = {"layers": {}}
  for i, name in enumerate(cfg.targets):
    w = base_params["layers"][GROUP[name]][name]
    y, d_in, d_out = _split_shape(name, w.shape)
    a = jax.random.normal(jax.random.fold_in(rng, i), (y, d_in, cfg.rank),
                          dtype) / math.sqrt(d_in)
    b = jnp.zeros((y, cfg.rank, d_out), dtype)
    lora["layers"].setdefault(GROUP[name], {})[name] = {"a": a, "b": b}
  return lora


def delta(name: str, shape: tuple[int, ...], ab: dict, cfg: LoraConfig
          ) -> jax.Array:
  """(alpha/r) * A @ B reshaped to the base weight's shape, in f32."""
  d = jnp.einsum("yir,yro->yio", ab["a"].astype(jnp.float32),
                 ab["b"].astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return (cfg.scale * d).reshape(shape)


def _apply(base_params: dict, lora: dict, cfg: LoraConfig, sign: float
           ) -> dict:
  out = jax.tree.map(lambda x: x, base_params)  # shallow structural copy
  for group, projs in lora["layers"].items():
    for name, ab in projs.items():
      w = base_params["layers"][group][name]
      out["layers"][group][name] = (
          w.astype(jnp.float32) + sign * delta(name, w.shape, ab, cfg)
      ).astype(w.dtype)
  return out


def merge(base_params: dict, lora: dict, cfg: LoraConfig) -> dict:
  """Base params with the adapters folded in (W + s * A @ B)."""
  return _apply(base_params, lora, cfg, 1.0)


def unmerge(merged_params: dict, lora: dict, cfg: LoraConfig) -> dict:
  """Inverse of `merge` (W' - s * A @ B), exact up to float rounding."""
  return _apply(merged_params, lora, cfg, -1.0)


def lora_loss_fn(base_loss_fn: Callable, cfg: LoraConfig) -> Callable:
  """Turns `loss_fn(params, batch, rng)` into one over {"trainable": lora,
  "frozen": base}: gradients reach only the adapters."""

  def loss_fn(params, batch, rng):
    base = jax.lax.stop_gradient(params["frozen"])
    return base_loss_fn(merge(base, params["trainable"], cfg), batch, rng)

  return loss_fn


def num_params(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def optimizer_state_bytes(opt_state: Any) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(opt_state))
