"""Scalar heads on the decoder backbone: reward models and value models.

A `RewardModel` / `ValueModel` is the `Transformer` backbone (embedding,
layers, final norm; no LM head) followed by a D -> 1 linear head, and returns
one f32 scalar per position, (B, T). A `PolicyValueModel` keeps the LM head
and adds a value head on the same hidden states (PPO with a shared trunk).

Conventions with the LM batch layout (`tokens` = doc[:-1], `targets` =
doc[1:], `loss_mask` on response targets): the scalar at position t is
computed from tokens[:t + 1]. The sequence reward is read at the last
position whose mask is 1 (`last_token_values`), i.e. the hidden state that
predicts the final response token; a value at t estimates the return of
generating targets[t:]. The final target itself is never an input, so the
reward model does not see it: responses should end with a closing token
(EOS / end of turn, as the renders in `lifejax.data` add); a response
truncated without one hides its last real token from the reward model.

Parameter trees (pure dicts): RewardModel/ValueModel {"backbone": <LM params
minus lm_head>, "head": {"kernel": (D, 1), "bias": (1,)}}; PolicyValueModel
{"lm": <LM params>, "value_head": {...}}. `scalar_params_from_lm` and
`policy_value_params_from_lm` start either from a trained LM.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.model.transformer import Transformer, matmul

F32 = jnp.float32


class ScalarHead(nnx.Module):
  """h (B, T, D) -> h @ kernel + bias, (B, T) f32.

  kernel (D, 1) has logical axes ("embed", None); bias (1,) is replicated.
  `init_std=0` initializes the kernel to zeros.
  """

  def __init__(self, d_model: int, rngs: nnx.Rngs, *, init_std: float,
               param_dtype: jnp.dtype = F32, compute_dtype: jnp.dtype = F32):
    kernel_init = (nnx.initializers.normal(init_std) if init_std > 0
                   else nnx.initializers.zeros)
    kernel_init = nnx.with_partitioning(kernel_init, ("embed", None))
    bias_init = nnx.with_partitioning(nnx.initializers.zeros, (None,))
    self.kernel = nnx.Param(kernel_init(rngs.params(), (d_model, 1),
                                        param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (1,), param_dtype))
    self.compute_dtype = compute_dtype

  def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
    b, t, d = h_BxTxD.shape
    out_Nx1 = matmul(h_BxTxD.reshape(b * t, d), self.kernel[...],
                     self.compute_dtype)
    bias_1x1 = self.bias[...].astype(F32).reshape(1, 1)
    return (out_Nx1 + bias_1x1).reshape(b, t)


class RewardHead(ScalarHead):
  """Reward head; the kernel starts at std 1/sqrt(D + 1) (Stiennon et al.,
  2020), so initial rewards have unit-ish scale on normed hidden states."""

  def __init__(self, d_model: int, rngs: nnx.Rngs, *,
               init_std: float | None = None, param_dtype: jnp.dtype = F32,
               compute_dtype: jnp.dtype = F32):
    std = 1.0 / math.sqrt(d_model + 1) if init_std is None else init_std
    super().__init__(d_model, rngs, init_std=std, param_dtype=param_dtype,
                     compute_dtype=compute_dtype)


class ValueHead(ScalarHead):
  """Value head; the kernel starts at zero so initial values are 0 and the
  first PPO updates are not driven by a random critic."""

  def __init__(self, d_model: int, rngs: nnx.Rngs, *, init_std: float = 0.0,
               param_dtype: jnp.dtype = F32, compute_dtype: jnp.dtype = F32):
    super().__init__(d_model, rngs, init_std=init_std,
                     param_dtype=param_dtype, compute_dtype=compute_dtype)


def _backbone_config(cfg: TransformerConfig) -> TransformerConfig:
  # `hidden()` never reads the output head; tying drops it, so the backbone's
  # params are exactly the LM's minus `lm_head` and no (D, V) matrix is
  # allocated for nothing.
  return dataclasses.replace(cfg, tie_embeddings=True)


def _head_kwargs(cfg: TransformerConfig) -> dict[str, Any]:
  return {"param_dtype": to_dtype(cfg.param_dtype),
          "compute_dtype": to_dtype(cfg.compute_dtype)}


class ScalarModel(nnx.Module):
  """Backbone + scalar head: tokens (B, T) -> per-position scalars (B, T)."""

  head_cls: type[ScalarHead] = ScalarHead

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.backbone = Transformer(_backbone_config(cfg), rngs)
    self.head = self.head_cls(cfg.d_model, rngs, **_head_kwargs(cfg))

  def __call__(self, tokens_BxT: jax.Array,
               positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    h_BxTxD = self.backbone.hidden(tokens_BxT, positions_BxT, segment_ids_BxT)
    return self.head(h_BxTxD)


class RewardModel(ScalarModel):
  """Backbone + RewardHead; `__call__` -> (B, T) f32 rewards per position."""

  head_cls = RewardHead


class ValueModel(ScalarModel):
  """Backbone + ValueHead; `__call__` -> (B, T) f32 values per position."""

  head_cls = ValueHead


class PolicyValueModel(nnx.Module):
  """LM with a value head on the same trunk (PPO with a shared backbone).

  `__call__` -> (logits (B, T, V) in the output dtype, values (B, T) f32).
  """

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.lm = Transformer(cfg, rngs)
    self.value_head = ValueHead(cfg.d_model, rngs, **_head_kwargs(cfg))

  def __call__(self, tokens_BxT: jax.Array,
               positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    h_BxTxD = self.lm.hidden(tokens_BxT, positions_BxT, segment_ids_BxT)
    return self.lm.logits_from_hidden(h_BxTxD), self.value_head(h_BxTxD)


def create(model_cls: type[nnx.Module], cfg: TransformerConfig,
           seed: int = 0) -> nnx.Module:
  """Builds `model_cls(cfg, rngs)` with concrete params (no mesh placement)."""
  with nnx.use_eager_sharding(False):
    return model_cls(cfg, nnx.Rngs(params=seed))


def abstract(model_cls: type[nnx.Module], cfg: TransformerConfig
             ) -> nnx.Module:
  """`model_cls(cfg, rngs)` with ShapeDtypeStructs only (planning/sharding)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: model_cls(cfg, nnx.Rngs(params=0)))


# -- reading sequence scalars --------------------------------------------------


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
  """(B,) int32 index of the last position with mask > 0 (T - 1 if none)."""
  t = mask_BxT.shape[1]
  from_end = jnp.argmax(mask_BxT[:, ::-1] > 0, axis=1)
  return (t - 1 - from_end).astype(jnp.int32)


def last_token_values(values_BxT: jax.Array, mask_BxT: jax.Array
                      ) -> jax.Array:
  """values at the last position where the mask is 1, (B,) f32.

  Rows with an all-zero mask (padding rows) give 0.
  """
  idx_B = last_token_index(mask_BxT)
  picked = jnp.take_along_axis(values_BxT.astype(F32), idx_B[:, None],
                               axis=1)[:, 0]
  return jnp.where(jnp.any(mask_BxT > 0, axis=1), picked, 0.0)


# -- starting from a trained LM (pure-dict surgery) ---------------------------


def backbone_params_from_lm(lm_params: dict[str, Any]) -> dict[str, Any]:
  """The LM's params minus `lm_head` (absent already if embeddings are tied)."""
  return {k: v for k, v in lm_params.items() if k != "lm_head"}


def _check_same_shapes(got: Any, want: Any, what: str) -> None:
  got_struct, want_struct = jax.tree.structure(got), jax.tree.structure(want)
  if got_struct != want_struct:
    raise ValueError(f"{what}: parameter tree does not match the model's:\n"
                     f" got  {got_struct}\n want {want_struct}")
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree.leaves(want)):
    if tuple(g.shape) != tuple(w.shape):
      raise ValueError(f"{what}: {jax.tree_util.keystr(path)} has shape "
                       f"{tuple(g.shape)}, the model expects {tuple(w.shape)}")


def scalar_params_from_lm(model_params: dict[str, Any],
                          lm_params: dict[str, Any]) -> dict[str, Any]:
  """RewardModel/ValueModel params with the backbone taken from an LM.

  `model_params` is the freshly initialized model's pure dict (its head is
  kept); `lm_params` the LM's (`lm_head` is dropped). Shapes must match.
  """
  backbone = backbone_params_from_lm(lm_params)
  _check_same_shapes(backbone, model_params["backbone"], "backbone from LM")
  return {**model_params, "backbone": backbone}


def policy_value_params_from_lm(model_params: dict[str, Any],
                                lm_params: dict[str, Any]) -> dict[str, Any]:
  """PolicyValueModel params whose LM is `lm_params` (value head kept)."""
  _check_same_shapes(lm_params, model_params["lm"], "policy from LM")
  return {**model_params, "lm": lm_params}
