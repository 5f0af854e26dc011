"""Context parallelism == full attention: ring and all-gathered-KV attention
against the plain (unsharded) einsum attention and jax.nn's, forward and
gradients, and the model's loss and gradients with a context axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lifejax import sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import ring_attention, transformer
from lifejax.model.config import TransformerConfig

F32 = jnp.float32
B, T, K, G, E = 2, 32, 2, 2, 8
# f32 everywhere; observed max abs errors are <= 1.4e-6 for outputs up to
# 2.7 and gradients up to 5.6 (only the summation order differs).
ATOL = 1e-5


def _inputs():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((B, T, K, G, E)).astype(np.float32) * E ** -0.5
  k = rng.standard_normal((B, T, K, E)).astype(np.float32)
  v = rng.standard_normal((B, T, K, E)).astype(np.float32)
  # Packed rows: segments of random lengths that straddle every block
  # boundary of every layout, and a row that is one segment.
  seg = np.stack([np.sort(rng.integers(1, 5, T)),
                  np.ones(T, np.int64)]).astype(np.int32)
  w = rng.standard_normal((B, T, K, G, E)).astype(np.float32)
  return q, k, v, seg, w


def _einsum_attention(q, k, v, seg):
  """Full attention computed directly, as the model's einsum path does."""
  s = jnp.einsum("btkge,bske->bkgts", q, k)
  s = jnp.where(transformer.attention_mask(seg), s, jnp.finfo(F32).min)
  return jnp.einsum("bkgts,bske->btkge", jax.nn.softmax(s, axis=-1), v)


def _jax_nn_attention(q, k, v, seg):
  """The same function through jax.nn.dot_product_attention (GQA layout)."""
  mask = (jnp.tril(jnp.ones((T, T), bool))[None]
          & (seg[:, :, None] == seg[:, None, :]))[:, None]
  out = jax.nn.dot_product_attention(q.reshape(B, T, K * G, E), k, v,
                                     mask=mask, scale=1.0)
  return out.reshape(B, T, K, G, E)


def _value_and_grads(attn, q, k, v, seg, w):
  def loss(q, k, v):
    out = attn(q, k, v, seg)
    return jnp.sum(out * w), out
  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2),
                                       has_aux=True)(q, k, v)
  return out, grads


@pytest.fixture(scope="module")
def reference():
  q, k, v, seg, w = _inputs()
  out, grads = jax.jit(_value_and_grads, static_argnums=0)(
      _einsum_attention, q, k, v, seg, w)
  return (q, k, v, seg, w), out, grads


def test_references_agree(reference):
  (q, k, v, seg, w), out, grads = reference
  out_nn, grads_nn = jax.jit(_value_and_grads, static_argnums=0)(
      _jax_nn_attention, q, k, v, seg, w)
  np.testing.assert_allclose(out_nn, out, atol=ATOL, rtol=0)
  for a, b in zip(grads_nn, grads):
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


# (The model test below runs the zig-zag ring at context 2 as well.)
@pytest.mark.parametrize("mesh_shape,impl,layout", [
    (dict(context=2), "ring", "contiguous"),
    (dict(data=2, context=4), "ring", "zigzag"),
    (dict(data=2, model=2, context=2), "allgather_kv", "contiguous"),
])
def test_context_attention_equals_full_attention(devices, reference,
                                                 mesh_shape, impl, layout):
  (q, k, v, seg, w), out_ref, grads_ref = reference
  cfg = sharding.MeshConfig(**{"data": 1, "fsdp": 1, **mesh_shape})
  mesh = sharding.make_mesh(cfg)

  def attn(q, k, v, seg):
    return ring_attention.context_attention(q, k, v, seg, mesh, impl=impl,
                                            layout=layout)

  with jax.set_mesh(mesh):
    compiled = jax.jit(_value_and_grads, static_argnums=0).lower(
        attn, q, k, v, seg, w).compile()
    out, grads = compiled(q, k, v, seg, w)
  hlo = compiled.as_text()  # the partitioned per-device program
  np.testing.assert_allclose(out, out_ref, atol=ATOL, rtol=0)
  for name, a, b in zip("qkv", grads, grads_ref):
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=f"d{name}")
  # The sequence really is split: the output stays sharded over context,
  # and the ring moves K/V with collective permutes, never a gather.
  assert out.sharding.spec[1] == sharding.CONTEXT_AXIS
  if impl == "ring":
    assert "collective-permute" in hlo and "all-gather" not in hlo
  else:
    assert "all-gather" in hlo


def test_context_attention_refuses_indivisible_length(devices, reference):
  (q, k, v, seg, _), _, _ = reference
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, context=4))
  cut = lambda x: x[:, :28]  # noqa: E731  28 = 4 * 7: not a multiple of 8
  with pytest.raises(ValueError, match="not divisible by 8"):
    ring_attention.context_attention(cut(q), cut(k), cut(v), cut(seg), mesh)


# -- the model ----------------------------------------------------------------

CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)


def _batch() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1)
  b, t = 4, 16
  toks = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
  seg = np.sort(rng.integers(1, 4, (b, t)), axis=1).astype(np.int32)
  pos = np.zeros((b, t), np.int32)
  for r in range(b):  # positions restart at every packed document
    for s in np.unique(seg[r]):
      idx = np.flatnonzero(seg[r] == s)
      pos[r, idx] = np.arange(len(idx))
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
          "loss_mask": (rng.random((b, t)) < 0.9).astype(np.float32),
          "segment_ids": seg, "positions": pos}


def _host_params(abstract) -> dict:
  """N(0, 0.1) params, unit norm gains, made on the host (no init to
  compile)."""
  rng = np.random.default_rng(2)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (np.ones(x.shape, x.dtype) if path[-1].key == "scale"
                       else (0.1 * rng.standard_normal(x.shape)).astype(
                           x.dtype)),
      nnx.to_pure_dict(abstract))


def test_model_loss_and_grads_with_context_parallelism(devices):
  graphdef, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  params = _host_params(abstract)
  loss_fn = make_lm_loss_fn(graphdef)
  batch = _batch()

  def loss_and_grads(mesh, params, batch):
    def f(params, batch):
      with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
        return jax.value_and_grad(
            lambda p: loss_fn(p, batch, jax.random.key(0))[0])(params)
    with jax.set_mesh(mesh):
      compiled = jax.jit(f).lower(params, batch).compile()
      return compiled(params, batch), compiled.as_text()

  one = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, model=1),
                           devices[:1])
  (loss_ref, grads_ref), text_ref = loss_and_grads(one, params, batch)
  ctx = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, context=2),
                           devices[:4])
  assert dict(ctx.shape) == {"data": 2, "fsdp": 1, "model": 1, "context": 2}
  (loss, grads), text = loss_and_grads(ctx, params, batch)

  assert "collective-permute" in text and "collective-permute" not in text_ref
  # f32 model; observed |loss diff| 5e-7 for a loss of 4.27 and max |grad
  # diff| 4e-8 for gradients up to 0.15.
  np.testing.assert_allclose(loss, loss_ref, atol=1e-5, rtol=0)
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(
          a, b, atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path)),
      grads, grads_ref)


def test_model_hook_options(devices):
  """`ring` / `allgather_kv` need a context axis; `auto` is inert without."""
  assert ring_attention.model_attention("auto", F32, 16) is None
  with pytest.raises(ValueError, match="MeshConfig.context"):
    ring_attention.model_attention("ring", F32, 16)
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, context=4))
  with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
    assert ring_attention.model_attention("auto", F32, 16) is not None
    assert ring_attention.model_attention("einsum", F32, 16) is None
    # 12 tokens cannot be cut into 2 * 4 zig-zag chunks: plain attention
    assert ring_attention.model_attention("auto", F32, 12) is None
    assert ring_attention.model_attention("allgather_kv", F32, 12) is not None


def test_mesh_context_axis(devices):
  """A context axis exists only when > 1; the rules split the length (and
  the flattened tokens after the batch axes) over it."""
  cfg = sharding.MeshConfig(data=2, fsdp=-1, context=2)
  assert cfg.axis_names == ("data", "fsdp", "model", "context")
  assert cfg.shape(8) == (2, 2, 1, 2)
  assert sharding.MeshConfig(data=2, fsdp=-1).shape(8) == (2, 4, 1)
  with pytest.raises(ValueError, match="context=0"):
    sharding.MeshConfig(context=0)
  mesh = sharding.make_mesh(cfg)
  spec = lambda names, shape: sharding.logical_to_spec(  # noqa: E731
      names, shape, mesh, sharding.DEFAULT_RULES)
  assert spec(("batch", "length", "embed"), (4, 16, 32)) == P(
      ("data", "fsdp"), "context", None)
  assert spec(("activation_tokens", "mlp"), (64, 32)) == P(
      ("data", "fsdp", "context"), None)
