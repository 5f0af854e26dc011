"""The decoder against an independent float64 numpy reference, plus the
properties a decoder LM must have: causality, packing isolation, remat
policies that change memory but not gradients, and the precision policy.

Params are random numbers poured into the model's abstract shapes (no init
compile), scaled so that every block changes the residual stream visibly
and attention is far from uniform.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.losses.lm import lm_loss, token_cross_entropy
from lifejax.model import transformer
from lifejax.model.config import REMAT_POLICIES, TransformerConfig

CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)


def random_params(cfg: TransformerConfig, seed: int = 0):
  """(graphdef, params pure dict) with O(1) activations everywhere."""
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = str(path[-1].key)
    if name == "scale":  # RMSNorm gains: around 1, but not 1
      v = 1.0 + 0.2 * rng.standard_normal(x.shape)
    elif name == "embed":
      v = rng.standard_normal(x.shape)
    elif name == "smear":  # own-key share sigmoid(v) spread over (0.1, 0.9)
      v = 2.0 * rng.standard_normal(x.shape)
    else:  # (..., fan_in, ...) matrices: fan-in scaled
      fan_in = {"wq": cfg.d_model, "wk": cfg.d_model, "wv": cfg.d_model,
                "wo": cfg.num_heads * cfg.resolved_head_dim,
                "w_gate": cfg.d_model, "w_up": cfg.d_model,
                "w_down": cfg.mlp_dim, "lm_head": cfg.d_model}[name]
      v = rng.standard_normal(x.shape) / math.sqrt(fan_in)
    return jnp.asarray(v, x.dtype)

  params = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(abstract))
  return graphdef, params


def forward(graphdef, params, tokens, positions=None, segment_ids=None):
  return nnx.merge(graphdef, params)(tokens, positions, segment_ids)


# -- an independent reference (float64 numpy, HF-Llama formulation) ----------


def ref_inv_freq(cfg: TransformerConfig) -> np.ndarray:
  e = cfg.resolved_head_dim
  inv = [1.0 / cfg.rope_theta ** (i / e) for i in range(0, e, 2)]
  s = cfg.rope_scaling_dict
  if s:  # Llama-3.1 frequency scaling, written per frequency
    old = s["original_max_position_embeddings"]
    lo, hi, factor = s["low_freq_factor"], s["high_freq_factor"], s["factor"]
    out = []
    for f in inv:
      wavelen = 2 * math.pi / f
      if wavelen < old / hi:
        out.append(f)
      elif wavelen > old / lo:
        out.append(f / factor)
      else:
        smooth = (old / wavelen - lo) / (hi - lo)
        out.append((1 - smooth) * f / factor + smooth * f)
    inv = out
  return np.asarray(inv, np.float64)


def ref_rope(x_BTNE: np.ndarray, pos_BT: np.ndarray, inv: np.ndarray):
  freqs = pos_BT[:, :, None].astype(np.float64) * inv[None, None, :]
  emb = np.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  half = x_BTNE.shape[-1] // 2
  rotated = np.concatenate([-x_BTNE[..., half:], x_BTNE[..., :half]], axis=-1)
  return x_BTNE * np.cos(emb) + rotated * np.sin(emb)


def ref_rms(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def ref_logits(cfg: TransformerConfig, params, tokens, positions=None,
               segment_ids=None) -> np.ndarray:
  """Plain multi-head attention with K/V heads repeated H/K times."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  tokens = np.asarray(tokens)
  b, t = tokens.shape
  positions = (np.tile(np.arange(t), (b, 1)) if positions is None
               else np.asarray(positions))
  segment_ids = (np.ones((b, t), np.int64) if segment_ids is None
                 else np.asarray(segment_ids))
  h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
  inv = ref_inv_freq(cfg)
  allowed = (np.tril(np.ones((t, t), bool))[None]
             & (segment_ids[:, :, None] == segment_ids[:, None, :]))
  x = p["embed"][tokens]
  for layer in range(cfg.num_layers):
    lp = jax.tree.map(lambda a: a[layer], p["layers"])
    y = ref_rms(x, lp["attn_norm"]["scale"], cfg.rms_eps)
    q = ref_rope(np.einsum("btd,dhe->bthe", y, lp["attn"]["wq"]), positions,
                 inv)
    kk = ref_rope(np.einsum("btd,dke->btke", y, lp["attn"]["wk"]), positions,
                  inv)
    if cfg.smear_keys:  # mix in the previous key of the same document
      own = 1.0 / (1.0 + np.exp(-lp["attn"]["smear"]))
      smeared = own[None, None, :, None] * kk
      for i in range(1, t):
        same = segment_ids[:, i] == segment_ids[:, i - 1]
        smeared[same, i] += (1.0 - own)[None, :, None] * kk[same, i - 1]
      kk = smeared
    v = np.einsum("btd,dke->btke", y, lp["attn"]["wv"])
    kk, v = np.repeat(kk, h // k, axis=2), np.repeat(v, h // k, axis=2)
    s = np.einsum("bthe,bshe->bhts", q, kk) / math.sqrt(e)
    s = np.where(allowed[:, None], s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    probs = s / s.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshe->bthe", probs, v)
    x = x + np.einsum("bthe,hed->btd", o, lp["attn"]["wo"])
    y = ref_rms(x, lp["mlp_norm"]["scale"], cfg.rms_eps)
    gate = y @ lp["mlp"]["w_gate"]
    x = x + (gate / (1 + np.exp(-gate)) * (y @ lp["mlp"]["w_up"])
             ) @ lp["mlp"]["w_down"]
  x = ref_rms(x, p["final_norm"]["scale"], cfg.rms_eps)
  head = p["embed"].T if cfg.tie_embeddings else p["lm_head"]
  return x @ head


@pytest.mark.parametrize("cfg", [
    CFG,  # GQA: 4 query heads share 2 kv heads
    dataclasses.replace(  # MQA, tied embeddings, Llama-3 RoPE scaling
        CFG, num_kv_heads=1, tie_embeddings=True,
        rope_scaling={"factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}),
    dataclasses.replace(CFG, smear_keys=True),
], ids=["gqa", "mqa_tied_scaled_rope", "smeared_keys"])
def test_logits_match_reference(cfg: TransformerConfig):
  graphdef, params = random_params(cfg, seed=1)
  rng = np.random.default_rng(2)
  b, t = 2, 12
  tokens = rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
  # Row 0: one document, positions with gaps (RoPE is shift-invariant, so
  # only uneven steps show that positions are really used). Row 1: two
  # packed documents with positions restarting at 0.
  positions = np.stack([np.cumsum(rng.integers(1, 4, t)) - 1,
                        np.r_[np.arange(5), np.arange(t - 5)]]).astype(np.int32)
  segment_ids = np.stack([np.ones(t), np.r_[np.ones(5), 2 * np.ones(t - 5)]]
                         ).astype(np.int32)
  got = forward(graphdef, params, tokens, positions, segment_ids)
  want = ref_logits(cfg, params, tokens, positions, segment_ids)
  assert got.shape == (b, t, cfg.vocab_size) and got.dtype == jnp.float32
  assert np.std(want) > 0.3  # not a degenerate near-zero comparison
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_tied_embeddings_have_no_head_and_use_embed_transposed():
  cfg = dataclasses.replace(CFG, tie_embeddings=True)
  graphdef, params = random_params(cfg)
  assert "lm_head" not in params
  assert "lm_head" in random_params(CFG)[1]
  n_tied = sum(x.size for x in jax.tree.leaves(params))
  assert n_tied == cfg.num_params()
  assert n_tied == CFG.num_params() - CFG.d_model * CFG.vocab_size
  model = nnx.merge(graphdef, params)
  tokens = np.arange(10, dtype=np.int32)[None]
  h = np.asarray(model.hidden(tokens), np.float64)
  np.testing.assert_allclose(
      np.asarray(model(tokens)), h @ np.asarray(params["embed"], np.float64).T,
      rtol=1e-5, atol=1e-5)


def test_num_params_counts_stored_params():
  for cfg in (CFG, dataclasses.replace(CFG, num_kv_heads=4, mlp_dim=48),
              dataclasses.replace(CFG, smear_keys=True)):
    _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(abstract)) == cfg.num_params()


def test_causal_no_gradient_from_future_positions():
  """d loss_t / d x_s == 0 exactly for s > t, and != 0 for s <= t.

  Every position gets a distinct token, so row tokens[s] of the (untied)
  embedding table is the input embedding of position s alone: the gradient
  w.r.t. that row is the gradient w.r.t. position s's input.
  """
  graphdef, params = random_params(CFG, seed=3)
  t = 12
  tokens = np.random.default_rng(0).permutation(CFG.vocab_size)[:t][None]
  targets = np.random.default_rng(1).integers(0, CFG.vocab_size, (1, t))
  tokens, targets = tokens.astype(np.int32), targets.astype(np.int32)

  def per_position_loss(embed):
    p = dict(params, embed=embed)
    nll, _ = token_cross_entropy(forward(graphdef, p, tokens), targets)
    return nll[0]  # (T,)

  jac_TxVxD = jax.jit(jax.jacrev(per_position_loss))(params["embed"])
  jac_TxTxD = np.asarray(jac_TxVxD)[:, tokens[0], :]  # [loss t, input s, D]
  norms = np.abs(jac_TxTxD).max(-1)
  future = np.triu(np.ones((t, t), bool), k=1)
  assert np.all(norms[future] == 0.0), np.argwhere(future & (norms != 0))
  assert np.all(norms[~future] > 1e-6), "the past must influence the loss"


@pytest.mark.parametrize("smear_keys", [False, True])
def test_packed_document_logits_equal_unpacked(smear_keys):
  cfg = dataclasses.replace(CFG, smear_keys=smear_keys)
  graphdef, params = random_params(cfg, seed=4)
  rng = np.random.default_rng(5)
  a = rng.integers(0, CFG.vocab_size, 5).astype(np.int32)
  b = rng.integers(0, CFG.vocab_size, 11).astype(np.int32)

  @jax.jit
  def run(p):
    packed = forward(graphdef, p, np.r_[a, b][None],
                     np.r_[np.arange(5), np.arange(11)][None].astype(np.int32),
                     np.r_[np.ones(5), 2 * np.ones(11)][None].astype(np.int32))
    return packed, forward(graphdef, p, a[None]), forward(graphdef, p, b[None])

  packed, alone_a, alone_b = run(params)
  np.testing.assert_allclose(np.asarray(packed[0, :5]), np.asarray(alone_a[0]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(packed[0, 5:]), np.asarray(alone_b[0]),
                             rtol=1e-5, atol=1e-5)


# -- remat policies ------------------------------------------------------------


def _all_eqns(jaxpr, acc):
  for eqn in jaxpr.eqns:
    acc.append(eqn)
    for sub in jex.core.jaxprs_in_params(eqn.params):
      _all_eqns(sub, acc)
  return acc


@pytest.fixture(scope="module")
def remat_grads():
  """Gradients for every named policy, computed in one compiled program."""
  _, params = random_params(CFG, seed=6)
  rng = np.random.default_rng(7)
  batch = {"tokens": rng.integers(0, CFG.vocab_size, (2, 16)).astype(np.int32),
           "targets": rng.integers(0, CFG.vocab_size, (2, 16)).astype(np.int32),
           "loss_mask": np.ones((2, 16), np.float32)}

  def loss_for(policy):
    graphdef, _ = random_params(dataclasses.replace(CFG, remat_policy=policy))

    def loss(p):
      logits = forward(graphdef, p, batch["tokens"])
      return lm_loss(logits, batch["targets"], batch["loss_mask"])[0]
    return loss

  policies = sorted(REMAT_POLICIES)
  losses = {name: loss_for(name) for name in policies}
  grads = jax.jit(lambda p: {n: jax.grad(f)(p) for n, f in losses.items()}
                  )(params)
  jaxprs = {n: _all_eqns(jax.make_jaxpr(f)(params).jaxpr, [])
            for n, f in losses.items()}
  return grads, jaxprs


@pytest.mark.parametrize("policy", sorted(set(REMAT_POLICIES) - {"none"}))
def test_remat_policy_gradients_equal_no_remat(remat_grads, policy: str):
  grads, jaxprs = remat_grads
  # The named policy is really applied to the layer body...
  remats = [e for e in jaxprs[policy] if e.primitive.name.startswith(
      ("remat", "checkpoint"))]
  assert len(remats) == 1 and remats[0].params["policy"] is (
      REMAT_POLICIES[policy])
  # ...and leaves the gradients of the un-rematerialized model unchanged, up
  # to f32 round-off (recomputation may fuse and order ops differently).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max()),
               grads[policy], grads["none"])


def test_no_remat_and_checkpoint_names_present(remat_grads):
  _, jaxprs = remat_grads
  assert not [e for e in jaxprs["none"] if e.primitive.name.startswith(
      ("remat", "checkpoint"))]
  # save_attn_mlp_out keeps only these names: both must be tagged.
  names = {e.params["name"] for e in jaxprs["none"]
           if e.primitive.name == "name"}
  assert {"attn_out", "mlp_out"} <= names


# -- precision policy ----------------------------------------------------------


def test_bf16_compute_close_to_f32_and_output_dtype():
  _, params = random_params(CFG, seed=8)
  rng = np.random.default_rng(9)
  tokens = rng.integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)
  targets = rng.integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)
  mask = np.ones((2, 16), np.float32)
  policies = {  # (compute_dtype, output_dtype)
      "f32": ("float32", "float32"),
      "bf16": ("bfloat16", "bfloat16"),
      "bf16_f32_out": ("bfloat16", "float32")}
  graphdefs = {k: random_params(dataclasses.replace(
      CFG, compute_dtype=c, output_dtype=o))[0] for k, (c, o) in
      policies.items()}

  def loss(graphdef, p):
    logits = forward(graphdef, p, tokens)
    return lm_loss(logits, targets, mask)[0], logits

  # One program for all policies: compiles are the cost here.
  out = jax.jit(lambda p: {k: loss(g, p) for k, g in graphdefs.items()})(
      params)
  (l32, logits32), (l16, logits16) = out["f32"], out["bf16"]
  assert logits32.dtype == jnp.float32 and logits16.dtype == jnp.bfloat16
  assert out["bf16_f32_out"][1].dtype == jnp.float32
  # bf16 compute really happened (not silently f32) and stays close.
  assert not np.array_equal(np.asarray(logits16, np.float32),
                            np.asarray(logits32))
  assert not np.array_equal(np.asarray(out["bf16_f32_out"][1]),
                            np.asarray(logits32))
  np.testing.assert_allclose(float(l16), float(l32), rtol=2e-2)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_heads": 4, "num_kv_heads": 3}, "multiple of num_kv_heads"),
    ({"remat_policy": "some"}, "unknown remat_policy"),
    ({"compute_dtype": "float8"}, "unknown dtype"),
    ({"d_model": 30}, "not divisible by num_heads"),
])
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **kwargs)
