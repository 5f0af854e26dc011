"""Context parallelism: attention with the sequence split over a mesh axis.

The model's attention (causal, within equal segment ids, grouped-query) for
activations whose length dimension is sharded over the `context` mesh axis
(c devices, T / c rows each). Two formulations, both exact:

* `ring`: queries stay on their device; key/value blocks travel around the
  ring of context devices (`jax.lax.ppermute`, c - 1 hops), and each device
  folds every block it sees into a flash-style online softmax (running row
  max and denominator, f32). A custom VJP saves only q, k, v, the output
  and the log-sum-exp, and its backward is a second ring pass: key/value
  blocks travel again together with their gradient accumulators, which
  arrive home after c hops. No device ever holds more than two key/value
  blocks or a (T/c, T/c) score block, so attention memory per device
  falls with c.
* `allgather_kv`: each device gathers all keys and values and attends its
  own queries to them (plain JAX autodiff: the gather's transpose is a
  reduce-scatter). Simpler; the scores are (T/c, T) per device and the
  gathered K/V are T long.

Masks use the global token index (the model's causal order) and the segment
ids of both the query rows and the travelling key block, so packed documents
never attend across a block boundary either.

Causal load balance: with the contiguous layout, device i has nothing to
compute for blocks from devices after it (skipped by `lax.cond`), but the
ring advances in lock step, so the last device's work sets the pace. The
`zigzag` layout (the default) balances it: the sequence is cut into 2c
chunks and device i holds chunks i and 2c - 1 - i, so at every hop each
device computes the same number of unmasked half-blocks. The caller's
arrays stay in natural order; inside the shard_map, two `ppermute`s per
array move q, k, v and the segment ids into the zig-zag layout, and two
move the output back (each O(T / c) per device, once per call).

Shape letters: see `lifejax/__init__.py`; here T is the global length, R the
rows a device holds (T / c) and Q, Z the rows of one query / key sub-block.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from lifejax import sharding

F32 = jnp.float32
NEG = float(jnp.finfo(F32).min)
CONTEXT_AXIS = sharding.CONTEXT_AXIS
IMPLS = ("ring", "allgather_kv")
LAYOUTS = ("contiguous", "zigzag")

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                       jax.Array]
Arrays3 = tuple[jax.Array, jax.Array, jax.Array]


def _mask(q0: jax.Array, nq: int, k0: jax.Array, nk: int,
          seg_q_BxQ: jax.Array, seg_k_BxZ: jax.Array) -> jax.Array:
  """(B, 1, 1, Q, Z) bool for query rows [q0, q0 + nq) and keys [k0, k0 +
  nk) (global indices): causal and within the same segment."""
  causal = (q0 + jnp.arange(nq))[:, None] >= (k0 + jnp.arange(nk))[None, :]
  same = seg_q_BxQ[:, :, None] == seg_k_BxZ[:, None, :]
  return (causal[None] & same)[:, None, None]


def _starts(layout: str, c: int, rows: int, dev: jax.Array) -> list[jax.Array]:
  """Global index of the first row of each sub-block device `dev` holds."""
  if layout == "contiguous":
    return [dev * rows]
  half = rows // 2
  return [dev * half, (2 * c - 1 - dev) * half]


def _scores(q_BxQxKxGxE: jax.Array, k_BxZxKxE: jax.Array,
            dtype: jnp.dtype) -> jax.Array:
  return jnp.einsum("btkge,bske->bkgts", q_BxQxKxGxE.astype(dtype),
                    k_BxZxKxE.astype(dtype), preferred_element_type=F32)


def _fwd_block(acc: Arrays3, q: jax.Array, k: jax.Array, v: jax.Array,
               seg_q: jax.Array, seg_k: jax.Array, q0: jax.Array,
               k0: jax.Array, dtype: jnp.dtype) -> Arrays3:
  """Folds one key block into the online softmax of one query block.

  acc = (o (B,K,G,Q,E) unnormalized, m (B,K,G,Q) running max, l (B,K,G,Q)
  running denominator), all f32.
  """
  o, m, l = acc
  mask = _mask(q0, q.shape[1], k0, k.shape[1], seg_q, seg_k)
  s = jnp.where(mask, _scores(q, k, dtype), NEG)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1))
  # Zero the masked entries explicitly: while a row has seen no visible
  # key, m_new is NEG too and exp(s - m_new) would be 1.
  p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
  corr = jnp.exp(m - m_new)
  pv = jnp.einsum("bkgts,bske->bkgte", p.astype(dtype), v.astype(dtype),
                  preferred_element_type=F32)
  return (o * corr[..., None] + pv, m_new,
          l * corr + jnp.sum(p, axis=-1))


def _bwd_block(grads: Arrays3, q: jax.Array, k: jax.Array, v: jax.Array,
               seg_q: jax.Array, seg_k: jax.Array, q0: jax.Array,
               k0: jax.Array, do: jax.Array, lse: jax.Array,
               delta: jax.Array, dtype: jnp.dtype) -> Arrays3:
  """Adds one (query block, key block) pair's share to (dq, dk, dv).

  dq (B,K,G,Q,E), dk, dv (B,Z,K,E), do (B,K,G,Q,E), lse and delta
  (B,K,G,Q), all f32; probabilities are recomputed from the saved lse.
  """
  dq, dk, dv = grads
  mask = _mask(q0, q.shape[1], k0, k.shape[1], seg_q, seg_k)
  s = _scores(q, k, dtype)
  p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)
  doc = do.astype(dtype)
  dv = dv + jnp.einsum("bkgts,bkgte->bske", p.astype(dtype), doc,
                       preferred_element_type=F32)
  dp = jnp.einsum("bkgte,bske->bkgts", doc, v.astype(dtype),
                  preferred_element_type=F32)
  ds = (p * (dp - delta[..., None])).astype(dtype)
  dq = dq + jnp.einsum("bkgts,bske->bkgte", ds, k.astype(dtype),
                       preferred_element_type=F32)
  dk = dk + jnp.einsum("bkgts,btkge->bske", ds, q.astype(dtype),
                       preferred_element_type=F32)
  return dq, dk, dv


def _visible(q0: jax.Array, nq: int, k0: jax.Array) -> jax.Array:
  """Whether any query row of [q0, q0 + nq) may see key k0 (causally)."""
  return q0 + nq - 1 >= k0


def _split(x: jax.Array, n: int) -> list[jax.Array]:
  return jnp.split(x, n, axis=1) if n > 1 else [x]


def _zeros(shape: tuple[int, ...], like: jax.Array) -> jax.Array:
  """f32 zeros that vary over the same mesh axes as `like` (a loop or cond
  carry must keep its manual-axis type)."""
  return jax.lax.pcast(jnp.zeros(shape, F32),
                       tuple(jax.typeof(like).manual_axis_type.varying),
                       to="varying")


@functools.lru_cache(maxsize=None)
def _ring_core(c: int, layout: str, dtype: jnp.dtype) -> AttentionFn:
  """Per-device ring attention over CONTEXT_AXIS (call inside shard_map).

  (q (B,R,K,G,E) pre-scaled, k, v (B,R,K,E), segment_ids (B,R)) in
  `layout` -> (B,R,K,G,E) f32. Sub-blocks of a query shard that see
  nothing of a key block (causally) are skipped with `lax.cond`.
  """
  n = 2 if layout == "zigzag" else 1
  fwd_perm = [(i, (i + 1) % c) for i in range(c)]  # send to the next device

  def rotate(tree):
    return jax.tree.map(
        lambda x: jax.lax.ppermute(x, CONTEXT_AXIS, fwd_perm), tree)

  def key_starts(i, s, rows):
    return _starts(layout, c, rows, (i - s) % c)  # block held after s hops

  def forward(q, k, v, seg):
    b, rows, kh, g, e = q.shape
    i = jax.lax.axis_index(CONTEXT_AXIS)
    qs, sqs = _split(q, n), _split(seg, n)
    q_starts = _starts(layout, c, rows, i)
    nq = rows // n
    accs = [(_zeros((b, kh, g, nq, e), q), _zeros((b, kh, g, nq), q) + NEG,
             _zeros((b, kh, g, nq), q)) for _ in range(n)]

    def fold(accs, kv, s):
      k_blk, v_blk, seg_blk = kv
      ks, vs, sks = _split(k_blk, n), _split(v_blk, n), _split(seg_blk, n)
      k_starts = key_starts(i, s, rows)
      out = []
      for a in range(n):
        acc = accs[a]
        for z in range(n):
          acc = jax.lax.cond(
              _visible(q_starts[a], nq, k_starts[z]),
              functools.partial(_fwd_block, dtype=dtype), lambda acc, *_: acc,
              acc, qs[a], ks[z], vs[z], sqs[a], sks[z], q_starts[a],
              k_starts[z])
        out.append(acc)
      return out

    def hop(carry, s):
      accs, kv = carry
      # The next block's transfer does not depend on this block's math, so
      # XLA may overlap them.
      return (fold(accs, kv, s), rotate(kv)), None

    (accs, kv), _ = jax.lax.scan(hop, (accs, (k, v, seg)), jnp.arange(c - 1))
    accs = fold(accs, kv, c - 1)
    outs, lses = [], []
    for o, m, l in accs:
      l = jnp.where(l > 0, l, 1.0)  # a row always sees itself; be safe
      outs.append(o / l[..., None])
      lses.append(m + jnp.log(l))
    o_BxKxGxRxE = jnp.concatenate(outs, axis=3)
    return o_BxKxGxRxE, jnp.concatenate(lses, axis=3)

  @jax.custom_vjp
  def attn(q, k, v, seg):
    return forward(q, k, v, seg)[0].transpose(0, 3, 1, 2, 4)

  def attn_fwd(q, k, v, seg):
    o, lse = forward(q, k, v, seg)
    return o.transpose(0, 3, 1, 2, 4), (q, k, v, seg, o, lse)

  def attn_bwd(res, dout_BxRxKxGxE):
    q, k, v, seg, o, lse = res
    rows = q.shape[1]
    nq = rows // n
    i = jax.lax.axis_index(CONTEXT_AXIS)
    do = dout_BxRxKxGxE.astype(F32).transpose(0, 2, 3, 1, 4)
    delta = jnp.sum(do * o, axis=-1)
    qs, sqs = _split(q, n), _split(seg, n)
    dos, lses, deltas = (jnp.split(x, n, axis=3) for x in (do, lse, delta))
    q_starts = _starts(layout, c, rows, i)
    dqs = [_zeros(x.shape, x) for x in dos]

    def fold(dqs, kv, dkv, s):
      k_blk, v_blk, seg_blk = kv
      ks, vs, sks = _split(k_blk, n), _split(v_blk, n), _split(seg_blk, n)
      dks, dvs = _split(dkv[0], n), _split(dkv[1], n)
      k_starts = key_starts(i, s, rows)
      dqs = list(dqs)
      for a in range(n):
        for z in range(n):
          dqs[a], dks[z], dvs[z] = jax.lax.cond(
              _visible(q_starts[a], nq, k_starts[z]),
              functools.partial(_bwd_block, dtype=dtype),
              lambda grads, *_: grads,
              (dqs[a], dks[z], dvs[z]), qs[a], ks[z], vs[z], sqs[a], sks[z],
              q_starts[a], k_starts[z], dos[a], lses[a], deltas[a])
      dkv = tuple(jnp.concatenate(x, axis=1) if n > 1 else x[0]
                  for x in (dks, dvs))
      return dqs, dkv

    def hop(carry, s):
      dqs, kv, dkv = carry
      kv_next = rotate(kv)
      dqs, dkv = fold(dqs, kv, dkv, s)
      # A key block's gradient travels with it and is home after c hops.
      return (dqs, kv_next, rotate(dkv)), None

    dkv0 = (_zeros(k.shape, k), _zeros(v.shape, v))
    (dqs, kv, dkv), _ = jax.lax.scan(hop, (dqs, (k, v, seg), dkv0),
                                     jnp.arange(c - 1))
    dqs, dkv = fold(dqs, kv, dkv, c - 1)
    dk, dv = rotate(dkv)
    dq = jnp.concatenate(dqs, axis=3).transpose(0, 3, 1, 2, 4)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None)

  attn.defvjp(attn_fwd, attn_bwd)
  return attn


# -- the zig-zag layout -------------------------------------------------------
# Cut the sequence into 2c chunks. Contiguously, device d holds chunks 2d
# and 2d + 1; in the zig-zag layout it holds chunks d and 2c - 1 - d. Chunk
# m belongs to device m (m < c) or 2c - 1 - m: the even chunks go to every
# device exactly once, and so do the odd ones, so two ppermutes move them.
# An even device's first zig-zag chunk (its own index) is even, an odd
# device's is odd.


def _zigzag_dest(m: int, c: int) -> int:
  return m if m < c else 2 * c - 1 - m


def _zigzag_perms(c: int) -> tuple[list[tuple[int, int]], ...]:
  return ([(d, _zigzag_dest(2 * d, c)) for d in range(c)],
          [(d, _zigzag_dest(2 * d + 1, c)) for d in range(c)])


def _to_zigzag(x: jax.Array, c: int) -> jax.Array:
  """(B, R, ...) contiguous shard -> this device's zig-zag shard."""
  even_perm, odd_perm = _zigzag_perms(c)
  even, odd = jnp.split(x, 2, axis=1)
  even = jax.lax.ppermute(even, CONTEXT_AXIS, even_perm)
  odd = jax.lax.ppermute(odd, CONTEXT_AXIS, odd_perm)
  dev_even = jax.lax.axis_index(CONTEXT_AXIS) % 2 == 0
  return jnp.concatenate([jnp.where(dev_even, even, odd),
                          jnp.where(dev_even, odd, even)], axis=1)


def _from_zigzag(x: jax.Array, c: int) -> jax.Array:
  """Inverse of `_to_zigzag`."""
  even_perm, odd_perm = _zigzag_perms(c)
  first, second = jnp.split(x, 2, axis=1)
  dev_even = jax.lax.axis_index(CONTEXT_AXIS) % 2 == 0
  even = jnp.where(dev_even, first, second)
  odd = jnp.where(dev_even, second, first)
  inverse = lambda perm: [(dst, src) for src, dst in perm]  # noqa: E731
  return jnp.concatenate(
      [jax.lax.ppermute(even, CONTEXT_AXIS, inverse(even_perm)),
       jax.lax.ppermute(odd, CONTEXT_AXIS, inverse(odd_perm))], axis=1)


def _allgather_local(q: jax.Array, k: jax.Array, v: jax.Array,
                     seg: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """Per-device attention of the local queries to all-gathered keys."""
  rows = q.shape[1]
  gather = functools.partial(jax.lax.all_gather, axis_name=CONTEXT_AXIS,
                             axis=1, tiled=True)
  k_all, v_all, seg_all = gather(k), gather(v), gather(seg)
  q0 = jax.lax.axis_index(CONTEXT_AXIS) * rows
  mask = _mask(q0, rows, 0, k_all.shape[1], seg, seg_all)
  s = jnp.where(mask, _scores(q, k_all, dtype), NEG)
  probs = jax.nn.softmax(s, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bske->btkge", probs, v_all.astype(dtype),
                    preferred_element_type=F32)


def context_attention(q_BxTxKxGxE: jax.Array, k_BxTxKxE: jax.Array,
                      v_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
                      mesh: Mesh, *, impl: str = "ring",
                      layout: str = "zigzag", dtype: jnp.dtype = F32,
                      rules: sharding.Rules = sharding.DEFAULT_RULES
                      ) -> jax.Array:
  """Causal GQA attention within equal segment ids, sequence-parallel.

  q (B,T,K,G,E) is pre-scaled (the model multiplies by E**-0.5 first); k,
  v (B,T,K,E); all in natural order. Returns (B,T,K,G,E) f32, sharded
  like q: T over `context`, B and K as `rules` map "batch" and "kv_heads".
  Dots take `dtype` inputs and accumulate in f32. `layout` applies to
  `ring` only; T must be divisible by c (2c for zigzag).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
  if CONTEXT_AXIS not in mesh.axis_names:
    raise ValueError(f"context_attention needs a mesh with a {CONTEXT_AXIS!r} "
                     f"axis (sharding.MeshConfig.context); got axes "
                     f"{mesh.axis_names}")
  c = mesh.shape[CONTEXT_AXIS]
  t = q_BxTxKxGxE.shape[1]
  chunks = 2 * c if impl == "ring" and layout == "zigzag" else c
  if t % chunks:
    raise ValueError(f"context-parallel attention ({impl}, {layout}): length "
                     f"{t} is not divisible by {chunks} (context axis {c})")
  b_axes, k_axes = _batch_and_head_axes(k_BxTxKxE.shape, mesh, rules)
  q_spec = P(b_axes, CONTEXT_AXIS, k_axes, None, None)
  kv_spec = P(b_axes, CONTEXT_AXIS, k_axes, None)
  seg_spec = P(b_axes, CONTEXT_AXIS)
  dtype = jnp.dtype(dtype)

  if impl == "allgather_kv":
    local = functools.partial(_allgather_local, dtype=dtype)
  else:
    core = _ring_core(c, layout, dtype)

    def local(q, k, v, seg):
      if layout == "contiguous" or c == 1:
        return core(q, k, v, seg)
      q, k, v, seg = (_to_zigzag(x, c) for x in (q, k, v, seg))
      return _from_zigzag(core(q, k, v, seg), c)

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                     out_specs=q_spec)
  return fn(q_BxTxKxGxE, k_BxTxKxE, v_BxTxKxE, segment_ids_BxT)


def _batch_and_head_axes(kv_shape: tuple[int, ...], mesh: Mesh,
                         rules: sharding.Rules) -> tuple:
  """The mesh axes `rules` give the B and K dims of a (B,T,K,E) key array
  (the shard_map splits those too, so each device keeps its rows and
  heads); refuses rules that put the context axis there."""
  b_axes, _, k_axes, _ = sharding.logical_to_spec(
      ("batch", None, "kv_heads", None), kv_shape, mesh, rules)
  for entry in (b_axes, k_axes):
    if CONTEXT_AXIS in ((entry,) if isinstance(entry, str) else entry or ()):
      raise ValueError(f"sharding rules map a batch or head dimension to the "
                       f"{CONTEXT_AXIS!r} mesh axis; it must split only the "
                       "length (logical axis 'length')")
  return b_axes, k_axes


# -- the model's hook ---------------------------------------------------------

MODEL_LAYOUT = "zigzag"


def model_attention(attention_impl: str, dtype: jnp.dtype,
                    length: int) -> AttentionFn | None:
  """The context-parallel attention the model uses at trace time, or None.

  Under an `activation_sharding` whose mesh has a context axis c > 1,
  attention_impl "auto" picks the zig-zag `ring` (and falls back to the
  default path, logged, when `length` is not divisible by 2c); "ring" or
  "allgather_kv" pick that formulation and raise without such a mesh.
  Other impls return None: their plain formulation runs, partitioned by
  GSPMD (which gathers what it needs).
  """
  active = sharding.active_activation_sharding()
  c = active[0].shape.get(CONTEXT_AXIS, 1) if active else 1
  explicit = attention_impl in IMPLS
  if c == 1:
    if explicit:
      raise ValueError(
          f"attention_impl={attention_impl!r} needs a mesh with a "
          f"{CONTEXT_AXIS!r} axis > 1 (MeshConfig.context) inside "
          "sharding.activation_sharding")
    return None
  if not explicit and attention_impl != "auto":
    return None
  impl = attention_impl if explicit else "ring"
  layout = MODEL_LAYOUT
  if length % (2 * c):
    if explicit:
      layout = "contiguous"  # the error, if any, comes from context_attention
    else:
      logging.info("length %d is not divisible by 2 * context (%d): "
                   "attention is not context-parallel", length, 2 * c)
      return None
  mesh, rules = active
  return functools.partial(context_attention, mesh=mesh, impl=impl,
                           layout=layout, dtype=dtype, rules=rules)
