"""Model configuration: shapes, precision policy and rematerialization policy."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# Named remat policies. `none` means no jax.checkpoint at all; every other name
# wraps each layer in jax.checkpoint with the given policy.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": (
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    # Keep only the named layer outputs (attention and MLP outputs): a middle
    # ground between `full` and `dots_saveable` in memory and recompute.
    "save_attn_mlp_out": jax.checkpoint_policies.save_only_these_names(
        "attn_out", "mlp_out"),
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}

# The gated MLP's activation by `TransformerConfig.mlp_activation`.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
}
MLP_ACTIVATIONS = tuple(ACTIVATIONS)

ATTENTION_IMPLS = ("auto", "einsum", "blocked", "ring", "allgather_kv",
                   "splash", "cudnn", "xla_sdpa")

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def to_dtype(name: str) -> jnp.dtype:
  if name not in _DTYPES:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """A Llama-style decoder, with the variants of the Qwen2, Qwen3, Mistral
  and Gemma architectures as options (see the fields below).

  Precision policy: parameters are stored in `param_dtype`; activations and
  matmul inputs are cast to `compute_dtype`; every matmul accumulates in f32
  (`preferred_element_type`), norms and softmax run in f32, and logits are
  returned in `output_dtype`.
  """

  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int | None = None
  mlp_dim: int = 256
  max_seq_len: int = 2048
  rope_theta: float = 10000.0
  # Llama-3 style frequency scaling: a dict with keys factor, low_freq_factor,
  # high_freq_factor, original_max_position_embeddings; None = plain RoPE.
  rope_scaling: Any = None
  rms_eps: float = 1e-5
  tie_embeddings: bool = False
  init_std: float = 0.02
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  output_dtype: str = "float32"
  remat_policy: str = "none"
  # Implementation choices. Every option computes the same function; "auto"
  # picks the fastest measured for the backend the step is traced on
  # (experiments/bench_train_step/README.md): the CPU kernels on CPU, the
  # plain XLA formulation (best for GPU/TPU compilers, and what the remat
  # policies' dot-saving rules see) elsewhere, except attention, which uses
  # the accelerator's fused kernel there (below; not yet measured on one).
  # attention_impl: "einsum" (scores for all (T, S) pairs, JAX autodiff) or
  #   "blocked" (static query blocks of `attention_block` rows that skip the
  #   causally masked keys, custom backward recomputing the probabilities);
  #   with a mesh `context` axis > 1, "auto" means "ring" (ring attention
  #   over the sequence shards) and "allgather_kv" gathers K/V instead
  #   (lifejax/model/ring_attention.py). Accelerator kernels
  #   (lifejax/model/accel_attention.py): "splash" (Pallas splash attention;
  #   TPU, interpret mode elsewhere; T a multiple of 128), "cudnn"
  #   (jax.nn.dot_product_attention's cuDNN flash path; CUDA GPU, bf16/f16)
  #   and "xla_sdpa" (the same call's XLA path, any backend). "auto" on GPU
  #   picks "cudnn" where cuDNN takes the dtype and head_dim (else
  #   "einsum"), on TPU "splash" (else "einsum" for other lengths).
  attention_impl: str = "auto"
  attention_block: int = 64
  # matmul_impl: "xla" (JAX autodiff of the dot) or "cpu" (custom backward:
  #   bf16 cotangents into bf16 dots, transposed residuals for the weight
  #   gradient; see transformer.py).
  matmul_impl: str = "auto"
  # fuse_projections: "on" runs q/k/v and gate/up as one wider dot each
  #   (weights concatenated per step; the parameters stay separate).
  fuse_projections: str = "auto"
  # weight_grad (matmul_impl="cpu" only): how the weight gradient gets x^T
  #   into memory: "residual", "loop", "tn" or "auto"; see transformer.py.
  weight_grad: str = "auto"
  # layer_loop: "scan" (compile time flat in depth) or "unroll" (no stacked
  #   residuals; on CPU the stacking costs more than the loop saves).
  layer_loop: str = "auto"
  # smear_keys: each key becomes a learned per-head mix of its own key and
  #   the previous token's (sigmoid(a) * k_t + (1 - sigmoid(a)) * k_{t-1},
  #   within a segment; Olsson et al., 2022, "smeared keys"). A previous-token
  #   path inside one attention layer, so induction (copy) heads need no
  #   second layer to compose with. Not a Llama architecture: no HF export.
  smear_keys: bool = False
  # Architecture variants of imported HF families (hf_format.py maps them);
  # the defaults are the Llama architecture.
  # qkv_bias: learned biases on the q, k and v projections (Qwen2).
  qkv_bias: bool = False
  # qk_norm: RMSNorm over head_dim on every query and key head before RoPE,
  #   one (E,) scale for q and one for k per layer (Qwen3).
  qk_norm: bool = False
  # norm_offset: every RMSNorm multiplies by (norm_offset + scale); Gemma
  #   stores the scale as an offset from 1 (norm_offset=1, scales init 0).
  norm_offset: float = 0.0
  # scale_embeddings: token embeddings times sqrt(d_model) (Gemma).
  scale_embeddings: bool = False
  # mlp_activation: the gated MLP's activation, "silu" (SwiGLU) or
  #   "gelu_tanh" (GeGLU with the tanh approximation, Gemma).
  mlp_activation: str = "silu"
  # sliding_window: HF's local attention window (Mistral, Qwen). lifejax
  #   attention is full causal, which equals the windowed attention exactly
  #   while a sequence is no longer than the window; longer inputs are
  #   refused (`check_length`), never silently attended in full.
  sliding_window: int | None = None
  # Mixture of experts (lifejax/model/moe.py); num_experts=0 is the dense
  # MLP. Each layer's MLP becomes `num_experts` SwiGLU experts of width
  # `mlp_dim`, and every token goes to `experts_per_token` (top-k) of them.
  # Routing follows Mixtral: softmax over all experts, top-k, the k weights
  # renormalised to sum to 1.
  num_experts: int = 0
  experts_per_token: int = 2
  # expert_capacity_factor: None or 0 = dropless (every token reaches its k
  #   experts); > 0 = each expert takes at most ceil(factor * T * k / E)
  #   tokens of each sequence (T tokens), the rest are dropped (their expert
  #   contribution is 0, the residual passes through).
  expert_capacity_factor: float | None = None
  # moe_aux_loss_coef: weight of the load-balancing loss (Switch / HF
  #   Mixtral form) in the LM loss; moe_z_loss_coef: weight of the router
  #   z-loss (ST-MoE). Both are means over layers.
  moe_aux_loss_coef: float = 0.0
  moe_z_loss_coef: float = 0.0
  # Pipeline parallelism (lifejax/model/pipeline.py), active only under a
  # mesh with a `stage` axis (MeshConfig.stage > 1); the function computed
  # is the same. pipeline_microbatches: m, the microbatches the batch is cut
  # into for the pipeline (the bubble is (p - 1) / (m + p - 1)).
  # pipeline_schedule: "gpipe" (all forwards, then autodiff's backward) or
  # "1f1b" (interleaved forward and backward; peak activations bounded by
  # the stage count; the loss must go through `Transformer.pipelined_loss`).
  pipeline_microbatches: int = 1
  pipeline_schedule: str = "gpipe"

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):  # gin binds dicts; keep it hashable
      object.__setattr__(self, "rope_scaling",
                         tuple(sorted(self.rope_scaling.items())))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads} (grouped-query attention)")
    if self.num_kv_heads > self.num_heads:
      raise ValueError(
          f"num_kv_heads={self.num_kv_heads} > num_heads={self.num_heads}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"unknown remat_policy {self.remat_policy!r}; expected "
                       f"one of {sorted(REMAT_POLICIES)}")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by "
                       f"num_heads={self.num_heads}; set head_dim explicitly")
    if (self.head_dim or self.d_model // self.num_heads) % 2:
      raise ValueError("rotary embeddings need an even head_dim")
    for f in ("param_dtype", "compute_dtype", "output_dtype"):
      to_dtype(getattr(self, f))
    for f, allowed in (("attention_impl", ATTENTION_IMPLS),
                       ("matmul_impl", ("auto", "xla", "cpu")),
                       ("fuse_projections", ("auto", "on", "off")),
                       ("weight_grad", ("auto", "residual", "loop", "tn")),
                       ("layer_loop", ("auto", "scan", "unroll")),
                       ("mlp_activation", MLP_ACTIVATIONS)):
      if getattr(self, f) not in allowed:
        raise ValueError(f"{f}={getattr(self, f)!r}: expected one of "
                         f"{allowed}")
    if self.pipeline_schedule not in ("gpipe", "1f1b"):
      raise ValueError(f"pipeline_schedule={self.pipeline_schedule!r}: "
                       "expected one of ('gpipe', '1f1b')")
    if not (isinstance(self.pipeline_microbatches, int)
            and self.pipeline_microbatches >= 1):
      raise ValueError(f"pipeline_microbatches={self.pipeline_microbatches!r}"
                       " must be an integer >= 1")
    if self.attention_block < 1:
      raise ValueError(f"attention_block={self.attention_block} must be >= 1")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"sliding_window={self.sliding_window} must be >= 1 "
                       "(or None for full attention)")

    self._check_moe()

  def _check_moe(self) -> None:
    if not (isinstance(self.num_experts, int) and self.num_experts >= 0):
      raise ValueError(f"num_experts={self.num_experts!r} must be an integer "
                       ">= 0 (0 = dense MLP)")
    if not self.num_experts:
      return
    if not (isinstance(self.experts_per_token, int)
            and 1 <= self.experts_per_token <= self.num_experts):
      raise ValueError(
          f"experts_per_token={self.experts_per_token!r} must be an integer "
          f"in [1, num_experts={self.num_experts}]")
    cf = self.expert_capacity_factor
    if cf is not None and not (isinstance(cf, (int, float)) and cf >= 0
                               and math.isfinite(cf)):
      raise ValueError(f"expert_capacity_factor={cf!r} must be None or 0 "
                       "(dropless) or a finite number > 0")
    for f in ("moe_aux_loss_coef", "moe_z_loss_coef"):
      v = getattr(self, f)
      if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
        raise ValueError(f"{f}={v!r} must be a finite number >= 0")

  @property
  def dropless(self) -> bool:
    """Whether every token reaches its k experts (no capacity limit)."""
    return not self.expert_capacity_factor

  def expert_capacity(self, length: int) -> int:
    """Slots per expert per sequence of `length` tokens in capacity mode:
    min(length, ceil(factor * length * k / E)) (at least 1); a sequence
    never sends an expert more than `length` tokens, so the dropless
    capacity is `length`."""
    if self.dropless:
      return length
    c = math.ceil(self.expert_capacity_factor * length
                  * self.experts_per_token / self.num_experts)
    return max(1, min(length, c))

  def check_length(self, length: int) -> None:
    """ValueError if `length` tokens exceed `sliding_window`: lifejax attends
    in full, which equals windowed attention only up to the window."""
    if self.sliding_window is not None and length > self.sliding_window:
      raise ValueError(
          f"sequence length {length} exceeds TransformerConfig."
          f"sliding_window={self.sliding_window}: lifejax has no "
          "sliding-window attention (its full causal attention equals it "
          "only for sequences up to the window); use sequences of at most "
          "sliding_window tokens")

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def rope_scaling_dict(self) -> dict[str, float] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def layer_matmul_params(self, active: bool = False) -> int:
    """Matmul weights of one layer: all of them, or (`active`) those one
    token multiplies by (the router and k of the E experts)."""
    d, e, f = self.d_model, self.resolved_head_dim, self.mlp_dim
    attn = d * e * (2 * self.num_heads + 2 * self.num_kv_heads)
    if not self.num_experts:
      return attn + 3 * d * f
    experts = self.experts_per_token if active else self.num_experts
    return attn + experts * 3 * d * f + d * self.num_experts

  def num_params(self) -> int:
    """Number of stored parameters."""
    e = self.resolved_head_dim
    per_layer = (self.layer_matmul_params() + 2 * self.d_model
                 + (self.num_kv_heads if self.smear_keys else 0)
                 + ((self.num_heads + 2 * self.num_kv_heads) * e
                    if self.qkv_bias else 0)
                 + (2 * e if self.qk_norm else 0))
    embeddings = self.vocab_size * self.d_model * (
        1 if self.tie_embeddings else 2)
    return self.num_layers * per_layer + self.d_model + embeddings

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward).

    Counts matmul FLOPs only: 6 * (params used in matmuls; with experts,
    the router and the k experts a token uses) plus the
    attention score/value matmuls (12 * layers * heads * head_dim * T, the
    PaLM-appendix convention without causal halving).
    """
    matmul_params = (self.num_layers * self.layer_matmul_params(active=True)
                     + self.vocab_size * self.d_model)  # + the output head
    attn = 12 * self.num_layers * self.num_heads * self.resolved_head_dim * seq_len
    return 6.0 * matmul_params + attn
