r"""Converts checkpoints between HuggingFace Llama directories and lifejax runs.

HF -> lifejax writes a run directory a later stage can start from:
  checkpoints/<step>/state   orbax checkpoint, state {"step", "params"} (the
                             layout `Checkpointer` writes and
                             `checkpoint.restore_params` reads; no optimizer
                             state, so it is a starting point, not a resume)
  model_config.json          the TransformerConfig fields
  model.gin                  the same as gin bindings, plus INIT_FROM = <dir>
  lineage.json               source directory and its config.json
  tokenizer files            copied (tokenizer.json / tokenizer.model / ...),
                             so `hf_tokenizer.load_tokenizer_dir(run_dir)` works

lifejax -> HF writes config.json + safetensors (`AutoModelForCausalLM` loads
them), the tokenizer files of `--tokenizer_dir` (default: the run directory,
if it holds a HF tokenizer) and, given `--chat_template[_file]` (or a
`chat_template.jinja` in the run directory), that Jinja template as the HF
tokenizer's chat template. A run with a lifejax SentencePiece tokenizer (and
no HF one) gets it exported as tokenizer.json + tokenizer_config.json
(`lifejax.data.hf_tokenizer_export`), with the run's chat template
(`chat_template.json`) as Jinja and a generation_config.json that stops at
the template's end of turn.

Usage:
  python tools/convert_checkpoint.py hf-to-lifejax --hf_dir=path/to/hf \
      --run_dir=runs/base
  python tools/convert_checkpoint.py lifejax-to-hf --run_dir=runs/sft \
      --hf_dir=out/hf --dtype=bfloat16 --tokenizer_dir=path/to/hf \
      --chat_template_file=template.jinja
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from lifejax.data import chat, chat_render  # noqa: E402
from lifejax.data import hf_tokenizer, hf_tokenizer_export  # noqa: E402
from lifejax.data import tokenizer as sp_tokenizer  # noqa: E402
from lifejax.model import hf_export, hf_format, hf_import  # noqa: E402
from lifejax.model import transformer  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402
from lifejax.run import artifacts, layout  # noqa: E402
from lifejax.run.layout import RunDir  # noqa: E402
from lifejax.run.lineage import (  # noqa: E402
    Lineage, read_lineage, write_lineage)
from lifejax.train import checkpoint as ckpt_lib  # noqa: E402

CHAT_TEMPLATE_FILE = layout.CHAT_TEMPLATE_JINJA  # the same name on both sides
GENERATION_CONFIG = "generation_config.json"  # a HF directory's, copied
# Copied verbatim in both directions when present.
TOKENIZER_FILES = (hf_tokenizer.TOKENIZER_JSON,
                   hf_tokenizer.SENTENCEPIECE_MODEL,
                   hf_tokenizer.TOKENIZER_CONFIG,
                   hf_tokenizer.SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)
AUX_FILES = TOKENIZER_FILES + (GENERATION_CONFIG,)
# Fields a converted checkpoint fixes; the rest (compute dtype, remat, init)
# are choices of the run that uses it.
_GIN_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads",
               "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len",
               "rope_theta", "rope_scaling", "rms_eps", "tie_embeddings",
               "qkv_bias", "qk_norm", "norm_offset", "scale_embeddings",
               "mlp_activation", "sliding_window", "param_dtype")


def config_to_json(cfg: TransformerConfig) -> dict[str, Any]:
  d = dataclasses.asdict(cfg)
  d["rope_scaling"] = cfg.rope_scaling_dict
  d["head_dim"] = cfg.resolved_head_dim
  return d


def config_from_json(d: dict[str, Any]) -> TransformerConfig:
  """Inverse of `config_to_json` (rope_scaling as a dict or as a list of
  pairs)."""
  d = dict(d)
  if isinstance(d.get("rope_scaling"), list):
    d["rope_scaling"] = dict(d["rope_scaling"])
  return TransformerConfig(**d)


def model_gin(cfg: TransformerConfig, run_dir: str, source: str) -> str:
  values = config_to_json(cfg)
  lines = [
      f"# Model: imported from the HuggingFace checkpoint {source}",
      "# by tools/convert_checkpoint.py. Shapes are fixed by the checkpoint;",
      "# compute_dtype and remat_policy stay the run's choice.",
      "#",
      "# Start a stage from these weights: include this file and point the",
      "# stage's init checkpoint at %INIT_FROM (this run directory).",
      "",
      f"INIT_FROM = {os.path.abspath(run_dir)!r}",
      "",
  ]
  lines += [f"TransformerConfig.{k} = {values[k]!r}" for k in _GIN_FIELDS]
  return "\n".join(lines) + "\n"


def _copy_present(src: str, dst: str, names: Sequence[str]) -> list[str]:
  copied = []
  for name in names:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


def hf_to_lifejax(hf_dir: str, run_dir: str, *, step: int = 0,
                  param_dtype: str = "float32") -> TransformerConfig:
  """Writes `run_dir` (see the module docstring) from a HF Llama directory."""
  run = RunDir(run_dir)
  ckpt_dir = run.checkpoints
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(f"{ckpt_dir} already holds checkpoints")
  cfg, params = hf_import.load_hf_checkpoint(hf_dir, param_dtype=param_dtype)
  os.makedirs(run_dir, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(
      run_dir, ckpt_lib.CheckpointConfig(async_save=False))
  state = {"step": jnp.asarray(step, jnp.int32), "params": params}
  checkpointer.save(step, state, extra={"source": os.path.abspath(hf_dir)},
                    force=True)
  checkpointer.wait()
  checkpointer.close()
  _write_json(run.model_config_json, config_to_json(cfg))
  with open(run.model_gin, "w", encoding="utf-8") as f:
    f.write(model_gin(cfg, run_dir, os.path.abspath(hf_dir)))
  copied = _copy_present(hf_dir, run_dir, AUX_FILES)
  write_lineage(run_dir, Lineage(
      stage="import_hf", model_kind="lm", model=cfg,
      details={"source": os.path.abspath(hf_dir),
               "hf_config": hf_format.read_hf_config(hf_dir),
               "copied_files": copied, "num_params": cfg.num_params()}))
  return cfg


def read_run_config(run_dir: str) -> TransformerConfig:
  """An imported run's model_config.json, else the model of its lineage."""
  run = RunDir(run_dir)
  if os.path.isfile(run.model_config_json):
    with open(run.model_config_json, encoding="utf-8") as f:
      return config_from_json(json.load(f))
  if os.path.isfile(run.lineage):
    model = read_lineage(run_dir).model
    if model is not None:
      return model
  raise FileNotFoundError(
      f"{run_dir}: no {os.path.basename(run.model_config_json)} or "
      f"{os.path.basename(run.lineage)} with a model")


def restore_run_params(run_dir: str, cfg: TransformerConfig,
                       step: int | None = None, best: bool = False) -> Any:
  """The params of a run's checkpoint, on one device."""
  _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  abstract = nnx.to_pure_dict(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: device, abstract)
  return ckpt_lib.restore_params(run_dir, abstract, shardings, step=step,
                                 best=best)


def _write_chat_template(hf_dir: str, template: str) -> None:
  cfg_path = os.path.join(hf_dir, hf_tokenizer.TOKENIZER_CONFIG)
  tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast"}
  if os.path.isfile(cfg_path):
    with open(cfg_path, encoding="utf-8") as f:
      tok_cfg = json.load(f)
  tok_cfg["chat_template"] = template
  _write_json(cfg_path, tok_cfg)
  # transformers>=4.43 prefers a chat_template.jinja file over the config
  # entry: keep a copied one from contradicting the new template.
  jinja = os.path.join(hf_dir, CHAT_TEMPLATE_FILE)
  if os.path.isfile(jinja):
    with open(jinja, "w", encoding="utf-8") as f:
      f.write(template)


def _sentencepiece(run_dir: str) -> sp_tokenizer.SentencePieceTokenizer | None:
  """The run's lifejax SentencePiece tokenizer, if it has one."""
  try:
    tok = artifacts.load_tokenizer(run_dir)
  except FileNotFoundError:
    return None
  return tok if isinstance(tok, sp_tokenizer.SentencePieceTokenizer) else None


def lifejax_to_hf(run_dir: str, hf_dir: str, *, step: int | None = None,
                  best: bool = False, dtype: str | None = None,
                  max_shard_size: int = 5 * 2**30,
                  tokenizer_dir: str | None = None,
                  chat_template: str | None = None,
                  overwrite: bool = False) -> list[str]:
  """Writes a HF directory from a run's checkpoint. Returns weight files."""
  cfg = read_run_config(run_dir)
  params = restore_run_params(run_dir, cfg, step=step, best=best)
  run = RunDir(run_dir)
  if chat_template is None and os.path.isfile(run.chat_template_jinja):
    with open(run.chat_template_jinja, encoding="utf-8") as f:
      chat_template = f.read()
  if tokenizer_dir is None and os.path.isfile(
      os.path.join(run_dir, hf_tokenizer.TOKENIZER_JSON)):
    tokenizer_dir = run_dir
  sp_tok = None if tokenizer_dir is not None else _sentencepiece(run_dir)
  if (chat_template is None and sp_tok is not None
      and os.path.isfile(run.chat_template)):
    chat_template = artifacts.load_template(run_dir)
  if chat_template is not None and tokenizer_dir is None and sp_tok is None:
    raise ValueError("a chat template is written into a HF tokenizer's "
                     "tokenizer_config.json: pass --tokenizer_dir")

  extra: dict[str, Any] = {}
  if os.path.isfile(run.lineage):
    src = read_lineage(run_dir).details.get("hf_config") or {}
    extra = {k: src[k] for k in ("bos_token_id", "eos_token_id",
                                 "pad_token_id") if k in src}
  os.makedirs(hf_dir, exist_ok=True)
  if tokenizer_dir is not None:
    _copy_present(tokenizer_dir, hf_dir, TOKENIZER_FILES)
    tok = hf_tokenizer.load_tokenizer_dir(hf_dir)
    extra.update({k: v for k, v in (("bos_token_id", tok.bos_id),
                                    ("eos_token_id", tok.eos_id))
                  if v is not None})
    if chat_template is not None:
      _write_chat_template(hf_dir, chat_template)
  if sp_tok is not None:
    hf_tokenizer_export.save_hf_tokenizer(
        hf_dir, sp_tok, chat_template=chat_template,
        model_max_length=cfg.max_seq_len)
    extra.update(bos_token_id=sp_tok.bos_id, eos_token_id=sp_tok.eos_id,
                 pad_token_id=sp_tok.pad_id)
    if isinstance(chat_template, chat.ChatTemplate):
      # HF generation stops where lifejax's chat sampling does: at the end
      # of the assistant turn (or EOS), when that is one id.
      try:
        stops = chat_render.stop_ids(chat_template, sp_tok)
      except ValueError:
        stops = None
      if stops is not None:
        _write_json(os.path.join(hf_dir, GENERATION_CONFIG),
                    dict(extra, eos_token_id=stops))
  _copy_present(run_dir, hf_dir, (GENERATION_CONFIG,))
  return hf_export.save_hf_checkpoint(hf_dir, cfg, params, dtype=dtype,
                                      max_shard_size=max_shard_size,
                                      config_extra=extra, overwrite=overwrite)


def _size(text: str) -> int:
  """'5GB', '200MB', '20KB' or a number of bytes."""
  units = {"KB": 2**10, "MB": 2**20, "GB": 2**30}
  for unit, mult in units.items():
    if text.upper().endswith(unit):
      return int(float(text[:-len(unit)]) * mult)
  return int(text)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="direction", required=True)
  imp = sub.add_parser("hf-to-lifejax", help="HF directory -> run directory")
  imp.add_argument("--hf_dir", required=True)
  imp.add_argument("--run_dir", required=True)
  imp.add_argument("--step", type=int, default=0)
  imp.add_argument("--param_dtype", default="float32",
                   choices=("float32", "bfloat16", "float16"))
  exp = sub.add_parser("lifejax-to-hf", help="run directory -> HF directory")
  exp.add_argument("--run_dir", required=True)
  exp.add_argument("--hf_dir", required=True)
  exp.add_argument("--step", type=int, default=None,
                   help="default: the latest (or best, with --best) step")
  exp.add_argument("--best", action="store_true")
  exp.add_argument("--dtype", default=None,
                   choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written tensors (default: param dtype)")
  exp.add_argument("--max_shard_size", type=_size, default=5 * 2**30)
  exp.add_argument("--tokenizer_dir", default=None,
                   help="HF tokenizer files to ship (default: the run dir's)")
  tmpl = exp.add_mutually_exclusive_group()
  tmpl.add_argument("--chat_template", default=None,
                    help="Jinja chat template text")
  tmpl.add_argument("--chat_template_file", default=None)
  exp.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)

  if args.direction == "hf-to-lifejax":
    cfg = hf_to_lifejax(args.hf_dir, args.run_dir, step=args.step,
                        param_dtype=args.param_dtype)
    print(f"wrote {args.run_dir}: {cfg.num_params():,} params")
    return
  template = args.chat_template
  if args.chat_template_file is not None:
    with open(args.chat_template_file, encoding="utf-8") as f:
      template = f.read()
  files = lifejax_to_hf(args.run_dir, args.hf_dir, step=args.step,
                        best=args.best, dtype=args.dtype,
                        max_shard_size=args.max_shard_size,
                        tokenizer_dir=args.tokenizer_dir,
                        chat_template=template, overwrite=args.overwrite)
  print(f"wrote {args.hf_dir}: {len(files)} weight file(s)")


if __name__ == "__main__":
  main()
