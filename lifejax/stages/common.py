"""Pieces every stage shares: data sources, lineage, starting params."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import gin

from lifejax.data import pipeline, sources as sources_lib, tokenizer as tok_lib
from lifejax.model.config import TransformerConfig


class JsonStateIterator:
  """Wraps a grain iterator so its state is JSON (for orbax JsonSave)."""

  def __init__(self, it: Any):
    self._it = it

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def get_state(self) -> dict:
    return pipeline.iterator_state_to_json(self._it.get_state())

  def set_state(self, state: dict) -> None:
    self._it.set_state(pipeline.iterator_state_from_json(state))


def source_from_path(path: str, text_field: str = "text"
                     ) -> sources_lib.Source:
  """A source for a local file by extension: .jsonl[.gz], .txt, .parquet."""
  if path.endswith((".jsonl", ".jsonl.gz", ".json")):
    return sources_lib.JsonlSource(path, fields=(text_field,))
  if path.endswith(".parquet"):
    return sources_lib.ParquetSource(path, fields=(text_field,))
  if path.endswith(".array_record"):
    return sources_lib.ArrayRecordSource(path, fields=(text_field,))
  if path.endswith(".txt"):
    return sources_lib.TextSource(path, unit="line", field=text_field)
  raise ValueError(f"{path}: unknown data file type (expected .jsonl, "
                   ".jsonl.gz, .txt, .parquet or .array_record)")


def file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:16]


def texts(srcs: Sequence[sources_lib.Source], field: str):
  for s in srcs:
    for r in s:
      yield r[field]


def load_initial_params(init_from: str, model: TransformerConfig,
                        best: bool = False):
  """`initial_params(plan)` for build_trainer: params of an earlier run.

  `init_from` is a lifejax run directory (its latest, or best, checkpoint)
  or a HuggingFace Llama checkpoint directory (config.json + safetensors).
  The saved model shape must equal `model` (dtypes and remat may differ).
  """
  from lifejax.model import hf  # safetensors only; no torch
  from lifejax.train.checkpoint import restore_params

  def check_shape(saved: TransformerConfig) -> None:
    keys = ("vocab_size", "d_model", "num_layers", "num_heads",
            "num_kv_heads", "resolved_head_dim", "mlp_dim", "tie_embeddings")
    diff = {k: (getattr(saved, k), getattr(model, k)) for k in keys
            if getattr(saved, k) != getattr(model, k)}
    if diff:
      raise ValueError(f"init_from={init_from}: saved model shape differs "
                       f"from the configured model (saved, configured): {diff}")

  def initial_params(plan):
    shardings = plan.state_shardings["params"]
    if os.path.exists(os.path.join(init_from, "config.json")):
      saved_cfg, params = hf.load_hf_checkpoint(init_from, shardings=shardings)
      check_shape(saved_cfg)
      return params
    lineage = os.path.join(init_from, "lineage.json")
    if os.path.exists(lineage):
      with open(lineage) as f:
        saved = json.load(f).get("model")
      if saved:
        check_shape(TransformerConfig(**{
            k: v for k, v in saved.items()
            if k in {f.name for f in dataclasses.fields(TransformerConfig)}}))
    return restore_params(init_from, plan.abstract_state["params"], shardings,
                          best=best)

  return initial_params


def tokenizer_of(run_or_hf_dir: str):
  """The tokenizer saved with an earlier run or a HF checkpoint directory."""
  from lifejax.data import hf_tokenizer
  path = os.path.join(run_or_hf_dir, "tokenizer.model")
  lineage = os.path.join(run_or_hf_dir, "lineage.json")
  if os.path.exists(lineage):
    with open(lineage) as f:
      tok = json.load(f).get("tokenizer", {}).get("path")
    if tok and os.path.exists(tok):
      path = tok
  if os.path.exists(path) and not os.path.exists(
      os.path.join(run_or_hf_dir, "tokenizer.json")):
    return tok_lib.load_tokenizer(path)
  return hf_tokenizer.load_tokenizer_dir(run_or_hf_dir)


def write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, default=str)


def finish_stage(run_dir: str, summary: dict[str, Any],
                 checkpointer: Any = None) -> dict[str, Any]:
  """What every stage leaves at its end: summary.json, the operative gin
  config (every binding the run actually used), and a closed checkpointer
  (its pending asynchronous save finished)."""
  write_json(os.path.join(run_dir, "summary.json"), summary)
  with open(os.path.join(run_dir, "operative_config.gin"), "w") as f:
    f.write(gin.operative_config_str())
  if checkpointer is not None:
    checkpointer.close()
  return summary



def holdout_split(srcs: Sequence[sources_lib.Source], field: str,
                   share: float
                   ) -> tuple[list[sources_lib.Source], list[sources_lib.Source]]:
  """Deterministically holds out ~share of each source's documents."""
  if not 0 < share < 1:
    raise ValueError(f"eval_holdout must be in (0, 1) when no eval_files are "
                     f"given, got {share}")
  train, held = [], []
  for s in srcs:
    records = list(s)
    every = max(2, round(1 / share))
    keep = [r for i, r in enumerate(records) if i % every]
    out = [r for i, r in enumerate(records) if not i % every]
    if not keep or not out:
      raise ValueError(f"source {s.name!r} has {len(records)} documents: too "
                       f"few to hold out {share:.0%} for eval")
    train.append(sources_lib.InMemorySource(keep, name=s.name, fields=(field,)))
    held.append(sources_lib.InMemorySource(out, name=f"{s.name}_eval",
                                           fields=(field,)))
  return train, held
