"""Accelerator attention impls (lifejax/model/accel_attention.py) on CPU.

Splash runs in Pallas interpret mode and "xla_sdpa" is
`jax.nn.dot_product_attention(implementation="xla")`: both are compared,
forward and gradients, with the model's einsum attention and with a float64
brute-force loop, on causal GQA attention over rows packed with 2-3
segments; then the whole model's loss and gradients with each impl against
"einsum". cuDNN cannot run here: only the per-backend choice ("auto") and its
errors are tested, with faked backend names.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.losses.lm import lm_loss
from lifejax.model import accel_attention, transformer
from lifejax.model.config import TransformerConfig

B, T, K, G, E = 2, 128, 2, 2, 16
# Row 0: three packed segments (one starting mid-block), row 1: two.
SEG = np.stack([np.repeat([1, 2, 3], [40, 60, 28]),
                np.repeat([5, 7], [64, 64])]).astype(np.int32)


def _inputs(b: int = B, seg: np.ndarray = SEG, kh: int = K, g: int = G):
  rng = np.random.default_rng(0)
  q = 0.5 * rng.standard_normal((b, T, kh, g, E))  # scores of std ~2
  k = rng.standard_normal((b, T, kh, E))
  v = rng.standard_normal((b, T, kh, E))
  return (*(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
          jnp.asarray(seg))


def brute_force(q, k, v, seg) -> np.ndarray:
  """float64 loops: each query row over the keys it may see."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  seg = np.asarray(seg)
  out = np.zeros_like(q)
  for bi in range(q.shape[0]):
    for ti in range(q.shape[1]):
      keys = [s for s in range(ti + 1) if seg[bi, s] == seg[bi, ti]]
      s_KxGxS = np.einsum("kge,ske->kgs", q[bi, ti], k[bi, keys])
      p = np.exp(s_KxGxS - s_KxGxS.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[bi, ti] = np.einsum("kgs,ske->kge", p, v[bi, keys])
  return out


IMPLS = {
    "splash": lambda *a: accel_attention.splash_attention(*a,
                                                          interpret=True),
    "xla_sdpa": lambda *a: accel_attention.sdpa_attention(
        *a, implementation="xla"),
}


def _einsum(*a):
  return transformer.einsum_attention(*a, jnp.float32)


@pytest.mark.parametrize("kh, g", [(K, G), (1, 4)], ids=["gqa", "mqa"])
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_forward_and_grads_equal_einsum(impl, kh, g):
  q, k, v, seg = _inputs(kh=kh, g=g)
  fn = jax.jit(IMPLS[impl])
  out = np.asarray(fn(q, k, v, seg))
  ref64 = brute_force(q, k, v, seg)
  ein = np.asarray(jax.jit(_einsum)(q, k, v, seg))
  d_ref, d_ein = np.abs(out - ref64).max(), np.abs(out - ein).max()
  print(f"{impl} K={kh} G={g} forward: max |diff| vs float64 loop {d_ref:.2e}, "
        f"vs einsum {d_ein:.2e}")
  assert out.shape == (B, T, kh, g, E) and out.dtype == np.float32
  assert d_ref < 2e-5 and d_ein < 2e-5

  w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape),
                  jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, seg) * w)  # noqa: E731
  got = jax.jit(jax.grad(loss(IMPLS[impl]), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(_einsum), argnums=(0, 1, 2)))(q, k, v)
  for name, a, b in zip("qkv", got, want):
    a, b = np.asarray(a), np.asarray(b)
    diff = np.abs(a - b).max()
    print(f"{impl} d{name}: max |diff| vs einsum {diff:.2e} "
          f"(max |grad| {np.abs(b).max():.2f})")
    assert diff < 1e-4 * max(1.0, np.abs(b).max())


def test_segments_isolate_and_block_boundaries():
  """A change in segment 1 of row 0 leaves segments 2 and 3 unchanged
  (splash), while the first segment's rows do change."""
  q, k, v, seg = _inputs()
  fn = jax.jit(IMPLS["splash"])
  base = np.asarray(fn(q, k, v, seg))
  v2 = v.at[0, :40].add(1.0)
  moved = np.asarray(fn(q, k, v2, seg))
  assert np.abs(moved[0, :40] - base[0, :40]).max() > 0.1
  np.testing.assert_array_equal(moved[0, 40:], base[0, 40:])
  np.testing.assert_array_equal(moved[1], base[1])


def test_splash_sharded_equals_unsharded():
  """Under a data x model mesh splash runs in a shard_map (batch and kv
  heads split); the result equals the single-device one."""
  seg = np.concatenate([SEG, SEG[::-1]])
  q, k, v, seg = _inputs(4, seg)
  want = np.asarray(jax.jit(IMPLS["splash"])(q, k, v, seg))
  mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=1, model=2))
  # A new function object: jax caches traces per function, and the
  # activation sharding is read at trace time.
  sharded = lambda *a: accel_attention.splash_attention(  # noqa: E731
      *a, interpret=True)
  with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
    assert "shard_map" in str(jax.make_jaxpr(sharded)(q, k, v, seg))
    got = np.asarray(jax.jit(sharded)(q, k, v, seg))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_splash_length_must_be_multiple_of_block():
  q, k, v, seg = (x[:, :96] for x in _inputs())
  with pytest.raises(ValueError, match="attention_impl='splash'.*128.*96"):
    accel_attention.splash_attention(q, k, v, seg, interpret=True)


# -- the per-backend choice ------------------------------------------------------


@pytest.mark.parametrize("backend, dtype, head_dim, want", [
    ("cpu", "float32", 64, "blocked"),
    ("cpu", "bfloat16", 64, "blocked"),
    ("gpu", "bfloat16", 64, "cudnn"),
    ("gpu", "float16", 128, "cudnn"),
    ("gpu", "float32", 64, "einsum"),  # cuDNN takes bf16/f16 only
    ("gpu", "bfloat16", 256, "einsum"),  # above the head_dim limit
    ("gpu", "bfloat16", 12, "einsum"),  # not a multiple of 8
    ("rocm", "bfloat16", 64, "einsum"),
    ("tpu", "float32", 64, "splash"),
    ("tpu", "bfloat16", 128, "splash"),
])
def test_auto_choice_per_backend(backend, dtype, head_dim, want):
  assert accel_attention.choose_attention("auto", backend, dtype,
                                          head_dim) == want
  cfg = TransformerConfig(d_model=8 * head_dim, num_heads=8, num_kv_heads=2,
                          compute_dtype=dtype)
  assert transformer.kernels(cfg, backend).attention == want


def test_explicit_choices_and_errors():
  for impl in ("einsum", "blocked", "splash", "xla_sdpa"):
    for backend in ("cpu", "gpu", "tpu"):
      assert accel_attention.choose_attention(impl, backend, "float32",
                                              64) == impl
  assert accel_attention.choose_attention("cudnn", "gpu", "bfloat16",
                                          64) == "cudnn"
  for backend in ("cpu", "tpu", "rocm"):
    with pytest.raises(ValueError, match="attention_impl='cudnn'.*GPU"):
      accel_attention.choose_attention("cudnn", backend, "bfloat16", 64)
  with pytest.raises(ValueError, match="attention_impl='cudnn'.*float32"):
    accel_attention.choose_attention("cudnn", "gpu", "float32", 64)
  # Splash lengths: "auto" falls back to einsum, an explicit choice raises.
  assert accel_attention.fit_length("splash", "auto", 256) == "splash"
  assert accel_attention.fit_length("splash", "auto", 200) == "einsum"
  assert accel_attention.fit_length("cudnn", "auto", 200) == "cudnn"
  with pytest.raises(ValueError, match="attention_impl='splash'"):
    accel_attention.fit_length("splash", "splash", 200)
  with pytest.raises(ValueError, match="attention_impl"):
    TransformerConfig(attention_impl="flash")


# -- the whole model -------------------------------------------------------------

CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4,
                        num_kv_heads=2, mlp_dim=64, max_seq_len=T,
                        attention_impl="einsum")


def _model_params(cfg: TransformerConfig):
  """Random params with O(1) activations (attention far from uniform)."""
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(0)

  def fill(path, x):
    name = str(path[-1].key)
    if name == "scale":
      v = 1.0 + 0.2 * rng.standard_normal(x.shape)
    elif name == "embed":
      v = rng.standard_normal(x.shape)
    else:  # fan-in scaled matrices (layer params carry a leading L axis)
      fan_in = {"wo": cfg.num_heads * cfg.resolved_head_dim,
                "w_down": cfg.mlp_dim}.get(name, cfg.d_model)
      v = rng.standard_normal(x.shape) / math.sqrt(fan_in)
    return jnp.asarray(v, x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      fill, nnx.to_pure_dict(abstract))


@functools.lru_cache(maxsize=None)
def _loss_and_grads(impl: str):
  cfg = dataclasses.replace(CFG, attention_impl=impl)
  graphdef, params = _model_params(cfg)
  rng = np.random.default_rng(2)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
  targets = jnp.roll(tokens, -1, axis=1)
  seg = jnp.asarray(SEG)
  # Positions restart at every segment start, as packing writes them.
  pos = np.zeros((B, T), np.int32)
  for bi in range(B):
    for ti in range(1, T):
      pos[bi, ti] = 0 if SEG[bi, ti] != SEG[bi, ti - 1] else pos[bi, ti - 1] + 1

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens, jnp.asarray(pos), seg)
    return lm_loss(logits, targets, jnp.ones((B, T)))[0]

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_model_loss_and_grads_equal_einsum(impl):
  loss_ref, g_ref = _loss_and_grads("einsum")
  loss, g = _loss_and_grads(impl)
  diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, g_ref)
  scale = max(jax.tree.leaves(jax.tree.map(
      lambda a: float(jnp.abs(a).max()), g_ref)))
  worst = max(jax.tree.leaves(diffs))
  print(f"model {impl}: loss {float(loss):.6f} vs einsum {float(loss_ref):.6f}"
        f" (|diff| {abs(float(loss - loss_ref)):.1e}); max |grad diff| "
        f"{worst:.1e} (max |grad| {scale:.2f})")
  assert abs(float(loss) - float(loss_ref)) < 1e-5
  assert worst < 1e-4 * scale


def test_model_refuses_what_cannot_run_here():
  graphdef, params = _model_params(
      dataclasses.replace(CFG, attention_impl="cudnn"))
  tokens = jnp.zeros((1, T), jnp.int32)
  with pytest.raises(ValueError, match="attention_impl='cudnn'.*'cpu'"):
    nnx.merge(graphdef, params)(tokens)
  graphdef, params = _model_params(
      dataclasses.replace(CFG, attention_impl="splash"))
  with pytest.raises(ValueError, match="attention_impl='splash'.*100"):
    nnx.merge(graphdef, params)(tokens[:, :100])


def test_bf16_compute_forward():
  """bf16 inputs (the accelerator default), f32 accumulation: splash and
  xla_sdpa stay within bf16 rounding of the float64 loop, as einsum does."""
  q, k, v, seg = _inputs()
  ref64 = brute_force(q, k, v, seg)
  bf = jnp.bfloat16
  fns = {
      "einsum": lambda *a: transformer.einsum_attention(*a, bf),
      "splash": lambda *a: accel_attention.splash_attention(*a, bf,
                                                            interpret=True),
      "xla_sdpa": lambda *a: accel_attention.sdpa_attention(*a, bf),
  }
  outs = {n: jax.jit(f)(q, k, v, seg) for n, f in fns.items()}
  diffs = {n: float(np.abs(np.asarray(o) - ref64).max())
           for n, o in outs.items()}
  print(f"bf16 forward: max |diff| vs float64 loop {diffs}")
  for name, out in outs.items():
    assert out.dtype == jnp.float32, name
    assert diffs[name] < 0.05, diffs
  assert diffs["splash"] < 2 * diffs["einsum"] + 1e-3, diffs
