"""HF import/export of the Qwen2, Qwen3, Mistral, Gemma and Mixtral families: logits
parity with transformers (of the model and of the sampler's KV-cache
forward), the export round trip, and the errors for what lifejax can't run.

Every model is a tiny random transformers model built here (float32).
Weights use a large init std, and biases and norm weights (which
transformers initializes to constants) are randomized too, so that a
lifejax that ignored them would fail the tolerance
(`test_randomized_weights_matter` checks that it would). The other family
features (q/k norm, embedding scale, GeGLU) change the function grossly.
"""

import functools


import jax
import numpy as np
import pytest
import torch
from flax import nnx

from lifejax.model import (hf_export, hf_format, hf_import, kv_cache,
                           sampling, transformer)
from lifejax.model.config import TransformerConfig

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # max |logit diff| vs transformers, float32
B, T = 2, 16
# Mistral's sliding window: the test sequences are exactly this long, the
# longest that windowed attention computes as full causal attention.
WINDOW = T

_SHAPE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, bos_token_id=None, eos_token_id=None,
              pad_token_id=None, initializer_range=0.25)
CONFIGS = {
    "qwen2": ("Qwen2Config", dict(_SHAPE, rope_theta=20000.0)),
    # head_dim 12 != hidden / heads = 8.
    "qwen3": ("Qwen3Config", dict(_SHAPE, head_dim=12)),
    "mistral": ("MistralConfig", dict(_SHAPE, sliding_window=WINDOW,
                                      num_key_value_heads=1)),
    # MQA, tied embeddings, head_dim 16 != 8.
    "gemma": ("GemmaConfig", dict(_SHAPE, num_key_value_heads=1, head_dim=16,
                                  tie_word_embeddings=True)),
    # A mixture of 4 experts, top-2 (HF Mixtral is dropless).
    "mixtral": ("MixtralConfig", dict(_SHAPE, num_local_experts=4,
                                      num_experts_per_tok=2,
                                      sliding_window=None)),
}
# The lifejax options each family must map to.
OPTIONS = {
    "qwen2": dict(qkv_bias=True),
    "qwen3": dict(qk_norm=True),
    "mistral": dict(sliding_window=WINDOW),
    "gemma": dict(norm_offset=1.0, scale_embeddings=True,
                  mlp_activation="gelu_tanh", tie_embeddings=True),
    "mixtral": dict(num_experts=4, experts_per_token=2),
}
MAX_DIFFS = {}


def _hf_model(name: str):
  cls_name, kwargs = CONFIGS[name]
  torch.manual_seed(0)
  cfg = getattr(transformers, cls_name)(**kwargs)
  model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, p in model.named_parameters():
      if key.endswith("bias"):
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
      elif key.endswith("norm.weight"):  # Gemma stores the offset from 1
        base = 0.0 if name == "gemma" else 1.0
        p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
  return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def _graphdef(cfg):
  graphdef, _ = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  return graphdef


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  """The jitted forward of `cfg`, compiled once per config and shape."""
  graphdef = _graphdef(cfg)
  return jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))


def _logits(cfg, params, tokens) -> np.ndarray:
  return np.asarray(_forward(cfg)(params, tokens))


def _check(key, got, ref):
  diff = float(np.max(np.abs(got - ref)))
  MAX_DIFFS[key] = max(MAX_DIFFS.get(key, 0.0), diff)
  assert diff < TOL, f"{key}: max |logit diff| {diff:.3g}"
  assert float(np.std(ref)) > 0.5, float(np.std(ref))  # a meaningful test


class Saved:
  """A saved HF model, its reference logits and the lifejax import."""

  def __init__(self, name, root):
    self.model = _hf_model(name)
    self.dir = str(root / name)
    self.model.save_pretrained(self.dir, safe_serialization=True)
    vocab = CONFIGS[name][1]["vocab_size"]
    self.tokens = np.random.default_rng(2).integers(0, vocab, (B, T),
                                                    np.int32)
    self.ref = _hf_logits(self.model, self.tokens)
    # A scanned layer loop compiles once per config instead of per layer.
    self.cfg, self.params = hf_import.load_hf_checkpoint(self.dir,
                                                         layer_loop="scan")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_families")
  yield {name: Saved(name, root) for name in CONFIGS}
  print("\nmax |logit diff| vs transformers:",
        {k: f"{v:.2e}" for k, v in sorted(MAX_DIFFS.items())})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_maps_family_options(saved, name):
  cfg = saved[name].cfg
  defaults = TransformerConfig()
  for field in ("qkv_bias", "qk_norm", "norm_offset", "scale_embeddings",
                "mlp_activation", "sliding_window", "tie_embeddings",
                "num_experts", "experts_per_token",
                "expert_capacity_factor"):
    want = OPTIONS[name].get(field, getattr(defaults, field))
    assert getattr(cfg, field) == want, field
  hf = CONFIGS[name][1]
  assert cfg.resolved_head_dim == hf.get("head_dim", 8)
  assert hf_format.family_of(cfg) == name
  n_hf = sum(p.numel() for p in saved[name].model.parameters())
  assert cfg.num_params() == n_hf


@pytest.mark.parametrize("name", list(CONFIGS))
def test_import_logits_match_transformers(saved, name):
  s = saved[name]
  _check(name, _logits(s.cfg, s.params, s.tokens), s.ref)


def _replaced(params, path, fn):
  """`params` with the leaf at `path` replaced by fn(leaf)."""
  if not path:
    return fn(params)
  return dict(params, **{path[0]: _replaced(params[path[0]], path[1:], fn)})


@pytest.mark.parametrize("name, path, fn", [
    # What lifejax would compute if it ignored the q/k/v biases, ...
    ("qwen2", ("layers", "attn", "bq"), np.zeros_like),
    ("qwen2", ("layers", "attn", "bv"), np.zeros_like),
    # ... the (randomized) q/k norm weights, ...
    ("qwen3", ("layers", "attn", "k_norm", "scale"), np.ones_like),
    # ... or Gemma's offset of 1 on its norm weights.
    ("gemma", ("layers", "mlp_norm", "scale"), lambda w: w - 1.0),
    ("gemma", ("final_norm", "scale"), lambda w: w - 1.0),
    # ... or routed tokens to other experts than Mixtral's router picks.
    ("mixtral", ("layers", "mlp", "w_router"), lambda w: w[..., ::-1]),
])
def test_randomized_weights_matter(saved, name, path, fn):
  """Parity fails when a feature's weights are ignored: the tolerance is
  meaningful (same config and shapes, so nothing is recompiled)."""
  s = saved[name]
  params = _replaced(s.params, path, lambda x: fn(np.asarray(x)))
  diff = np.max(np.abs(_logits(s.cfg, params, s.tokens) - s.ref))
  assert diff > 100 * TOL, (name, path, diff)


# Mistral decodes with the plain Llama path (tested in test_hf_llama.py and
# test_sampling.py, as is the decode loop itself).
@pytest.mark.parametrize("name", ["qwen2", "qwen3", "gemma", "mixtral"])
def test_kv_cache_forward_matches_transformers(saved, name):
  """The sampler's own forward (kv_cache.py) has the family's features: its
  prompt logits match transformers at every position."""
  s = saved[name]
  params = kv_cache.decode_params(s.cfg, s.params)
  positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
  logits, _ = jax.jit(functools.partial(kv_cache.prefill, s.cfg),
                      static_argnums=4)(params, s.tokens, positions,
                                        np.ones((B, T), np.int32), T)
  _check(f"{name}_kv_cache", np.asarray(logits), s.ref)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_round_trip(saved, name, tmp_path):
  s = saved[name]
  hf_export.save_hf_checkpoint(tmp_path, s.cfg, s.params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  assert type(reloaded) is type(s.model)
  want = s.model.state_dict()
  got = reloaded.state_dict()
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(),
                                  err_msg=key)
  _check(f"{name}_exported", _hf_logits(reloaded, s.tokens), s.ref)
  cfg2, params2 = hf_import.load_hf_checkpoint(tmp_path, layer_loop="scan")
  assert cfg2 == s.cfg
  jax.tree.map(np.testing.assert_array_equal, params2, s.params)


def test_sequence_longer_than_the_window_is_refused(saved):
  s = saved["mistral"]
  tokens = np.zeros((1, WINDOW + 1), np.int32)
  with pytest.raises(ValueError, match=f"sliding_window={WINDOW}"):
    _logits(s.cfg, s.params, tokens)
  # 8 prompt tokens and 10 new ones need 17 cache slots (the last new token
  # is never fed back).
  with pytest.raises(ValueError, match=f"sliding_window={WINDOW}"):
    sampling.generate(_graphdef(s.cfg), s.params, tokens[:, :8],
                      np.ones((1, 8), np.int32),
                      sampling.SamplingConfig(max_new_tokens=10))


def _hf_config(name, **changes):
  return {**CONFIGS[name][1], "model_type": name, **changes}


@pytest.mark.parametrize("name, changes, want", [
    ("qwen2", dict(use_sliding_window=True, max_window_layers=1,
                   sliding_window=64), 64),
    ("qwen2", dict(use_sliding_window=True, max_window_layers=2,
                   sliding_window=64), None),  # no layer slides
    ("qwen3", dict(sliding_window=64, layer_types=["full_attention"] * 2),
     None),
    ("qwen3", dict(sliding_window=64, layer_types=[
        "full_attention", "sliding_attention"]), 64),
    ("mistral", dict(sliding_window=None), None),
])
def test_sliding_window_from_config(name, changes, want):
  assert hf_format.config_from_hf(
      _hf_config(name, **changes)).sliding_window == want


@pytest.mark.parametrize("name, changes, message", [
    ("qwen3", dict(attention_bias=True), "attention_bias=true"),
    ("gemma", dict(attention_bias=True), "attention_bias=true"),
    ("gemma", dict(hidden_activation="relu"), "hidden_activation='relu'"),
    ("qwen2", dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ("gemma", dict(use_bidirectional_attention=True), "bidirectional"),
    ("qwen3", dict(layer_types=["full_attention", "chunked_attention"]),
     "chunked_attention"),
    ("mistral", dict(architectures=["LlamaForCausalLM"]),
     "MistralForCausalLM"),
    ("gemma2", {}, "model_type='gemma2'"),
])
def test_unsupported_configs_name_the_field(name, changes, message):
  hf = (_hf_config(name, **changes) if name in CONFIGS else
        _hf_config("gemma", model_type=name))
  with pytest.raises(hf_format.UnsupportedCheckpointError, match=message):
    hf_format.config_from_hf(hf)


def test_legacy_gemma_gelu_is_the_tanh_form():
  cfg = hf_format.config_from_hf(_hf_config("gemma", hidden_act="gelu"))
  assert cfg.mlp_activation == "gelu_tanh"


def test_export_refuses_options_no_family_has():
  cfg = TransformerConfig(vocab_size=64, qkv_bias=True, qk_norm=True)
  with pytest.raises(hf_format.UnsupportedCheckpointError,
                     match="qkv_bias.*qk_norm"):
    hf_format.config_to_hf(cfg)
  gemma_window = TransformerConfig(vocab_size=64, sliding_window=16,
                                   **OPTIONS["gemma"])
  with pytest.raises(hf_format.UnsupportedCheckpointError,
                     match="sliding_window=16"):
    hf_format.config_to_hf(gemma_window)


def test_mixtral_load_balancing_loss_matches_transformers(tmp_path):
  """One layer: lifejax's moe_aux_loss is HF Mixtral's aux_loss (HF pools
  the tokens of all layers before its product, lifejax averages per-layer
  losses, so they agree exactly only for one layer)."""
  cls_name, kwargs = CONFIGS["mixtral"]
  torch.manual_seed(0)
  hf_cfg = getattr(transformers, cls_name)(
      **dict(kwargs, num_hidden_layers=1, output_router_logits=True,
             router_aux_loss_coef=0.02))
  model = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  tokens = np.random.default_rng(3).integers(0, 96, (B, T), np.int32)
  with torch.no_grad():
    want = float(model(torch.tensor(tokens, dtype=torch.long),
                       output_router_logits=True).aux_loss)
  cfg, params = hf_import.load_hf_checkpoint(str(tmp_path))
  assert cfg.moe_aux_loss_coef == pytest.approx(0.02)
  graphdef = _graphdef(cfg)
  _, aux = jax.jit(lambda p, t: nnx.merge(graphdef, p).logits_and_aux(t))(
      params, tokens)
  np.testing.assert_allclose(float(aux["moe_aux_loss"]), want, rtol=1e-5)
  assert abs(want - 2.0) > 1e-3  # not the uniform-routing value k
