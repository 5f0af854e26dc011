"""Stage entry points. With main.py, the only place that reads gin.

Each stage takes typed arguments (bound from gin files), builds its data,
model and loss, and runs the generic trainer into its own run directory.
Importing this package registers every configurable with gin.
"""

import gin

from lifejax import sharding
from lifejax.eval.instruct import GenerationSpec
from lifejax.model.config import TransformerConfig
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.model.lora import LoraConfig
from lifejax.train.state import LossScaleConfig

# Configurable dataclasses: gin files bind their fields by these names.
for _cls in (TransformerConfig, OptimizerConfig, sharding.MeshConfig,
             LoopConfig, CheckpointConfig, LossScaleConfig, GenerationSpec,
             LoraConfig):
  gin.external_configurable(_cls, module="lifejax")

# pylint: disable=g-import-not-at-top,wrong-import-position
from lifejax.stages.pretrain import pretrain, world_corpus_files  # noqa: E402
from lifejax.stages.reward import reward  # noqa: E402
from lifejax.stages.dpo import dpo  # noqa: E402
from lifejax.stages.kto import kto  # noqa: E402
from lifejax.stages.distill import distill  # noqa: E402
from lifejax.stages.online_dpo import online_dpo  # noqa: E402
from lifejax.stages.sft import sft  # noqa: E402
from lifejax.stages.rl import grpo, ppo  # noqa: E402
from lifejax.stages.rlaif import rlaif  # noqa: E402
from lifejax.stages.lifecycle import lifecycle  # noqa: E402

__all__ = ["pretrain", "sft", "reward", "dpo", "kto", "online_dpo", "ppo",
           "grpo", "rlaif", "lifecycle", "world_corpus_files", "distill"]
