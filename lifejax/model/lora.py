"""Low-rank adapters (LoRA) on the projections of every decoder trunk in a
params tree, the way PEFT adapts reward and value models.

A *trunk* is a dict whose "layers" hold "attn"/"mlp" projection kernels: an
LM's params, a RewardModel/ValueModel's "backbone", a PolicyValueModel's
"lm". LoRA freezes each trunk's own weights (embeddings, norms, projections,
LM head) and adds adapters on its target projections; every leaf outside
the trunks (a fresh "head" / "value_head") stays fully trainable, because a
new head must learn.

The trainable tree mirrors the base tree: each trunk is replaced by its
adapters {"layers": {group: {name: {"a": A, "b": B}}}} and each leaf outside
a trunk appears as itself. An LM's trainable tree is thus its adapters
alone; a RewardModel's is
  {"backbone": {"layers": {"attn": {"wq": {"a", "b"}, ...}, ...}},
   "head": {"kernel": (D, 1), "bias": (1,)}};
the RL trees {"policy", "value"} and {"lm", "value_head"} follow suit. It
is a plain pytree, so optimizer state, checkpoints and path-based masks
(weight decay) work unchanged, and only it gets optimizer state. The base
tree is kept frozen beside it; its leaves outside the trunks are then only
initial values, which `merge` ignores.

A projection W (Y, in..., out...) gets A (Y, in, r) and B (Y, r, out); the
effective weight is W + (alpha / r) * A @ B. B starts at zero, so training
starts from the base model exactly. `merge(base, trainable)` returns the
full params tree (the base's structure) for the loss, sampling and export;
`unmerge` takes the adapters out again.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

# Number of input axes after the stacked-layer axis, per projection name:
# wq (Y, D, H, E) has one input axis (D); wo (Y, H, E, D) has two (H, E).
INPUT_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2,
              "w_gate": 1, "w_up": 1, "w_down": 1}
GROUP = {"wq": "attn", "wk": "attn", "wv": "attn", "wo": "attn",
         "w_gate": "mlp", "w_up": "mlp", "w_down": "mlp"}
Path = tuple[str, ...]


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


def is_trunk(node: Any) -> bool:
  """Whether `node` is a decoder trunk: "layers" holding "attn"/"mlp"."""
  layers = node.get("layers") if isinstance(node, Mapping) else None
  return isinstance(layers, Mapping) and any(
      isinstance(layers.get(g), Mapping) for g in ("attn", "mlp"))


def trunk_paths(tree: Any, prefix: Path = ()) -> list[Path]:
  """Key paths of every trunk in a params tree (() if it is one)."""
  if is_trunk(tree):
    return [prefix]
  if isinstance(tree, Mapping):
    return [p for k in sorted(tree) for p in trunk_paths(tree[k],
                                                         prefix + (k,))]
  return []


def _split_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
  n_in = INPUT_AXES[name]
  y = shape[0]
  d_in = math.prod(shape[1:1 + n_in])
  d_out = math.prod(shape[1 + n_in:])
  return y, d_in, d_out


def _init_trunk(trunk: Mapping, cfg: LoraConfig, rng: jax.Array,
                dtype: jnp.dtype) -> dict:
  """One trunk's adapters: A ~ N(0, 1/in), B = 0."""
  lora: dict = {"layers": {}}
  for i, name in enumerate(cfg.targets):
    group = trunk["layers"].get(GROUP[name], {})
    w = group.get(name)
    if w is None:
      raise ValueError(f"LoRA target {name!r} is not in this trunk's "
                       f"{GROUP[name]!r} params")
    if "w_router" in group:  # a mixture of experts: (Y, X, in, out) kernels
      raise ValueError(
          f"LoraConfig.targets: {name!r} is a mixture-of-experts kernel "
          "(one per expert), which LoRA does not adapt; target the "
          "attention projections (wq, wk, wv, wo)")
    y, d_in, d_out = _split_shape(name, w.shape)
    a = jax.random.normal(jax.random.fold_in(rng, i), (y, d_in, cfg.rank),
                          dtype) / math.sqrt(d_in)
    b = jnp.zeros((y, cfg.rank, d_out), dtype)
    lora["layers"].setdefault(GROUP[name], {})[name] = {"a": a, "b": b}
  return lora


def _trunk_rng(rng: jax.Array, path: Path) -> jax.Array:
  # A root trunk (an LM tree) uses `rng` itself; nested trunks fold in
  # their path so, e.g., policy and critic adapters start independent.
  if not path:
    return rng
  return jax.random.fold_in(rng, zlib.crc32("/".join(path).encode())
                            & 0x7FFFFFFF)


def init_lora(base_params: Any, cfg: LoraConfig, rng: jax.Array,
              dtype: jnp.dtype = jnp.float32) -> Any:
  """The trainable tree (see the module docstring): adapters for every
  trunk's target projections, the leaves outside the trunks as they are."""
  if not trunk_paths(base_params):
    raise ValueError("LoRA found no decoder trunk (a dict with \"layers\" "
                     "-> \"attn\"/\"mlp\") in the params tree")

  def walk(node, path: Path):
    if is_trunk(node):
      return _init_trunk(node, cfg, _trunk_rng(rng, path), dtype)
    if isinstance(node, Mapping):
      return {k: walk(v, path + (k,)) for k, v in node.items()}
    return node

  return walk(base_params, ())


def delta(name: str, shape: tuple[int, ...], ab: dict, cfg: LoraConfig
          ) -> jax.Array:
  """(alpha/r) * A @ B reshaped to the base weight's shape, in f32."""
  d = jnp.einsum("yir,yro->yio", ab["a"].astype(jnp.float32),
                 ab["b"].astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return (cfg.scale * d).reshape(shape)


def _apply_trunk(base: Mapping, lora: Mapping, cfg: LoraConfig,
                 sign: float) -> dict:
  out = jax.tree.map(lambda x: x, base)  # shallow structural copy
  for group, projs in lora["layers"].items():
    for name, ab in projs.items():
      w = base["layers"][group][name]
      out["layers"][group][name] = (
          w.astype(jnp.float32) + sign * delta(name, w.shape, ab, cfg)
      ).astype(w.dtype)
  return out


def _apply(base: Any, trainable: Any, cfg: LoraConfig, sign: float) -> Any:
  if is_trunk(base):
    return _apply_trunk(base, trainable, cfg, sign)
  if isinstance(base, Mapping):
    return {k: _apply(v, trainable[k], cfg, sign) for k, v in base.items()}
  return trainable  # a leaf outside the trunks: trained in full


def merge(base_params: Any, trainable: Any, cfg: LoraConfig) -> Any:
  """The full params tree: every trunk's W + s * A @ B, and the trained
  values of the leaves outside the trunks."""
  return _apply(base_params, trainable, cfg, 1.0)


def unmerge(merged_params: Any, trainable: Any, cfg: LoraConfig) -> Any:
  """Inverse of `merge` on the trunks (W' - s * A @ B, exact up to float
  rounding); leaves outside the trunks keep the trainable tree's values
  (they have no base apart from the initial one)."""
  return _apply(merged_params, trainable, cfg, -1.0)


def lora_loss_fn(base_loss_fn: Callable, cfg: LoraConfig) -> Callable:
  """Turns `loss_fn(params, batch, rng)` into one over {"trainable": ...,
  "frozen": base}: gradients reach only the trainable tree."""

  def loss_fn(params, batch, rng):
    base = jax.lax.stop_gradient(params["frozen"])
    return base_loss_fn(merge(base, params["trainable"], cfg), batch, rng)

  return loss_fn


def full_params(state: Mapping, cfg: LoraConfig | None) -> Any:
  """The model params a train state stands for: state["params"], or with
  LoRA (cfg given) the frozen base merged with the trainable tree."""
  if cfg is None:
    return state["params"]
  return merge(state["frozen"], state["params"], cfg)


def num_params(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def optimizer_state_bytes(opt_state: Any) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(opt_state))
