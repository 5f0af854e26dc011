"""The HuggingFace checkpoint format of the decoder families lifejax maps.

File names, `config.json` <-> `TransformerConfig` (with the checks of what
lifejax can represent), and the tensor layout. `hf_import.py` reads
checkpoints with it, `hf_export.py` writes them.

Families (model_type): llama, mistral, qwen2, qwen3, gemma and mixtral;
each is the Llama layout plus the `TransformerConfig` options in FAMILIES.
Weight layouts, with HF linear weights stored (out, in):

  HF tensor (prefix model.layers.{i}.)  HF shape  lifejax path      shape
  model.embed_tokens.weight             (V, D)    embed             (V, D)
  self_attn.q_proj.weight               (H*E, D)  layers/attn/wq    (Y, D, H, E)
  self_attn.k_proj.weight, v_proj       (K*E, D)  .../wk, wv        (Y, D, K, E)
  self_attn.o_proj.weight               (D, H*E)  layers/attn/wo    (Y, H, E, D)
  self_attn.q_proj.bias (qwen2)         (H*E,)    layers/attn/bq    (Y, H, E)
  self_attn.k_proj.bias, v_proj.bias    (K*E,)    .../bk, bv        (Y, K, E)
  self_attn.q_norm.weight (qwen3)       (E,)      .../q_norm/scale  (Y, E)
  self_attn.k_norm.weight (qwen3)       (E,)      .../k_norm/scale  (Y, E)
  input_layernorm.weight                (D,)      attn_norm/scale   (Y, D)
  post_attention_layernorm.weight       (D,)      mlp_norm/scale    (Y, D)
  mlp.gate_proj.weight, up_proj         (F, D)    mlp/w_gate, w_up  (Y, D, F)
  mlp.down_proj.weight                  (D, F)    mlp/w_down        (Y, F, D)
  model.norm.weight                     (D,)      final_norm/scale  (D,)
  lm_head.weight (absent when tied)     (V, D)    lm_head           (D, V)

Mixtral (mixture of experts, `num_experts` X = num_local_experts) replaces
the MLP rows by (prefix model.layers.{i}.block_sparse_moe.; HF's on-disk
names, which transformers 5 also writes although it fuses them in memory):

  gate.weight (the router)              (X, D)    mlp/w_router      (Y, D, X)
  experts.{j}.w1.weight (gate)          (F, D)    mlp/w_gate        (Y, X, D, F)
  experts.{j}.w3.weight (up)            (F, D)    mlp/w_up          (Y, X, D, F)
  experts.{j}.w2.weight (down)          (D, F)    mlp/w_down        (Y, X, F, D)

HF Mixtral routes as lifejax does (softmax over the experts, top-k,
renormalised) and never drops a token, so it maps to the dropless mode
(`expert_capacity_factor` None); `router_aux_loss_coef` is the
`moe_aux_loss_coef` when `output_router_logits` is set (HF adds the loss
only then), 0 otherwise.

Both sides use the rotate-half RoPE layout (pairs (i, i + E/2)), so q/k
projections map without a permutation. Gemma's norm weights are stored as
offsets from 1 on both sides (`norm_offset=1`), so they too map unchanged.
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

_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")
# HF activation names of the tanh-approximated GeLU ("gelu" is Gemma's
# legacy name for it; transformers reads it as the tanh form for Gemma only).
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new")


@dataclasses.dataclass(frozen=True)
class Family:
  """One HF decoder family: its class, its fixed `TransformerConfig`
  options, and the defaults of its config.json keys."""

  architecture: str
  options: dict[str, Any]
  tie_default: bool = False
  bias_key: str | None = "attention_bias"  # True = biases lifejax lacks
  windowed: bool = False  # may use sliding-window attention
  moe: bool = False  # a mixture of experts (lifejax num_experts > 0)


_LLAMA_OPTIONS = dict(qkv_bias=False, qk_norm=False, norm_offset=0.0,
                      scale_embeddings=False, mlp_activation="silu")
FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", _LLAMA_OPTIONS),
    "mistral": Family("MistralForCausalLM", _LLAMA_OPTIONS, bias_key=None,
                      windowed=True),
    # Qwen2's q/k/v projections always have biases, o_proj never.
    "qwen2": Family("Qwen2ForCausalLM", dict(_LLAMA_OPTIONS, qkv_bias=True),
                    bias_key=None, windowed=True),
    "qwen3": Family("Qwen3ForCausalLM", dict(_LLAMA_OPTIONS, qk_norm=True),
                    windowed=True),
    "gemma": Family("GemmaForCausalLM", dict(
        _LLAMA_OPTIONS, norm_offset=1.0, scale_embeddings=True,
        mlp_activation="gelu_tanh"), tie_default=True),
    "mixtral": Family("MixtralForCausalLM", _LLAMA_OPTIONS, bias_key=None,
                      windowed=True, moe=True),
}


class UnsupportedCheckpointError(ValueError):
  """The checkpoint is not an architecture lifejax can represent."""


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


def _activation(hf: dict[str, Any]) -> str | None:
  """The family's activation as a `mlp_activation` name (None: unsupported)."""
  if hf.get("model_type") == "gemma":
    # transformers 4.x prefers `hidden_activation`; "gelu" is Gemma's legacy
    # name for the tanh form (transformers reads it so).
    act = hf.get("hidden_activation") or hf.get("hidden_act",
                                                "gelu_pytorch_tanh")
    return "gelu_tanh" if act in _GELU_TANH + ("gelu",) else None
  return "silu" if hf.get("hidden_act", "silu") in ("silu", "swish") else None


def _window(hf: dict[str, Any]) -> int | None:
  """The sliding window if any layer uses one (HF's per-layer rules)."""
  window = hf.get("sliding_window")
  types = hf.get("layer_types")
  if types is not None:
    return window if "sliding_attention" in types else None
  if hf.get("model_type") in ("qwen2", "qwen3"):  # configs before layer_types
    slides = hf.get("use_sliding_window") and hf.get(
        "max_window_layers", 28) < hf["num_hidden_layers"]
    return window if slides else None
  return window if FAMILIES[hf["model_type"]].windowed else None


def check_supported(hf: dict[str, Any]) -> None:
  """Raises UnsupportedCheckpointError naming every unsupported feature."""
  problems = []
  model_type = hf.get("model_type")
  family = FAMILIES.get(model_type)
  if family is None:
    raise UnsupportedCheckpointError(
        f"unsupported HuggingFace checkpoint: model_type={model_type!r} "
        f"(supported: {tuple(FAMILIES)})")
  archs = hf.get("architectures")
  if archs and family.architecture not in archs:
    problems.append(f"architectures={archs} (supported for {model_type}: "
                    f"[{family.architecture!r}])")
  if family.bias_key and hf.get(family.bias_key):
    problems.append(f"{family.bias_key}=true (a {model_type} model with it "
                    "has an o_proj bias, which lifejax lacks)")
  if hf.get("mlp_bias"):
    problems.append("mlp_bias=true (lifejax's MLP has no bias)")
  if _activation(hf) is None:
    key = ("hidden_activation" if hf.get("hidden_activation") else
           "hidden_act")
    want = ("gelu_pytorch_tanh (GeGLU)" if model_type == "gemma" else
            "silu (SwiGLU)")
    problems.append(f"{key}={hf.get(key)!r} (lifejax's {model_type} MLP is "
                    f"{want})")
  types = set(hf.get("layer_types") or ())
  if types - {"full_attention", "sliding_attention"}:
    problems.append(f"layer_types {sorted(types)} (supported: "
                    "full_attention, sliding_attention)")
  if hf.get("use_bidirectional_attention"):
    problems.append("use_bidirectional_attention=true (lifejax is causal)")
  _, scaling = _rope(hf)
  rope_type = (scaling or {}).get("rope_type", "default")
  if rope_type not in _ROPE_TYPES:
    problems.append(f"rope type {rope_type!r} (supported: {_ROPE_TYPES})")
  elif rope_type == "llama3":
    missing = [k for k in _LLAMA3_KEYS if k not in scaling]
    if missing:
      problems.append(f"llama3 rope scaling without {missing}")
  if family.moe and hf.get("router_jitter_noise"):
    problems.append(f"router_jitter_noise={hf['router_jitter_noise']} "
                    "(lifejax's router has no jitter)")
  if hf.get("quantization_config"):
    problems.append("quantization_config is set (quantized weights)")
  if problems:
    raise UnsupportedCheckpointError(
        "unsupported HuggingFace checkpoint: " + "; ".join(problems))


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
  """The TransformerConfig of a HF config.json dict of a family in FAMILIES.

  `overrides` set non-shape fields (param_dtype, compute_dtype, remat_policy,
  max_seq_len, ...).
  """
  check_supported(hf)
  family = FAMILIES[hf["model_type"]]
  theta, scaling = _rope(hf)
  rope_scaling = None
  if scaling and scaling.get("rope_type", "default") == "llama3":
    rope_scaling = {k: (int(scaling[k]) if k.startswith("original") else
                        float(scaling[k])) for k in _LLAMA3_KEYS}
  heads = hf["num_attention_heads"]
  tie = hf.get("tie_word_embeddings")
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
      tie_embeddings=bool(family.tie_default if tie is None else tie),
      sliding_window=_window(hf),
      **family.options,
  )
  if family.moe:
    fields.update(
        num_experts=hf.get("num_local_experts", 8),
        experts_per_token=hf.get("num_experts_per_tok", 2),
        expert_capacity_factor=None,
        moe_aux_loss_coef=(float(hf.get("router_aux_loss_coef", 0.001))
                           if hf.get("output_router_logits") else 0.0))
  fields.update(overrides)
  return TransformerConfig(**fields)


def family_of(cfg: TransformerConfig) -> str:
  """The HF family (model_type) whose architecture `cfg` is; raises
  UnsupportedCheckpointError naming the fields that no family has."""
  if cfg.smear_keys:
    raise UnsupportedCheckpointError(
        "TransformerConfig.smear_keys=True: smeared keys are not part of any "
        "HuggingFace architecture lifejax maps, so this model has no "
        "HuggingFace export")
  if cfg.num_experts and not cfg.dropless:
    raise UnsupportedCheckpointError(
        f"TransformerConfig.expert_capacity_factor="
        f"{cfg.expert_capacity_factor}: HF Mixtral never drops tokens, so it "
        "would compute another function; export with "
        "expert_capacity_factor=None (the same params, run dropless)")
  options = {k: getattr(cfg, k) for k in _LLAMA_OPTIONS}
  # Dict order decides between llama and mistral: windowless is llama.
  for name, family in FAMILIES.items():
    if (options == family.options and family.moe == bool(cfg.num_experts)
        and (cfg.sliding_window is None or family.windowed)):
      return name
  raise UnsupportedCheckpointError(
      f"TransformerConfig options {options} with sliding_window="
      f"{cfg.sliding_window}, num_experts={cfg.num_experts} match no "
      "HuggingFace family lifejax exports "
      f"(each family's options: "
      f"{ {n: f.options for n, f in FAMILIES.items()} })")


def config_to_hf(cfg: TransformerConfig, dtype: str = "float32",
                 **extra: Any) -> dict[str, Any]:
  """A config.json dict of `family_of(cfg)` that transformers 4.x and 5.x
  both read.

  RoPE is written in both dialects (`rope_theta`/`rope_scaling` and
  `rope_parameters`): a 4.x reader ignores `rope_parameters`, 5.x prefers it.
  `extra` adds keys (e.g. bos_token_id, eos_token_id).
  """
  model_type = family_of(cfg)
  scaling = cfg.rope_scaling_dict
  rope_scaling = dict(scaling, rope_type="llama3") if scaling else None
  rope_parameters = dict(rope_scaling or {"rope_type": "default"},
                         rope_theta=cfg.rope_theta)
  act = ("gelu_pytorch_tanh" if cfg.mlp_activation == "gelu_tanh" else
         cfg.mlp_activation)
  out = {
      "architectures": [FAMILIES[model_type].architecture],
      "model_type": model_type,
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
      "hidden_act": act,
      "attention_bias": False,
      "mlp_bias": False,
      "torch_dtype": dtype,
      "dtype": dtype,
  }
  if model_type == "gemma":
    out["hidden_activation"] = act  # the key transformers 4.x reads
  if model_type in ("qwen2", "qwen3"):
    # Every layer slides (or none does), as lifejax's one window says.
    slides = cfg.sliding_window is not None
    out.update(use_sliding_window=slides, sliding_window=cfg.sliding_window,
               max_window_layers=0 if slides else cfg.num_layers,
               layer_types=[("sliding_attention" if slides else
                             "full_attention")] * cfg.num_layers)
  elif model_type in ("mistral", "mixtral"):
    out["sliding_window"] = cfg.sliding_window
  if model_type == "mixtral":
    out.update(num_local_experts=cfg.num_experts,
               num_experts_per_tok=cfg.experts_per_token,
               router_aux_loss_coef=cfg.moe_aux_loss_coef,
               output_router_logits=cfg.moe_aux_loss_coef > 0,
               router_jitter_noise=0.0)
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
  per_expert: bool = False  # "{j}" in hf_name stands for the expert index

  def to_lifejax(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(self.split).transpose(self.perm)

  def to_hf(self, y: np.ndarray) -> np.ndarray:
    return y.transpose(np.argsort(self.perm)).reshape(self.hf_shape)


def hf_names(m: TensorMap, cfg: TransformerConfig
             ) -> list[tuple[tuple[int, ...], str]]:
  """(index into the lifejax param, HF name) of each HF tensor of `m`: ()
  for a global one, (layer,) or (layer, expert) for stacked ones."""
  if not m.per_layer:
    return [((), m.hf_name)]
  if not m.per_expert:
    return [((i,), m.hf_name.format(i=i)) for i in range(cfg.num_layers)]
  return [((i, j), m.hf_name.format(i=i, j=j))
          for i in range(cfg.num_layers) for j in range(cfg.num_experts)]


def tensor_maps(cfg: TransformerConfig) -> list[TensorMap]:
  d, h, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads
  e, f, v = cfg.resolved_head_dim, cfg.mlp_dim, cfg.vocab_size
  pre = "model.layers.{i}."

  def layer(path, name, hf_shape, split, perm, per_expert=False):
    return TensorMap(("layers",) + path, pre + name, hf_shape, split, perm,
                     True, per_expert)

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
  attn = maps[1:5]
  if cfg.qkv_bias:
    attn += [layer(("attn", b), f"self_attn.{p}_proj.bias", (n * e,), (n, e),
                   (0, 1)) for b, p, n in (("bq", "q", h), ("bk", "k", k),
                                            ("bv", "v", k))]
  if cfg.qk_norm:
    attn += [layer(("attn", f"{p}_norm", "scale"), f"self_attn.{p}_norm.weight",
                   (e,), (e,), (0,)) for p in ("q", "k")]
  if cfg.num_experts:
    x, moe = cfg.num_experts, "block_sparse_moe."
    maps[7:10] = [
        layer(("mlp", "w_router"), moe + "gate.weight", (x, d), (x, d),
              (1, 0)),
        layer(("mlp", "w_gate"), moe + "experts.{j}.w1.weight", (f, d),
              (f, d), (1, 0), True),
        layer(("mlp", "w_up"), moe + "experts.{j}.w3.weight", (f, d),
              (f, d), (1, 0), True),
        layer(("mlp", "w_down"), moe + "experts.{j}.w2.weight", (d, f),
              (d, f), (1, 0), True),
    ]
  maps = maps[:1] + attn + maps[5:]
  if not cfg.tie_embeddings:
    maps.append(TensorMap(("lm_head",), "lm_head.weight", (v, d), (v, d),
                          (1, 0), False))
  return maps


def get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  """The value at `path` (a TensorMap's) in a nested params dict."""
  for p in path:
    tree = tree[p]
  return tree
