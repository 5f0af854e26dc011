"""What the reward and DPO stages read alike: the SFT run's template and
tokenizer, and the preference pairs of their train and eval files, each
file checked under its policy and counted."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from lifejax import sharding
from lifejax.data import chat, preference, sft as sft_data, validation
from lifejax.run import artifacts
from lifejax.stages import runner


@dataclasses.dataclass
class PairInputs:
  template: chat.ChatTemplate
  tokenizer: Any
  render: sft_data.ChatRender
  log: validation.SkipLog
  train: list[dict[str, Any]]
  eval: list[dict[str, Any]]


def prepare(stage: str, mesh: sharding.MeshConfig, batch_size: int,
            init_from: str, train_files: Sequence[str], eval_file: str,
            seq_len: int, bad_records: str, bad_eval_records: str
            ) -> PairInputs | None:
  """Checks the stage's mesh, batch and policy options, then (unless the
  stage is only being checked: None) loads its inputs."""
  runner.preflight(stage, mesh, batch_size)
  validation.check_policy(f"{stage}.bad_records", bad_records)
  validation.check_policy(f"{stage}.bad_eval_records", bad_eval_records)
  if runner.only_checking():
    return None
  template = artifacts.load_template(init_from)
  tokenizer = artifacts.load_tokenizer(init_from)
  render = sft_data.ChatRender(template, tokenizer)
  log = validation.SkipLog()
  train, eval_ = preference.load_pair_sets(
      train_files, eval_file, template=template, render=render,
      seq_len=seq_len, train_policy=bad_records,
      eval_policy=bad_eval_records, log=log)
  return PairInputs(template, tokenizer, render, log, train, eval_)
