"""Writing lifejax params as HuggingFace checkpoints.

`save_hf_checkpoint` writes `config.json` and safetensors (one file, or shards
plus `model.safetensors.index.json`) that `AutoModelForCausalLM.from_pretrained`
loads as the family the config maps to (`hf_format.family_of`: Llama,
Mistral, Qwen2, Qwen3 or Gemma); tensors are converted by the layout in
`hf_format.py`, one at a time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.model.hf_format import (CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE,
                                     TensorMap, config_to_hf, family_of,
                                     get_path, hf_names, tensor_maps)

_NP_DTYPES = {"float32": np.dtype(np.float32),
              "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}


def _ordered(cfg: TransformerConfig
             ) -> list[tuple[str, TensorMap, tuple[int, ...]]]:
  """(HF name, map, index into the param) in HF file order: embed,
  layers, norm, lm_head."""
  maps = tensor_maps(cfg)
  out: list[tuple[str, TensorMap, tuple[int, ...]]] = [
      (maps[0].hf_name, maps[0], ())]
  layered = [(idx, name, m) for m in maps if m.per_layer
             for idx, name in hf_names(m, cfg)]
  for i in range(cfg.num_layers):
    out += [(name, m, idx) for idx, name, m in layered if idx[0] == i]
  out += [(m.hf_name, m, ()) for m in maps[1:] if not m.per_layer]
  return out


def hf_tensors(cfg: TransformerConfig, params: dict[str, Any],
               dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array) pairs in HF file order, converted one at a time.

  dtype: output dtype name ('float32', 'bfloat16', 'float16'); None keeps
  each parameter's own dtype.
  """
  out = None if dtype is None else _np_dtype(dtype)
  for name, m, i in _ordered(cfg):
    value = get_path(params, m.path)
    y = np.asarray(jax.device_get(value[i] if i else value))
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
  """Writes config.json + safetensors that transformers loads (see above).

  dtype: dtype of the written tensors (default: `cfg.param_dtype`).
  Weights over `max_shard_size` bytes are split into
  model-0000k-of-0000n.safetensors plus model.safetensors.index.json (a
  tensor larger than the limit gets a file of its own). Only one file's
  tensors are held in host memory at a time; params sharded over several
  processes must be gathered first. Existing weight files in `hf_dir` are
  an error unless `overwrite` (then they are deleted: a stale shard or index
  would be read instead of the new weights). Returns the weight file names.
  """
  family_of(cfg)  # refuses before anything is written
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
