"""The HuggingFace Llama checkpoint format, as lifejax maps it.

File names, `config.json` <-> `TransformerConfig` (with the checks of what
lifejax can represent), and the tensor layout. `hf_import.py` reads
checkpoints with it, `hf_export.py` writes them. Weight layouts, with HF
linear weights stored (out, in):

  HF tensor (prefix model.layers.{i}.)  HF shape  lifejax path      shape
  model.embed_tokens.weight             (V, D)    embed             (V, D)
  self_attn.q_proj.weight               (H*E, D)  layers/attn/wq    (Y, D, H, E)
  self_attn.k_proj.weight, v_proj       (K*E, D)  .../wk, wv        (Y, D, K, E)
  self_attn.o_proj.weight               (D, H*E)  layers/attn/wo    (Y, H, E, D)
  input_layernorm.weight                (D,)      attn_norm/scale   (Y, D)
  post_attention_layernorm.weight       (D,)      mlp_norm/scale    (Y, D)
  mlp.gate_proj.weight, up_proj         (F, D)    mlp/w_gate, w_up  (Y, D, F)
  mlp.down_proj.weight                  (D, F)    mlp/w_down        (Y, F, D)
  model.norm.weight                     (D,)      final_norm/scale  (D,)
  lm_head.weight (absent when tied)     (V, D)    lm_head           (D, V)

Both sides use the rotate-half RoPE layout (pairs (i, i + E/2)), so q/k
projections map without a permutation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from lifejax.model.config import TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_ARCHITECTURE = "LlamaForCausalLM"
_MODEL_TYPES = ("llama",)
_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


class UnsupportedCheckpointError(ValueError):
  """The checkpoint is not a Llama architecture lifejax can represent."""


# -- configs ------------------------------------------------------------------


def read_hf_config(hf_dir: str | os.PathLike[str]) -> dict[str, Any]:
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no HuggingFace config.json")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
  """(rope_theta, scaling dict with rope_type) from either config dialect.

  transformers>=5 writes `rope_parameters` (theta inside); earlier versions
  write top-level `rope_theta` plus `rope_scaling` (type under `rope_type`
  or the older `type`).
  """
  params = hf.get("rope_parameters")
  if params:
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
  else:
    theta = hf.get("rope_theta", 10000.0)
    scaling = dict(hf.get("rope_scaling") or {})
  if "type" in scaling and "rope_type" not in scaling:
    scaling["rope_type"] = scaling["type"]
  return float(theta), scaling or None


def check_supported(hf: dict[str, Any]) -> None:
  """Raises UnsupportedCheckpointError naming every unsupported feature."""
  problems = []
  model_type = hf.get("model_type")
  if model_type not in _MODEL_TYPES:
    problems.append(f"model_type={model_type!r} (supported: {_MODEL_TYPES})")
  archs = hf.get("architectures")
  if archs and _ARCHITECTURE not in archs:
    problems.append(f"architectures={archs} (supported: [{_ARCHITECTURE!r}])")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      problems.append(f"{key}=true (lifejax projections have no bias)")
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    problems.append(f"hidden_act={act!r} (lifejax's MLP is SwiGLU: silu)")
  _, scaling = _rope(hf)
  rope_type = (scaling or {}).get("rope_type", "default")
  if rope_type not in _ROPE_TYPES:
    problems.append(f"rope type {rope_type!r} (supported: {_ROPE_TYPES})")
  elif rope_type == "llama3":
    missing = [k for k in _LLAMA3_KEYS if k not in scaling]
    if missing:
      problems.append(f"llama3 rope scaling without {missing}")
  if hf.get("quantization_config"):
    problems.append("quantization_config is set (quantized weights)")
  if problems:
    raise UnsupportedCheckpointError(
        "unsupported HuggingFace checkpoint: " + "; ".join(problems))


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
  """The TransformerConfig of a HF Llama config.json dict.

  `overrides` set non-shape fields (param_dtype, compute_dtype, remat_policy,
  max_seq_len, ...).
  """
  check_supported(hf)
  theta, scaling = _rope(hf)
  rope_scaling = None
  if scaling and scaling.get("rope_type", "default") == "llama3":
    rope_scaling = {k: (int(scaling[k]) if k.startswith("original") else
                        float(scaling[k])) for k in _LLAMA3_KEYS}
  heads = hf["num_attention_heads"]
  fields = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"],
      max_seq_len=hf.get("max_position_embeddings", 2048),
      rope_theta=theta,
      rope_scaling=rope_scaling,
      rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
  )
  fields.update(overrides)
  return TransformerConfig(**fields)


def check_llama(cfg: TransformerConfig) -> None:
  if cfg.smear_keys:
    raise UnsupportedCheckpointError(
        "TransformerConfig.smear_keys=True: smeared keys are not part of the "
        "Llama architecture, so this model has no HuggingFace export")


def config_to_hf(cfg: TransformerConfig, dtype: str = "float32",
                 **extra: Any) -> dict[str, Any]:
  """A config.json dict that transformers 4.x and 5.x both read.

  RoPE is written in both dialects (`rope_theta`/`rope_scaling` and
  `rope_parameters`): a 4.x reader ignores `rope_parameters`, 5.x prefers it.
  `extra` adds keys (e.g. bos_token_id, eos_token_id).
  """
  check_llama(cfg)
  scaling = cfg.rope_scaling_dict
  rope_scaling = dict(scaling, rope_type="llama3") if scaling else None
  rope_parameters = dict(rope_scaling or {"rope_type": "default"},
                         rope_theta=cfg.rope_theta)
  out = {
      "architectures": [_ARCHITECTURE],
      "model_type": "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.resolved_head_dim,
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.rms_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": rope_scaling,
      "rope_parameters": rope_parameters,
      "tie_word_embeddings": cfg.tie_embeddings,
      "hidden_act": "silu",
      "attention_bias": False,
      "mlp_bias": False,
      "torch_dtype": dtype,
      "dtype": dtype,
  }
  out.update(extra)
  return out


# -- the tensor map -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One parameter: lifejax value = hf.reshape(split).transpose(perm)."""

  path: tuple[str, ...]
  hf_name: str  # "{i}" stands for the layer index when per_layer
  hf_shape: tuple[int, ...]
  split: tuple[int, ...]
  perm: tuple[int, ...]
  per_layer: bool

  def to_lifejax(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(self.split).transpose(self.perm)

  def to_hf(self, y: np.ndarray) -> np.ndarray:
    return y.transpose(np.argsort(self.perm)).reshape(self.hf_shape)


def tensor_maps(cfg: TransformerConfig) -> list[TensorMap]:
  d, h, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads
  e, f, v = cfg.resolved_head_dim, cfg.mlp_dim, cfg.vocab_size
  pre = "model.layers.{i}."

  def layer(path, name, hf_shape, split, perm):
    return TensorMap(("layers",) + path, pre + name, hf_shape, split, perm,
                     True)

  maps = [
      TensorMap(("embed",), "model.embed_tokens.weight", (v, d), (v, d),
                (0, 1), False),
      layer(("attn", "wq"), "self_attn.q_proj.weight", (h * e, d), (h, e, d),
            (2, 0, 1)),
      layer(("attn", "wk"), "self_attn.k_proj.weight", (k * e, d), (k, e, d),
            (2, 0, 1)),
      layer(("attn", "wv"), "self_attn.v_proj.weight", (k * e, d), (k, e, d),
            (2, 0, 1)),
      layer(("attn", "wo"), "self_attn.o_proj.weight", (d, h * e), (d, h, e),
            (1, 2, 0)),
      layer(("attn_norm", "scale"), "input_layernorm.weight", (d,), (d,),
            (0,)),
      layer(("mlp_norm", "scale"), "post_attention_layernorm.weight", (d,),
            (d,), (0,)),
      layer(("mlp", "w_gate"), "mlp.gate_proj.weight", (f, d), (f, d),
            (1, 0)),
      layer(("mlp", "w_up"), "mlp.up_proj.weight", (f, d), (f, d), (1, 0)),
      layer(("mlp", "w_down"), "mlp.down_proj.weight", (d, f), (d, f),
            (1, 0)),
      TensorMap(("final_norm", "scale"), "model.norm.weight", (d,), (d,),
                (0,), False),
  ]
  if not cfg.tie_embeddings:
    maps.append(TensorMap(("lm_head",), "lm_head.weight", (v, d), (v, d),
                          (1, 0), False))
  return maps


def get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  """The value at `path` (a TensorMap's) in a nested params dict."""
  for p in path:
    tree = tree[p]
  return tree
