"""The commands a stage audit card gives to restore a rolled-back checkpoint.

For each earlier stage of a candidate: export the checkpoint to HF, restore it
in Python, and rerun the next stage from it with the data its lineage records.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from lifejax.run.layout import RunDir

# TransformerConfig fields a restarted stage must bind to load a checkpoint.
SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len",
                "tie_embeddings", "rope_theta", "qkv_bias", "qk_norm",
                "norm_offset", "scale_embeddings", "mlp_activation",
                "sliding_window")
# The stage entry point (and gin file under gin_configs/stages/) of a kind.
STAGE_FN = {"pretrain": "pretrain", "cpt": "pretrain", "sft": "sft",
            "reward": "reward", "ppo": "ppo", "grpo": "grpo", "kto": "kto",
            "online_dpo": "online_dpo", "distill": "distill"}
STAGE_FN.update({k: "dpo" for k in ("dpo", "cdpo", "ipo", "simpo", "orpo")})
# The argument naming the run a stage starts from.
INIT_ARG = {"ppo": "sft_run", "grpo": "sft_run"}
_GIN_STAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "gin_configs", "stages")


def restore_commands(run_dir: str, step: int | None,
                     child: dict[str, Any] | None,
                     model: Mapping[str, Any]) -> dict[str, str]:
  """Commands that bring a run's checkpoint back.

  `child` is the card's chain entry of the stage that started from this run
  (name, kind, run_dir, lineage), None for none; `model` the run's
  TransformerConfig fields.
  """
  hf_dir = RunDir(run_dir).hf_export
  out = {"export_hf": (
      "python tools/convert_checkpoint.py lifejax-to-hf "
      f"--run_dir={_quote(run_dir)} --hf_dir={_quote(hf_dir)}"
      + (f" --step={step}" if step is not None else "")),
         "python": (
             "lifejax.train.checkpoint.restore_params("
             f"{run_dir!r}, abstract_params, shardings, step={step})  # or "
             "lifejax.run.artifacts.load_params(run_dir, Transformer, cfg, "
             "mesh, rules)")}
  fn = STAGE_FN.get(child["kind"]) if child else None
  if fn and os.path.isfile(os.path.join(_GIN_STAGES, f"{fn}.gin")):
    new_dir = f"{child['run_dir']}_from_{os.path.basename(run_dir)}"
    params = [f"{fn}.{INIT_ARG.get(fn, 'init_from')}={run_dir!r}",
              f"{fn}.run_dir={new_dir!r}"]
    lineage = child["lineage"]
    inputs = lineage.inputs if lineage else {}
    details = lineage.details if lineage else {}
    for key in ("train_files", "general_files", "eval_files",
                "prompt_files"):
      if inputs.get(key):
        params.append(f"{fn}.{key}={list(inputs[key])!r}")
    for key in ("eval_file", "prompt_file"):
      if inputs.get(key):
        params.append(f"{fn}.{key}={next(iter(inputs[key]))!r}")
    if fn == "dpo" and details.get("loss"):
      hparams = details.get("loss_hparams", {})
      params += [f"dpo.loss={details['loss']!r}",
                 f"dpo.loss_hparams={hparams!r}"]
    if fn == "distill":  # the teacher and loss; the shape is the student's
      hparams = details.get("loss_hparams", {})
      params += [f"distill.teacher={details.get('teacher')!r}"] + [
          f"distill.{k}={hparams[k]!r}" for k in ("divergence", "temperature",
                                                  "alpha") if k in hparams]
      params += ["distill.on_policy=True"] * bool(details.get("on_policy"))
    scope = "student/" if fn == "distill" else ""
    params += [f"{scope}TransformerConfig.{k}={model[k]!r}"
               for k in SHAPE_FIELDS if k in model]
    out["rerun_" + child["name"]] = (
        f"python -m lifejax.main --gin_file=stages/{fn}.gin " + " ".join(
            f"--gin_param={_quote(p)}" for p in params))
    out["rerun_note"] = (
        f"restarts {child['name']} from this checkpoint with the data its "
        "lineage.json records; parameters it does not record keep the "
        f"defaults of gin_configs/stages/{fn}.gin")
  return out


def _quote(arg: str) -> str:
  """Shell-quotes like the gin files' launch lines: "x.y='value'"."""
  if not any(c in arg for c in '"$`\\!'):
    return f'"{arg}"' if any(c in arg for c in " '[]{}()") else arg
  return shlex.quote(arg)
