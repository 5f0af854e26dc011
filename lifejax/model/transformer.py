"""A Llama-style decoder LM in Flax NNX.

RMSNorm, rotary embeddings (the rotate-half layout used by HuggingFace Llama),
SwiGLU MLP, grouped-query attention, optional tied embeddings, causal
attention restricted to equal `segment_ids` (packed documents never attend to
each other), layers stacked with `nnx.vmap` and run with `jax.lax.scan` (or
unrolled, `layer_loop`) under a named remat policy. Shape letters: see
`lifejax/__init__.py`.

Config options add what the imported HF families need (`hf_format.py`): q/k/v
biases (Qwen2), per-head q/k RMSNorm (Qwen3), norm gains stored as offsets
from 1, sqrt(D)-scaled embeddings and a GeGLU MLP (Gemma). Their defaults
compute exactly the Llama function above.

Implementation choices (`TransformerConfig.attention_impl`, `matmul_impl`,
`fuse_projections`, `weight_grad`, `layer_loop`) never change the function
computed; "auto" resolves them per backend in `kernels`. On CPU they select
custom-VJP kernels written around what XLA:CPU runs fast (`cpu_kernels.py`);
on GPU and TPU attention goes to fused kernels (cuDNN, Pallas splash:
`accel_attention.py`).

Every parameter carries logical axis names (`nnx.with_partitioning`); the
mapping to mesh axes lives in `lifejax/sharding.py`. Models are built with
flax's eager sharding off, so the names are metadata only until the training
code derives shardings from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lifejax import sharding
from lifejax.model import accel_attention, moe, pipeline
from lifejax.model.config import (ACTIVATIONS, REMAT_POLICIES,
                                  TransformerConfig, to_dtype)
from lifejax.model.cpu_kernels import (blocked_attention_fn, cpu_matmul_fn,
                                       matmul)
from lifejax.model.ring_attention import model_attention

F32 = jnp.float32


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...],
           std: float, dtype: jnp.dtype) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.normal(std), names)
  return nnx.Param(init(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
  """y = x / rms(x) * (offset + scale), computed in f32.

  The scale starts at 1 - offset, so every norm starts as the identity
  gain; offset 1 is Gemma's parameterization (stored scale 0 = gain 1).
  """

  def __init__(self, dim: int, eps: float, param_dtype: jnp.dtype,
               offset: float = 0.0):
    init = nnx.with_partitioning(
        nnx.initializers.constant(1.0 - offset), ("norm",))
    self.scale = nnx.Param(init(jax.random.key(0), (dim,), param_dtype))
    self.eps = eps
    self.offset = offset

  def __call__(self, x: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    x32 = x.astype(F32)
    ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    scale = self.scale[...].astype(F32).reshape((1,) * (x.ndim - 1) + (-1,))
    if self.offset:
      scale = self.offset + scale
    y = x32 * jax.lax.rsqrt(ms + self.eps) * scale
    return y.astype(out_dtype)


def _zeros(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...],
           dtype: jnp.dtype) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.zeros, names)
  return nnx.Param(init(rngs.params(), shape, dtype))


def embedding_scale(cfg: TransformerConfig) -> jax.Array | None:
  """sqrt(d_model) rounded to the param dtype (as HF Gemma rounds it), or
  None without `scale_embeddings`."""
  if not cfg.scale_embeddings:
    return None
  return jnp.asarray(math.sqrt(cfg.d_model), to_dtype(cfg.param_dtype))


def rope_inv_freq(cfg: TransformerConfig) -> jax.Array:
  """Inverse frequencies (E/2,), with Llama-3 frequency scaling if configured."""
  e = cfg.resolved_head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, e, 2, dtype=F32) / e))
  scaling = cfg.rope_scaling_dict
  if not scaling:
    return inv
  factor = scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_ctx = scaling["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv
  low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
  scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_ctx / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x_BxTxNxE: jax.Array, positions_BxT: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
  """Rotate pairs (i, i + E/2) by angle position * inv_freq[i], in f32."""
  angles = positions_BxT.astype(F32)[:, :, None] * inv_freq[None, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x = x_BxTxNxE.astype(F32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """(B, 1, 1, T, S) bool: causal and within the same segment."""
  t = segment_ids_BxT.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return (causal[None] & same)[:, None, None, :, :]


def einsum_attention(q_BxTxKxGxE: jax.Array, k_BxTxKxE: jax.Array,
                     v_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
                     dtype: jnp.dtype) -> jax.Array:
  """The plain XLA formulation ("einsum"): q (B,T,K,G,E) pre-scaled, k, v
  (B,T,K,E); the (T, S) scores of every pair, masked (`attention_mask`),
  softmax in f32; dots take `dtype` inputs and accumulate in f32. Returns
  (B,T,K,G,E) f32."""
  scores = jnp.einsum("btkge,bske->bkgts", q_BxTxKxGxE.astype(dtype),
                      k_BxTxKxE.astype(dtype), preferred_element_type=F32)
  scores = jnp.where(attention_mask(segment_ids_BxT), scores,
                     jnp.finfo(F32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bske->btkge", probs, v_BxTxKxE.astype(dtype),
                    preferred_element_type=F32)


def smear_keys(k_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
               logit_K: jax.Array) -> jax.Array:
  """sigmoid(a) * k_t + (1 - sigmoid(a)) * k_{t-1} per kv head, in f32; the
  previous key counts only within the same segment (zero otherwise)."""
  own = jax.nn.sigmoid(logit_K.astype(F32))[None, None, :, None]
  prev = jnp.pad(k_BxTxKxE, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
  same = jnp.pad(segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1],
                 ((0, 0), (1, 0)))[:, :, None, None]
  return own * k_BxTxKxE + (1.0 - own) * jnp.where(same, prev, 0.0)


@dataclasses.dataclass(frozen=True)
class Kernels:
  """Which implementation each piece uses (all compute the same function)."""

  attention: str  # "einsum", "blocked" or one of accel_attention.ACCEL_IMPLS
  cpu_matmul: bool
  weight_grad: str  # see `cpu_kernels.cpu_matmul_fn`
  fuse_projections: bool
  scan_layers: bool


def kernels(cfg: TransformerConfig, backend: str | None = None) -> Kernels:
  """Resolves the config's "auto" choices for `backend` (None = the
  default backend; a name here only picks, nothing runs on it)."""
  backend = backend or accel_attention.backend_name()
  cpu = backend == "cpu"
  pick = lambda v: cpu if v == "auto" else v in ("blocked", "cpu", "on")  # noqa: E731
  # Unrolling pays on CPU (no stacked residuals); with remat, the scan keeps
  # one rematerialized layer body, as the policy intends.
  scan = cfg.layer_loop == "scan" or (cfg.layer_loop == "auto" and not (
      cpu and cfg.remat_policy == "none"))
  # Transposed residuals need a real layer loop: no remat (a rematerialized
  # residual is recomputed next to its dot and the transpose folds away)
  # and >= 2 steps (XLA inlines a 1-step loop after it has checked the bf16
  # dot, and XLA:CPU cannot run the folded one).
  residual = scan and cfg.num_layers >= 2 and cfg.remat_policy == "none"
  weight_grad = cfg.weight_grad
  if weight_grad == "auto":
    # f32: XLA:CPU's own transposing f32 dot measured as fast as the loop.
    weight_grad = ("tn" if to_dtype(cfg.compute_dtype) == jnp.float32
                   else "residual" if residual else "loop")
  elif weight_grad == "residual" and not residual:
    weight_grad = "loop"
  return Kernels(
      attention=accel_attention.choose_attention(
          cfg.attention_impl, backend, cfg.compute_dtype,
          cfg.resolved_head_dim),
      cpu_matmul=pick(cfg.matmul_impl), weight_grad=weight_grad,
      fuse_projections=pick(cfg.fuse_projections), scan_layers=scan)


def _mm(x: jax.Array, w: jax.Array, dtype: jnp.dtype, kern: Kernels,
        weight_grad: str | None = None) -> jax.Array:
  if not kern.cpu_matmul:
    return matmul(x, w, dtype)
  mode = weight_grad or kern.weight_grad
  if mode == "loop" and min(x.shape[1], w.shape[1]) % 2:
    mode = "tn"
  return cpu_matmul_fn(jnp.dtype(x.dtype), jnp.dtype(w.dtype),
                        jnp.dtype(dtype), mode)(x, w)


class Attention(nnx.Module):
  """Grouped-query attention: H query heads share K key/value heads."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, h, k, e = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                  cfg.resolved_head_dim)
    pd = to_dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.wq = _param(rngs, (d, h, e), ("embed", "heads", "head_dim"),
                     cfg.init_std, pd)
    self.wk = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"),
                     cfg.init_std, pd)
    self.wv = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"),
                     cfg.init_std, pd)
    self.wo = _param(rngs, (h, e, d), ("heads", "head_dim", "embed"), out_std,
                     pd)
    if cfg.smear_keys:  # logits of the own-key share, 0 = an even mix
      init = nnx.with_partitioning(nnx.initializers.zeros, ("kv_heads",))
      self.smear = nnx.Param(init(rngs.params(), (k,), pd))
    if cfg.qkv_bias:
      self.bq = _zeros(rngs, (h, e), ("heads", "head_dim"), pd)
      self.bk = _zeros(rngs, (k, e), ("kv_heads", "head_dim"), pd)
      self.bv = _zeros(rngs, (k, e), ("kv_heads", "head_dim"), pd)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(e, cfg.rms_eps, pd, cfg.norm_offset)
      self.k_norm = RMSNorm(e, cfg.rms_eps, pd, cfg.norm_offset)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array, inv_freq: jax.Array,
               kern: Kernels) -> jax.Array:
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t, d = x_BxTxD.shape
    h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    g = h // k
    # Projections on the flattened (B*T, D) activations: XLA:CPU emits a much
    # faster backward for 2-D dots than for batched 3-D ones.
    x_NxD = x_BxTxD.reshape(b * t, d)
    wq, wk, wv = (w[...].reshape(d, -1) for w in (self.wq, self.wk, self.wv))
    if kern.fuse_projections:  # one wider dot instead of three narrow ones
      qkv = _mm(x_NxD, jnp.concatenate([wq, wk, wv], axis=1), cd, kern)
      q, kk, v = jnp.split(qkv, [h * e, (h + k) * e], axis=1)
    else:
      q, kk, v = (_mm(x_NxD, w, cd, kern) for w in (wq, wk, wv))
    if cfg.qkv_bias:
      q, kk, v = (y + bias[...].reshape(1, -1).astype(F32) for y, bias in
                  ((q, self.bq), (kk, self.bk), (v, self.bv)))
    q, kk = q.reshape(b, t, h, e), kk.reshape(b, t, k, e)
    if cfg.qk_norm:
      q, kk = self.q_norm(q, F32), self.k_norm(kk, F32)
    q = apply_rope(q, positions_BxT, inv_freq) * (e ** -0.5)
    kk = apply_rope(kk, positions_BxT, inv_freq)
    if cfg.smear_keys:
      kk = smear_keys(kk, segment_ids_BxT, self.smear[...])
    v = v.reshape(b, t, k, e)
    q_BxTxKxGxE = q.reshape(b, t, k, g, e)
    # A mesh `context` axis splits the sequence: ring attention (see there).
    context_parallel = model_attention(cfg.attention_impl, cd, t)
    impl = (None if context_parallel is not None else
            accel_attention.fit_length(kern.attention, cfg.attention_impl, t))
    if context_parallel is not None:
      out = context_parallel(q_BxTxKxGxE, kk, v, segment_ids_BxT)
    elif impl in accel_attention.ACCEL_IMPLS:
      out = accel_attention.attention_fn(impl, jnp.dtype(cd))(
          q_BxTxKxGxE, kk, v, segment_ids_BxT)
    elif impl == "blocked":
      out = blocked_attention_fn(jnp.dtype(cd), cfg.attention_block)(
          q_BxTxKxGxE, kk, v, segment_ids_BxT)
    else:
      out = einsum_attention(q_BxTxKxGxE, kk, v, segment_ids_BxT, cd)
    out_NxD = _mm(out.reshape(b * t, h * e), self.wo[...].reshape(h * e, d),
                  cd, kern)
    return out_NxD.reshape(b, t, d)


class MLP(nnx.Module):
  """SwiGLU: down(silu(x @ gate) * (x @ up))."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.mlp_dim
    pd = to_dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), cfg.init_std, pd)
    self.w_up = _param(rngs, (d, f), ("embed", "mlp"), cfg.init_std, pd)
    self.w_down = _param(rngs, (f, d), ("mlp", "embed"), out_std, pd)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, kern: Kernels) -> jax.Array:
    cd = to_dtype(self.cfg.compute_dtype)
    b, t, d = x_BxTxD.shape
    f = self.cfg.mlp_dim
    x_NxD = x_BxTxD.reshape(b * t, d)
    if kern.fuse_projections:
      w_Dx2F = jnp.concatenate([self.w_gate[...], self.w_up[...]], axis=1)
      gate_NxF, up_NxF = jnp.split(_mm(x_NxD, w_Dx2F, cd, kern), [f], axis=1)
    else:
      gate_NxF = _mm(x_NxD, self.w_gate[...], cd, kern)
      up_NxF = _mm(x_NxD, self.w_up[...], cd, kern)
    act = ACTIVATIONS[self.cfg.mlp_activation]
    h_NxF = (act(gate_NxF) * up_NxF).astype(cd)
    h_NxF = sharding.constrain(h_NxF, ("activation_tokens", "mlp"))
    return _mm(h_NxF, self.w_down[...], cd, kern).reshape(b, t, d)


class Block(nnx.Module):
  """Pre-norm transformer block; its MLP is a mixture of experts
  (`moe.MoE`) when `num_experts` > 0."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pd = to_dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd, cfg.norm_offset)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd, cfg.norm_offset)
    self.mlp = moe.MoE(cfg, rngs) if cfg.num_experts else MLP(cfg, rngs)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array, inv_freq: jax.Array,
               kern: Kernels) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(x (B, T, D), aux): aux holds the MoE's per-layer values
    (`moe.AUX_KEYS`), empty for a dense MLP."""
    cd = to_dtype(self.cfg.compute_dtype)
    attn_out = self.attn(self.attn_norm(x_BxTxD, cd), positions_BxT,
                         segment_ids_BxT, inv_freq, kern)
    x = x_BxTxD + checkpoint_name(attn_out, "attn_out").astype(x_BxTxD.dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    if self.cfg.num_experts:
      mlp_out, aux = self.mlp(self.mlp_norm(x, cd))
    else:
      mlp_out, aux = self.mlp(self.mlp_norm(x, cd), kern), {}
    x = x + checkpoint_name(mlp_out, "mlp_out").astype(x.dtype)
    return sharding.constrain(x, ("batch", "length", "embed")), aux


class Transformer(nnx.Module):
  """Decoder-only LM: tokens (B, T) -> logits (B, T, V)."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pd = to_dtype(cfg.param_dtype)
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                        cfg.init_std, pd)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(r: nnx.Rngs) -> Block:
      return Block(cfg, r)

    self.layers = make_layers(rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd, cfg.norm_offset)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size),
                            ("embed", "vocab"), cfg.init_std, pd)

  def hidden(self, tokens_BxT: jax.Array,
             positions_BxT: jax.Array | None = None,
             segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    """Final normed hidden states (B, T, D) in the compute dtype."""
    return self.hidden_and_aux(tokens_BxT, positions_BxT, segment_ids_BxT)[0]

  def hidden_and_aux(self, tokens_BxT: jax.Array,
                     positions_BxT: jax.Array | None = None,
                     segment_ids_BxT: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(`hidden`, aux): aux maps each of `moe.AUX_KEYS` to its mean over
    layers (f32 scalars) for a mixture of experts, and is empty for a
    dense model."""
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t = tokens_BxT.shape
    cfg.check_length(t)
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones((b, t), dtype=jnp.int32)
    inv_freq = rope_inv_freq(cfg)
    kern = kernels(cfg)
    # Gather from an all-gathered table: a gather from a sharded table
    # makes the SPMD partitioner fully rematerialize the activations.
    table_VxD = sharding.constrain(self.embed[...], (None, None))
    x = jnp.take(table_VxD, tokens_BxT, axis=0)
    scale = embedding_scale(cfg)
    if scale is not None:  # in the param dtype, as HF Gemma multiplies
      x = x * scale
    x = x.astype(cd)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    active = sharding.active_activation_sharding()
    if pipeline.num_stages(active[0] if active else None) > 1:
      if cfg.num_experts:
        raise ValueError(
            f"TransformerConfig.num_experts={cfg.num_experts} under a mesh "
            "with a stage axis: pipeline stages do not carry a mixture of "
            "experts' auxiliary losses yet; use a dense model or "
            "MeshConfig.stage=1")
      if cfg.pipeline_schedule != "gpipe":
        raise ValueError(
            f"TransformerConfig.pipeline_schedule={cfg.pipeline_schedule!r} "
            "computes the loss and its gradients in one schedule: call "
            "Transformer.pipelined_loss (make_lm_loss_fn does), not the "
            "model's forward; or use pipeline_schedule='gpipe'")
      x, _ = self._gpipe_layers(x, positions_BxT, segment_ids_BxT,
                                inv_freq, kern, active[0])
      return self.final_norm(x, cd), {}  # dense only (_pipeline_inputs)

    graphdef, layer_state = nnx.split(self.layers)

    def body(x_BxTxD, one_layer_state):
      block = nnx.merge(graphdef, one_layer_state)
      return block(x_BxTxD, positions_BxT, segment_ids_BxT, inv_freq, kern)

    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    if kern.scan_layers:
      x, aux_Y = jax.lax.scan(body, x, layer_state)
    else:  # unrolled: no stacked residuals to write and re-read
      per_layer = []
      for i in range(cfg.num_layers):
        x, aux = body(x, jax.tree.map(lambda a, i=i: a[i], layer_state))
        per_layer.append(aux)
      aux_Y = jax.tree.map(lambda *a: jnp.stack(a), *per_layer)
    aux = {name: jnp.mean(v) for name, v in aux_Y.items()}
    return self.final_norm(x, cd), aux

  # -- pipeline parallelism (lifejax/model/pipeline.py) -----------------------

  def _stage_fn(self, inv_freq: jax.Array, kern: Kernels) -> pipeline.StageFn:
    """One pipeline stage: the model's layer loop over the L/p layers a
    stage holds, for one microbatch (extras = (positions, segment ids))."""
    cfg = self.cfg
    graphdef = nnx.graphdef(self.layers)

    def layer(x_BxTxD, one_layer_state, positions_BxT, segment_ids_BxT):
      block = nnx.merge(graphdef, one_layer_state)
      # a dense block's aux is empty (MoE is refused in a pipeline)
      return block(x_BxTxD, positions_BxT, segment_ids_BxT, inv_freq,
                   kern)[0]

    if cfg.remat_policy != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat_policy],
                             prevent_cse=False)

    def stage_fn(stage_state, x_BxTxD, extras):
      positions_BxT, segment_ids_BxT = extras[0], extras[1]
      # Inside the stage's shard_map the activation constraints (whole-mesh
      # shardings) do not apply; GSPMD propagates from the inputs there.
      with sharding.activation_sharding_off():
        if kern.scan_layers:
          x_BxTxD, _ = jax.lax.scan(
              lambda x, ls: (layer(x, ls, positions_BxT, segment_ids_BxT),
                             None), x_BxTxD, stage_state)
        else:
          n = jax.tree.leaves(stage_state)[0].shape[0]
          for i in range(n):
            x_BxTxD = layer(x_BxTxD,
                            jax.tree.map(lambda a, i=i: a[i], stage_state),
                            positions_BxT, segment_ids_BxT)
      return x_BxTxD

    return stage_fn

  def _pipeline_inputs(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
                       segment_ids_BxT: jax.Array, mesh) -> tuple:
    cfg = self.cfg
    p, m = pipeline.num_stages(mesh), cfg.pipeline_microbatches
    if cfg.num_experts:
      raise ValueError(
          f"TransformerConfig.num_experts={cfg.num_experts} with "
          f"MeshConfig.stage={p}: pipeline stages do not carry a mixture "
          "of experts' auxiliary losses yet; use a dense model or "
          "MeshConfig.stage=1")
    pipeline.check_pipeline(cfg.num_layers, x_BxTxD.shape[0], p, m,
                            cfg.pipeline_schedule, mesh.shape.get("model", 1))
    micro = lambda a: pipeline.to_microbatches(a, m)  # noqa: E731
    return micro(x_BxTxD), (micro(positions_BxT), micro(segment_ids_BxT))

  def _gpipe_layers(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
                    segment_ids_BxT: jax.Array, inv_freq: jax.Array,
                    kern: Kernels, mesh) -> tuple[jax.Array, jax.Array]:
    """The layer stack as a GPipe pipeline over the mesh's stage axis:
    (output (B, T, D), the executed schedule's ids (p, m + p - 1))."""
    x_M, extras_M = self._pipeline_inputs(x_BxTxD, positions_BxT,
                                          segment_ids_BxT, mesh)
    y_M, ids = pipeline.gpipe(self._stage_fn(inv_freq, kern),
                              nnx.state(self.layers), x_M, extras_M, mesh)
    return pipeline.from_microbatches(y_M), ids

  def _head_fn(self, head_loss: Callable[..., tuple[jax.Array, dict]]
               ) -> pipeline.HeadFn:
    """The last stage's head: final norm, LM head, then `head_loss`."""
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    kern = kernels(cfg)
    norm_graphdef = nnx.graphdef(self.final_norm)

    def head_fn(hp, y_BxTxD, extras):
      # extras = (positions, segment ids, head_extras): the head's are last
      with sharding.activation_sharding_off():
        h = nnx.merge(norm_graphdef, hp["norm"])(y_BxTxD, cd)
        b, t, d = h.shape
        head = hp["head"].T if cfg.tie_embeddings else hp["head"]
        logits = _mm(h.reshape(b * t, d), head, cd, kern,
                     "tn" if kern.weight_grad == "tn" else "loop")
        logits = logits.reshape(b, t, cfg.vocab_size).astype(
            to_dtype(cfg.output_dtype))
        return head_loss(logits, extras[2])

    return head_fn

  def pipelined_loss(
      self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None,
      segment_ids_BxT: jax.Array | None,
      head_loss: Callable[[jax.Array, Any], tuple[jax.Array, dict]],
      head_extras: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A loss summed over rows, computed the way the mesh and
    `pipeline_schedule` ask: under a `stage` mesh with the "1f1b" schedule
    by `pipeline.one_f_one_b_loss` (loss and gradients in one interleaved
    schedule), otherwise from the model's logits.

    head_loss(logits (b, T, V), extras) -> (loss, aux): a *sum* over the
    rows it is given (so microbatch sums add up to the batch's) and a dict
    of scalar sums; head_extras: a pytree of (B, ...) arrays it needs
    (targets, loss masks), cut into the same microbatches as the tokens.
    """
    active = sharding.active_activation_sharding()
    mesh = active[0] if active else None
    if (pipeline.num_stages(mesh) == 1
        or self.cfg.pipeline_schedule == "gpipe"):
      return head_loss(self(tokens_BxT, positions_BxT, segment_ids_BxT),
                       head_extras)
    cfg = self.cfg
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones((b, t), dtype=jnp.int32)
    # The embedding, as `hidden` computes it (outside the pipeline).
    cfg.check_length(t)
    table_VxD = sharding.constrain(self.embed[...], (None, None))
    x = jnp.take(table_VxD, tokens_BxT, axis=0)
    scale = embedding_scale(cfg)
    if scale is not None:
      x = x * scale
    x = sharding.constrain(x.astype(to_dtype(cfg.compute_dtype)),
                           ("batch", "length", "embed"))
    kern = kernels(cfg)
    x_M, extras_M = self._pipeline_inputs(x, positions_BxT, segment_ids_BxT,
                                          mesh)
    extras_M = list(extras_M) + [jax.tree.map(
        lambda a: pipeline.to_microbatches(a, cfg.pipeline_microbatches),
        head_extras)]
    hp = {"norm": nnx.state(self.final_norm),
          "head": self.embed[...] if cfg.tie_embeddings else self.lm_head[...]}
    f = pipeline.one_f_one_b_loss(self._stage_fn(rope_inv_freq(cfg), kern),
                                  self._head_fn(head_loss), mesh)
    return f(nnx.state(self.layers), hp, x_M, extras_M)

  def logits_from_hidden(self, h_BxTxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t, d = h_BxTxD.shape
    head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
    kern = kernels(cfg)
    # The head runs outside any layer loop, so it cannot use "residual".
    logits = _mm(h_BxTxD.reshape(b * t, d), head, cd, kern,
                 "tn" if kern.weight_grad == "tn" else "loop")
    logits = logits.reshape(b, t, cfg.vocab_size).astype(
        to_dtype(cfg.output_dtype))
    return sharding.constrain(logits, ("batch", "length", "vocab"))

  def __call__(self, tokens_BxT: jax.Array,
               positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    return self.logits_from_hidden(
        self.hidden(tokens_BxT, positions_BxT, segment_ids_BxT))

  def logits_and_aux(self, tokens_BxT: jax.Array,
                     positions_BxT: jax.Array | None = None,
                     segment_ids_BxT: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(logits (B, T, V), aux) with aux as in `hidden_and_aux`: what a loss
    that adds the MoE's auxiliary losses calls."""
    h, aux = self.hidden_and_aux(tokens_BxT, positions_BxT, segment_ids_BxT)
    return self.logits_from_hidden(h), aux


def create_model(cfg: TransformerConfig, seed: int = 0) -> Transformer:
  """Builds a model with concrete params (no mesh placement)."""
  with nnx.use_eager_sharding(False):
    return Transformer(cfg, nnx.Rngs(params=seed))


def abstract_model(cfg: TransformerConfig) -> Transformer:
  """Builds the model with ShapeDtypeStructs only (for planning/sharding)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0)))
