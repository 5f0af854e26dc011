"""HuggingFace Llama checkpoints <-> lifejax configs and parameters.

Import reads `config.json` and safetensors (one file, or shards listed in
`model.safetensors.index.json`) directly: no pickle, no torch, no
transformers. Export writes files that `LlamaForCausalLM.from_pretrained`
loads. Weight layouts, with HF linear weights stored (out, in):

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

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from lifejax import sharding
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig, to_dtype

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_ARCHITECTURE = "LlamaForCausalLM"
_MODEL_TYPES = ("llama",)
_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")
# Tensors some exporters store that carry no learned state.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_NP_DTYPES = {"float32": np.dtype(np.float32),
              "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}


class UnsupportedCheckpointError(ValueError):
  """The checkpoint is not a Llama architecture lifejax can represent."""


class MissingTensorError(ValueError):
  """A tensor the config requires is not in the checkpoint files."""


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


def _check_llama(cfg: TransformerConfig) -> None:
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
  _check_llama(cfg)
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
class _TensorMap:
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


def _tensor_maps(cfg: TransformerConfig) -> list[_TensorMap]:
  d, h, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads
  e, f, v = cfg.resolved_head_dim, cfg.mlp_dim, cfg.vocab_size
  pre = "model.layers.{i}."

  def layer(path, name, hf_shape, split, perm):
    return _TensorMap(("layers",) + path, pre + name, hf_shape, split, perm,
                      True)

  maps = [
      _TensorMap(("embed",), "model.embed_tokens.weight", (v, d), (v, d),
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
      _TensorMap(("final_norm", "scale"), "model.norm.weight", (d,), (d,),
                 (0,), False),
  ]
  if not cfg.tie_embeddings:
    maps.append(_TensorMap(("lm_head",), "lm_head.weight", (v, d), (v, d),
                           (1, 0), False))
  return maps


def _hf_names(m: _TensorMap, num_layers: int) -> list[str]:
  if not m.per_layer:
    return [m.hf_name]
  return [m.hf_name.format(i=i) for i in range(num_layers)]


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


# -- reading ------------------------------------------------------------------


class SafetensorsReader(contextlib.AbstractContextManager):
  """Reads named tensors from a checkpoint directory's safetensors file(s).

  Files are memory-mapped by safetensors; a tensor is copied into host memory
  only when read. bf16 tensors come back as ml_dtypes.bfloat16 arrays.
  """

  def __init__(self, hf_dir: str | os.PathLike[str]):
    self.dir = os.fspath(hf_dir)
    index = os.path.join(self.dir, INDEX_FILE)
    single = os.path.join(self.dir, WEIGHTS_FILE)
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        self.weight_map: dict[str, str] = json.load(f)["weight_map"]
      self.source = INDEX_FILE
    elif os.path.isfile(single):
      with safe_open(single, framework="numpy") as f:
        self.weight_map = {name: WEIGHTS_FILE for name in f.keys()}
      self.source = WEIGHTS_FILE
    else:
      found = sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []
      pickled = [n for n in found if n.endswith((".bin", ".pt", ".pth"))]
      hint = (f" (found {pickled}: pickled weights are not read; re-save them "
              "with safe_serialization=True)") if pickled else ""
      raise FileNotFoundError(
          f"{self.dir}: neither {WEIGHTS_FILE} nor {INDEX_FILE}{hint}")
    self._stack = contextlib.ExitStack()
    self._files: dict[str, Any] = {}

  def _file(self, filename: str) -> Any:
    if filename not in self._files:
      path = os.path.join(self.dir, filename)
      if not os.path.isfile(path):
        raise MissingTensorError(
            f"{self.dir}: {self.source} lists {filename}, which does not exist")
      self._files[filename] = self._stack.enter_context(
          safe_open(path, framework="numpy"))
    return self._files[filename]

  def names(self) -> set[str]:
    return set(self.weight_map)

  def read(self, name: str) -> np.ndarray:
    filename = self.weight_map.get(name)
    if filename is None:
      where = (f"{INDEX_FILE}'s weight_map" if self.source == INDEX_FILE
               else WEIGHTS_FILE)
      raise MissingTensorError(
          f"{self.dir}: tensor {name!r} is not in {where} "
          f"({len(self.weight_map)} tensors)")
    f = self._file(filename)
    if name not in f.keys():
      raise MissingTensorError(
          f"{self.dir}: tensor {name!r} is listed for {filename} but that file "
          "does not contain it")
    return f.get_tensor(name)

  def __exit__(self, *exc: Any) -> None:
    self._stack.close()


def param_shardings(cfg: TransformerConfig, mesh: Mesh,
                    rules: sharding.Rules = sharding.DEFAULT_RULES) -> Any:
  """NamedShardings of the params pure dict, from the model's logical axes."""
  _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  return sharding.named(mesh, specs)


def _place(host: np.ndarray, target: NamedSharding | None) -> jax.Array:
  if target is None:
    return jax.device_put(host)
  # Each device (of this process only) receives just its slice.
  return jax.make_array_from_callback(host.shape, target,
                                      lambda idx: host[idx])


def load_hf_params(hf_dir: str | os.PathLike[str], cfg: TransformerConfig,
                   shardings: Any = None) -> dict[str, Any]:
  """Params pure dict (layout above) in `cfg.param_dtype`.

  shardings: optional pure dict of NamedShardings (see `param_shardings`);
  each stacked (Y, ...) tensor is then placed straight into its sharding.
  Host memory peaks at one stacked parameter. Raises MissingTensorError
  naming the tensor and file, ValueError on a shape mismatch, and
  UnsupportedCheckpointError on tensors the architecture does not have.
  """
  dtype = np.dtype(to_dtype(cfg.param_dtype))
  maps = _tensor_maps(cfg)
  params: dict[str, Any] = {}
  with SafetensorsReader(hf_dir) as reader:
    expected = {n for m in maps for n in _hf_names(m, cfg.num_layers)}
    if cfg.tie_embeddings:
      expected.add("lm_head.weight")  # some exporters store the tied copy
    unexpected = sorted(n for n in reader.names() - expected
                        if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
      raise UnsupportedCheckpointError(
          f"{hf_dir}: tensors a Llama model of this config does not have: "
          f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for m in maps:
      names = _hf_names(m, cfg.num_layers)
      out_shape = tuple(m.split[p] for p in m.perm)
      host = np.empty(((len(names),) if m.per_layer else ()) + out_shape,
                      dtype)
      for i, name in enumerate(names):
        x = reader.read(name)
        if tuple(x.shape) != m.hf_shape:
          raise ValueError(
              f"{hf_dir}: tensor {name!r} has shape {tuple(x.shape)}, the "
              f"config implies {m.hf_shape}")
        host[i if m.per_layer else ...] = m.to_lifejax(x).astype(dtype)
      target = _get(shardings, m.path) if shardings is not None else None
      _set(params, m.path, _place(host, target))
      del host
  return params


def load_hf_checkpoint(
    hf_dir: str | os.PathLike[str], *, mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES, shardings: Any = None,
    **config_overrides: Any) -> tuple[TransformerConfig, dict[str, Any]]:
  """(config, params) of a HF Llama checkpoint directory.

  With `mesh`, params are placed by the logical-axis `rules`; `shardings`
  (a pure dict of NamedShardings) takes precedence. Without either they go
  to the default device.
  """
  cfg = config_from_hf(read_hf_config(hf_dir), **config_overrides)
  if shardings is None and mesh is not None:
    shardings = param_shardings(cfg, mesh, rules)
  return cfg, load_hf_params(hf_dir, cfg, shardings)


# -- writing ------------------------------------------------------------------


def _ordered(cfg: TransformerConfig
             ) -> list[tuple[str, _TensorMap, int | None]]:
  """(HF name, map, layer) in HF file order: embed, layers, norm, lm_head."""
  maps = _tensor_maps(cfg)
  out: list[tuple[str, _TensorMap, int | None]] = [
      (maps[0].hf_name, maps[0], None)]
  for i in range(cfg.num_layers):
    out += [(m.hf_name.format(i=i), m, i) for m in maps if m.per_layer]
  out += [(m.hf_name, m, None) for m in maps[1:] if not m.per_layer]
  return out


def hf_tensors(cfg: TransformerConfig, params: dict[str, Any],
               dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array) pairs in HF file order, converted one at a time.

  dtype: output dtype name ('float32', 'bfloat16', 'float16'); None keeps
  each parameter's own dtype.
  """
  out = None if dtype is None else _np_dtype(dtype)
  for name, m, i in _ordered(cfg):
    value = _get(params, m.path)
    y = np.asarray(jax.device_get(value if i is None else value[i]))
    yield name, np.ascontiguousarray(m.to_hf(y).astype(out or y.dtype))


def _np_dtype(name: str) -> np.dtype:
  if name not in _NP_DTYPES:
    raise ValueError(f"dtype {name!r}: expected one of {list(_NP_DTYPES)}")
  return _NP_DTYPES[name]


def save_hf_checkpoint(hf_dir: str | os.PathLike[str], cfg: TransformerConfig,
                       params: dict[str, Any], *, dtype: str | None = None,
                       max_shard_size: int = 5 * 2**30,
                       config_extra: dict[str, Any] | None = None,
                       overwrite: bool = False) -> list[str]:
  """Writes config.json + safetensors that LlamaForCausalLM loads.

  dtype: dtype of the written tensors (default: `cfg.param_dtype`).
  Weights over `max_shard_size` bytes are split into
  model-0000k-of-0000n.safetensors plus model.safetensors.index.json (a
  tensor larger than the limit gets a file of its own). Only one file's
  tensors are held in host memory at a time; params sharded over several
  processes must be gathered first. Existing weight files in `hf_dir` are
  an error unless `overwrite` (then they are deleted: a stale shard or index
  would be read instead of the new weights). Returns the weight file names.
  """
  _check_llama(cfg)
  os.makedirs(hf_dir, exist_ok=True)
  stale = [n for n in os.listdir(hf_dir)
           if n.endswith(".safetensors") or n == INDEX_FILE]
  if stale and not overwrite:
    raise FileExistsError(f"{hf_dir} already holds weights {sorted(stale)}; "
                          "pass overwrite=True to replace them")
  for name in stale:
    os.remove(os.path.join(hf_dir, name))
  dtype = dtype or np.dtype(to_dtype(cfg.param_dtype)).name
  itemsize = _np_dtype(dtype).itemsize
  # Plan the files from shapes alone, so names can carry the file count.
  ordered = _ordered(cfg)
  shards: list[list[str]] = [[]]
  used = total = 0
  for name, m, _ in ordered:
    nbytes = math.prod(m.hf_shape) * itemsize
    if shards[-1] and used + nbytes > max_shard_size:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += nbytes
    total += nbytes
  n = len(shards)
  files = ([WEIGHTS_FILE] if n == 1 else
           [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)])
  file_of = {name: files[k] for k, names in enumerate(shards)
             for name in names}

  pending: dict[str, np.ndarray] = {}
  current = 0
  for name, array in hf_tensors(cfg, params, dtype):
    if file_of[name] != files[current]:
      save_file(pending, os.path.join(hf_dir, files[current]),
                metadata={"format": "pt"})
      pending, current = {}, current + 1
    pending[name] = array
  save_file(pending, os.path.join(hf_dir, files[current]),
            metadata={"format": "pt"})
  if n > 1:
    index = {"metadata": {"total_size": total},
             "weight_map": dict(sorted(file_of.items()))}
    with open(os.path.join(hf_dir, INDEX_FILE), "w", encoding="utf-8") as f:
      json.dump(index, f, indent=2)
  with open(os.path.join(hf_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(config_to_hf(cfg, dtype, **(config_extra or {})), f, indent=2,
              sort_keys=True)
  return files
