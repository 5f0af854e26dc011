"""What a later stage loads from an earlier run: model config, tokenizer,
chat template, params. Each comes from a lifejax run directory or a
HuggingFace Llama checkpoint directory through one function here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flax import nnx

from lifejax import sharding
from lifejax.data import chat, hf_tokenizer, tokenizer as tok_lib
from lifejax.model import heads, hf_format, hf_import, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import RunDir
from lifejax.run.lineage import read_lineage
from lifejax.train.state import base_params_key
from lifejax.train.checkpoint import (CheckpointConfig, Checkpointer,
                                      restore_params)

# The fields that fix the params' shapes; dtypes, remat and kernels may
# differ between the run that saved params and the one loading them.
SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads",
                "num_kv_heads", "resolved_head_dim", "mlp_dim",
                "tie_embeddings", "smear_keys", "qkv_bias", "qk_norm",
                "norm_offset", "scale_embeddings", "mlp_activation",
                "sliding_window")


def is_hf_dir(path: str) -> bool:
  """A HF checkpoint directory: config.json and no lifejax lineage."""
  return (os.path.isfile(os.path.join(path, hf_format.CONFIG_FILE))
          and not os.path.isfile(RunDir(path).lineage))


def load_model_config(run_or_hf: str) -> TransformerConfig:
  """The model config a run recorded in its lineage, or a HF directory's
  config.json converted; FileNotFoundError/ValueError if it has none."""
  if is_hf_dir(run_or_hf):
    return hf_format.config_from_hf(hf_format.read_hf_config(run_or_hf))
  lineage = read_lineage(run_or_hf)
  if lineage.model is None:
    raise ValueError(f"{RunDir(run_or_hf).lineage} records no model config "
                     f"(stage {lineage.stage!r}, kind {lineage.model_kind!r})")
  return lineage.model


def check_shape(run_or_hf: str, saved: TransformerConfig,
                cfg: TransformerConfig) -> None:
  """ValueError listing each SHAPE_FIELDS field where saved != cfg."""
  diff = {k: (getattr(saved, k), getattr(cfg, k)) for k in SHAPE_FIELDS
          if getattr(saved, k) != getattr(cfg, k)}
  if diff:
    raise ValueError(f"{run_or_hf}: saved model shape differs from the "
                     f"configured model (saved, configured): {diff}")


def load_tokenizer(run_or_hf: str) -> Any:
  """The tokenizer of a run (the file its lineage names, else its
  tokenizer.model) or of a HF directory (tokenizer.json / tokenizer.model)."""
  run = RunDir(run_or_hf)
  path = run.tokenizer_model
  if os.path.isfile(run.lineage):
    ref = read_lineage(run_or_hf).tokenizer
    if ref is not None and os.path.exists(ref.path):
      path = ref.path
  if os.path.isdir(path):  # the lineage names a HF directory
    return hf_tokenizer.load_tokenizer_dir(path)
  if os.path.isfile(path) and not os.path.exists(
      os.path.join(run.root, hf_tokenizer.TOKENIZER_JSON)):
    return tok_lib.load_tokenizer(path)
  return hf_tokenizer.load_tokenizer_dir(run_or_hf)


def save_template(run_dir: str, template: chat.ChatTemplate) -> str:
  """Writes the run's chat template file; returns its path."""
  path = RunDir(run_dir).chat_template
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(template.to_json())
  os.replace(tmp, path)
  return path


def load_template(run_dir: str) -> chat.ChatTemplate:
  """The chat template saved in `run_dir` by `save_template`."""
  path = RunDir(run_dir).chat_template
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {os.path.basename(path)} in "
                            f"{os.fspath(run_dir)}")
  with open(path, encoding="utf-8") as f:
    return chat.ChatTemplate.from_json(f.read())


def _saved_config(run_or_hf: str) -> TransformerConfig | None:
  """The saved model config, if the directory records one."""
  if is_hf_dir(run_or_hf):
    return hf_format.config_from_hf(hf_format.read_hf_config(run_or_hf))
  if os.path.isfile(RunDir(run_or_hf).lineage):
    return read_lineage(run_or_hf).model
  return None


def _restore(run_or_hf: str, cfg: TransformerConfig, abstract: Any,
             shardings: Any, best: bool, lm: bool) -> Any:
  """Params (pure dict) of a run's checkpoint or a HF directory, after the
  shape check."""
  saved = _saved_config(run_or_hf)
  if saved is not None:
    check_shape(run_or_hf, saved, cfg)
  if is_hf_dir(run_or_hf):
    if not lm:
      raise ValueError(f"{run_or_hf} is a HF LM checkpoint; only LM params "
                       "load from it")
    # The configured cfg (shape checked above) sets the dtype of the params.
    return hf_import.load_hf_params(run_or_hf, cfg, shardings)
  return restore_params(run_or_hf, abstract, shardings, best=best)


def load_params(run_or_hf: str, model_cls: type[nnx.Module],
                cfg: TransformerConfig, mesh: Any, rules: sharding.Rules, *,
                best: bool = False) -> tuple[nnx.GraphDef, Any]:
  """(graphdef, params pure dict) of `model_cls(cfg)`: a run's latest (or
  best) checkpoint or a HF LM directory, placed by the logical-axis rules.
  ValueError if the saved model shape differs from `cfg`."""
  graphdef, abstract = nnx.split(heads.abstract(model_cls, cfg), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  params = _restore(run_or_hf, cfg, nnx.to_pure_dict(abstract),
                    sharding.named(mesh, specs), best,
                    lm=model_cls is transformer.Transformer)
  return graphdef, params


def initial_params(run_or_hf: str, cfg: TransformerConfig,
                   best: bool = False) -> Callable[[Any], Any]:
  """`initial_params(plan)` for build_trainer: the LM params of an earlier
  run (latest or best checkpoint) or a HF directory, in the plan's
  shardings. The saved model shape must equal `cfg`."""

  def initial(plan: Any) -> Any:
    key = base_params_key(plan.abstract_state)  # "frozen" under LoRA
    return _restore(run_or_hf, cfg, plan.abstract_state[key],
                    plan.state_shardings[key], best, lm=True)

  return initial


def export_params(out_dir: str, params: Any, step: int) -> None:
  """Writes LM params as a plain LM run's checkpoint
  (`out_dir/checkpoints/<step>/state` = {"params": params}), which
  `load_params`, `initial_params` and `restore_params` read."""
  ckpt = Checkpointer(out_dir, CheckpointConfig(async_save=False))
  ckpt.save(step, {"params": params}, force=True)
  ckpt.wait()
  ckpt.close()
