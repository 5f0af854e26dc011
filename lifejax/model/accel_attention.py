"""Accelerator attention: Pallas splash (TPU), cuDNN flash (GPU), XLA SDPA.

All three compute the model's attention (causal, within equal segment ids,
grouped-query) on the model's layout: q (B,T,K,G,E) already multiplied by
E**-0.5 (so every kernel runs with softmax scale 1), k, v (B,T,K,E), segment
ids (B,T); they return (B,T,K,G,E) f32, like the einsum and blocked paths
in transformer.py. Query head k * G + g uses kv head k in every kernel
(splash maps query head h to kv head h // (H / K); `jax.nn.
dot_product_attention` groups N query heads as (K, G)).

* `splash`: `jax.experimental.pallas.ops.tpu.splash_attention` (MHA kernel
  with K kv heads, a static causal mask and `SegmentIds`), vmapped over the
  batch. Off TPU it runs in Pallas interpret mode, which is how it is tested
  on CPU. Its blocks need T to be a multiple of 128 (`SPLASH_MIN_BLOCK`).
  Under an activation sharding with more than one device it runs inside a
  shard_map over the batch and kv-head mesh axes (a Mosaic kernel is not
  partitioned by GSPMD).
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` with
  `is_causal=True` and the same-segment mask (B,1,T,T) bool, which jax
  turns into an additive bias for cuDNN. GPU (CUDA) only, bf16/f16 only.
* `xla_sdpa`: the same call with `implementation="xla"`: runs everywhere;
  the reference formulation of jax itself.

`choose_attention` is the per-backend decision "auto" makes; it is pure
(backend name in, impl name out) so it is unit-tested without the hardware.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lifejax import sharding

F32 = jnp.float32
ACCEL_IMPLS = ("splash", "cudnn", "xla_sdpa")
# Splash block sizes tried in order (the largest dividing T); its kv compute
# block must be a multiple of the TPU lane count, 128.
SPLASH_BLOCKS = (512, 256, 128)
SPLASH_MIN_BLOCK = 128
# cuDNN flash attention: bf16/f16 inputs, head_dim a multiple of 8 and at
# most 128 (256 on Hopper and later; 128 is the limit every GPU takes).
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128

_logged: set[str] = set()


def _log_once(msg: str) -> None:
  if msg not in _logged:
    _logged.add(msg)
    logging.info(msg)


def backend_name() -> str:
  """jax.default_backend(), with ROCm GPUs told apart from CUDA ("rocm")."""
  backend = jax.default_backend()
  if backend == "gpu":
    version = getattr(jax.devices()[0].client, "platform_version", "")
    if "rocm" in str(version).lower():
      return "rocm"
  return backend


def cudnn_unsupported(compute_dtype: str, head_dim: int) -> str | None:
  """Why cuDNN flash attention cannot take these inputs, or None."""
  if compute_dtype not in CUDNN_DTYPES:
    return (f"compute_dtype={compute_dtype!r} (cuDNN attention takes "
            f"{CUDNN_DTYPES})")
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return (f"head_dim={head_dim} (cuDNN attention needs a multiple of 8, "
            f"at most {CUDNN_MAX_HEAD_DIM})")
  return None


def choose_attention(attention_impl: str, backend: str, compute_dtype: str,
                     head_dim: int) -> str:
  """The attention formulation for `attention_impl` on `backend`.

  "auto": cpu -> "blocked" (the CPU kernel); gpu (CUDA) -> "cudnn" when
  `cudnn_unsupported` finds nothing, else "einsum" (logged once); tpu ->
  "splash"; any other backend (rocm, ...) -> "einsum". Explicit impls are
  returned as they are ("ring" / "allgather_kv" resolve to "einsum" here:
  `ring_attention.model_attention` runs or refuses them first), except
  that "cudnn" off a CUDA GPU, or with inputs cuDNN cannot take, raises a
  ValueError naming `attention_impl`. The sequence length is checked at
  call time (`fit_length`).
  """
  if attention_impl == "auto":
    if backend == "cpu":
      return "blocked"
    if backend in ("gpu", "cuda"):
      why = cudnn_unsupported(compute_dtype, head_dim)
      if why is None:
        return "cudnn"
      _log_once(f"attention_impl='auto' on GPU: not cuDNN because of {why}; "
                "using the XLA einsum formulation")
      return "einsum"
    if backend == "tpu":
      return "splash"
    return "einsum"
  if attention_impl == "cudnn":
    if backend not in ("gpu", "cuda"):
      raise ValueError(
          f"attention_impl='cudnn' needs a CUDA GPU backend; this one is "
          f"{backend!r} (use 'auto', 'xla_sdpa' or 'einsum')")
    why = cudnn_unsupported(compute_dtype, head_dim)
    if why is not None:
      raise ValueError(f"attention_impl='cudnn' cannot run {why}")
    return "cudnn"
  if attention_impl in ("ring", "allgather_kv"):
    return "einsum"
  return attention_impl


def fit_length(impl: str, attention_impl: str, length: int) -> str:
  """`impl` if it can run sequences of `length` tokens.

  Splash needs a multiple of `SPLASH_MIN_BLOCK`: under "auto" another length
  falls back to "einsum" (logged once); an explicit "splash" raises.
  """
  if impl != "splash" or length % SPLASH_MIN_BLOCK == 0:
    return impl
  if attention_impl == "splash":
    raise ValueError(
        f"attention_impl='splash' needs the sequence length to be a multiple "
        f"of {SPLASH_MIN_BLOCK} (its block size); got {length}")
  _log_once(f"attention_impl='auto': length {length} is not a multiple of "
            f"{SPLASH_MIN_BLOCK}, so splash attention does not apply; using "
            "the XLA einsum formulation")
  return "einsum"


# -- splash --------------------------------------------------------------------


def splash_block(length: int) -> int:
  """The largest of SPLASH_BLOCKS dividing `length` (ValueError if none)."""
  for blk in SPLASH_BLOCKS:
    if length % blk == 0:
      return blk
  raise ValueError(
      f"attention_impl='splash' needs the sequence length to be a multiple "
      f"of {SPLASH_MIN_BLOCK} (its block size); got {length}")


@functools.lru_cache(maxsize=None)
def _splash_kernel(num_heads: int, length: int, interpret: bool):
  """A causal splash MHA kernel for (H, T, E) q and (K, T, E) k, v."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  blk = splash_block(length)
  mask = splash.MultiHeadMask(
      [splash.CausalMask((length, length)) for _ in range(num_heads)])
  sizes = splash.BlockSizes(
      block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
      block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
      block_kv_dq=blk)
  # The mask info arrays are constants: made concrete even when the first
  # call is traced, so the cached kernel holds no tracer.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)


def _splash_local(q_BxTxKxGxE: jax.Array, k_BxTxKxE: jax.Array,
                  v_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
                  dtype: jnp.dtype, interpret: bool) -> jax.Array:
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  b, t, kh, g, e = q_BxTxKxGxE.shape
  kernel = _splash_kernel(kh * g, t, interpret)
  q = q_BxTxKxGxE.astype(dtype).reshape(b, t, kh * g, e).transpose(0, 2, 1, 3)
  k = k_BxTxKxE.astype(dtype).transpose(0, 2, 1, 3)
  v = v_BxTxKxE.astype(dtype).transpose(0, 2, 1, 3)
  seg = segment_ids_BxT.astype(jnp.int32)

  def one(q_HxTxE, k_KxTxE, v_KxTxE, seg_T):
    return kernel(q_HxTxE, k_KxTxE, v_KxTxE,
                  splash.SegmentIds(q=seg_T, kv=seg_T))

  out = jax.vmap(one)(q, k, v, seg)  # (B, H, T, E)
  return out.transpose(0, 2, 1, 3).reshape(b, t, kh, g, e).astype(F32)


def splash_attention(q_BxTxKxGxE: jax.Array, k_BxTxKxE: jax.Array,
                     v_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
                     dtype: jnp.dtype = F32,
                     interpret: bool | None = None) -> jax.Array:
  """Splash attention on the model layout (see the module docstring).

  Inputs are cast to `dtype` (the compute dtype); the kernel accumulates
  in f32. `interpret` None = interpret mode unless the backend is TPU.
  """
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  splash_block(q_BxTxKxGxE.shape[1])  # named error before any kernel code
  local = functools.partial(_splash_local, dtype=jnp.dtype(dtype),
                            interpret=interpret)
  active = sharding.active_activation_sharding()
  if active is None or active[0].size == 1:
    return local(q_BxTxKxGxE, k_BxTxKxE, v_BxTxKxE, segment_ids_BxT)
  mesh, rules = active
  b_axes, _, k_axes, _ = sharding.logical_to_spec(
      ("batch", None, "kv_heads", None), k_BxTxKxE.shape, mesh, rules)
  q_spec = P(b_axes, None, k_axes, None, None)
  kv_spec = P(b_axes, None, k_axes, None)
  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(q_spec, kv_spec, kv_spec, P(b_axes, None)),
                     out_specs=q_spec, check_vma=False)
  return fn(q_BxTxKxGxE, k_BxTxKxE, v_BxTxKxE, segment_ids_BxT)


# -- jax.nn.dot_product_attention (cuDNN / XLA) -------------------------------


def sdpa_attention(q_BxTxKxGxE: jax.Array, k_BxTxKxE: jax.Array,
                   v_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
                   dtype: jnp.dtype = F32,
                   implementation: str = "xla") -> jax.Array:
  """`jax.nn.dot_product_attention` on the model layout, scale 1, causal,
  masked to equal segment ids; `implementation` "xla" or "cudnn"."""
  b, t, kh, g, e = q_BxTxKxGxE.shape
  q = q_BxTxKxGxE.astype(dtype).reshape(b, t, kh * g, e)
  same_BxTxS = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  out = jax.nn.dot_product_attention(
      q, k_BxTxKxE.astype(dtype), v_BxTxKxE.astype(dtype),
      mask=same_BxTxS[:, None], scale=1.0, is_causal=True,
      implementation=implementation)
  return out.reshape(b, t, kh, g, e).astype(F32)


def attention_fn(impl: str, dtype: jnp.dtype):
  """The (q, k, v, segment_ids) -> out function of an accelerator impl."""
  if impl == "splash":
    return functools.partial(splash_attention, dtype=dtype)
  if impl == "cudnn":
    return functools.partial(sdpa_attention, dtype=dtype,
                             implementation="cudnn")
  if impl == "xla_sdpa":
    return functools.partial(sdpa_attention, dtype=dtype,
                             implementation="xla")
  raise ValueError(f"attention impl {impl!r}: expected one of {ACCEL_IMPLS}")

