"""Reading HuggingFace checkpoints (the families of `hf_format.FAMILIES`)
into lifejax params.

Reads `config.json` and safetensors (one file, or shards listed in
`model.safetensors.index.json`) directly: no pickle, no torch, no
transformers. Tensors are converted by the layout in `hf_format.py` and each
stacked parameter is placed straight into its sharding.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open

from lifejax import sharding
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.model.hf_format import (INDEX_FILE, WEIGHTS_FILE,
                                     UnsupportedCheckpointError,
                                     config_from_hf, get_path, hf_names,
                                     read_hf_config, tensor_maps)

# Tensors some exporters store that carry no learned state.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class MissingTensorError(ValueError):
  """A tensor the config requires is not in the checkpoint files."""


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


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
  """Params pure dict (layout in hf_format.py) in `cfg.param_dtype`.

  shardings: optional pure dict of NamedShardings (see `param_shardings`);
  each stacked (Y, ...) tensor is then placed straight into its sharding.
  Host memory peaks at one stacked parameter. Raises MissingTensorError
  naming the tensor and file, ValueError on a shape mismatch, and
  UnsupportedCheckpointError on tensors the architecture does not have.
  """
  dtype = np.dtype(to_dtype(cfg.param_dtype))
  maps = tensor_maps(cfg)
  params: dict[str, Any] = {}
  with SafetensorsReader(hf_dir) as reader:
    expected = {n for m in maps for _, n in hf_names(m, cfg)}
    if cfg.tie_embeddings:
      expected.add("lm_head.weight")  # some exporters store the tied copy
    unexpected = sorted(n for n in reader.names() - expected
                        if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
      raise UnsupportedCheckpointError(
          f"{hf_dir}: tensors a model of this config does not have: "
          f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for m in maps:
      names = hf_names(m, cfg)
      out_shape = tuple(m.split[p] for p in m.perm)
      lead = ((cfg.num_layers,) if m.per_layer else ()) + (
          (cfg.num_experts,) if m.per_expert else ())
      host = np.empty(lead + out_shape, dtype)
      for idx, name in names:
        x = reader.read(name)
        if tuple(x.shape) != m.hf_shape:
          raise ValueError(
              f"{hf_dir}: tensor {name!r} has shape {tuple(x.shape)}, the "
              f"config implies {m.hf_shape}")
        host[idx] = m.to_lifejax(x).astype(dtype)
      target = get_path(shardings, m.path) if shardings is not None else None
      _set_path(params, m.path, _place(host, target))
      del host
  return params


def load_hf_checkpoint(
    hf_dir: str | os.PathLike[str], *, mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES, shardings: Any = None,
    **config_overrides: Any) -> tuple[TransformerConfig, dict[str, Any]]:
  """(config, params) of a HF checkpoint directory.

  With `mesh`, params are placed by the logical-axis `rules`; `shardings`
  (a pure dict of NamedShardings) takes precedence. Without either they go
  to the default device.
  """
  cfg = config_from_hf(read_hf_config(hf_dir), **config_overrides)
  if shardings is None and mesh is not None:
    shardings = param_shardings(cfg, mesh, rules)
  return cfg, load_hf_params(hf_dir, cfg, shardings)
