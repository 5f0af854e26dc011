"""The one stage runner: a stage is a `StageSpec`; `run_stage` runs it.

A stage declares its model, its registered loss, how to build its data and
its evals from the built engine, and what else it writes at the end. The
runner does the rest, the same way for every stage:
  1. the run directory: stage.json, the gin config as launched, the chat
     template;
  2. the lineage (`run.lineage.write_lineage`, the one writer);
  3. the engine (`train.engine.fit`): plan, init or restore (state and data
     position), the loop with evals, keep-best, early stopping and
     checkpoints;
  4. the stage's own outputs (`finish`), then summary.json and the
     operative gin config (every binding the run used).

Several processes (`lifejax.launch`) run a stage together: each builds
the same global batches (a stage's pipelines read the whole stream, see
`Context.shard`) and the engine places each process's rows on its devices,
so the run computes what a single-process run on the same mesh does. The
main process writes the run directory's files; the others wait for it
where a later step reads them (`sharding.sync`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from lifejax import checks, sharding
from lifejax.data import chat
from lifejax.losses import registry
from lifejax.model import lora as lora_lib, pipeline, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import (
    Lineage, TokenizerRef, file_digest, file_inputs, write_lineage)
from lifejax.train import engine, trainer as trainer_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.metrics import write_summary
from lifejax.train.optim import OptimizerConfig
from lifejax.train.state import LossScaleConfig


@dataclasses.dataclass(frozen=True)
class Training:
  """How a stage trains: the engine settings each stage takes from gin."""

  mesh: sharding.MeshConfig = sharding.MeshConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  loop: LoopConfig = LoopConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  seed: int = 0
  num_microbatches: int = 1
  loss_scale: LossScaleConfig | None = None
  lora: lora_lib.LoraConfig | None = None


@dataclasses.dataclass
class Context:
  """What a spec's builders see: the run, its tokenizer and template, the
  mesh, and (once built) the engine's trainer (graphdef, shardings)."""

  run: RunDir
  spec: StageSpec
  training: Training
  mesh: Any
  trainer: trainer_lib.Trainer | None = None

  @property
  def tokenizer(self) -> Any:
    return self.spec.tokenizer

  @property
  def template(self) -> chat.ChatTemplate | None:
    return self.spec.template

  @property
  def shard(self) -> dict[str, int]:
    """The grain shard arguments of a stage's pipelines: one shard, the
    whole stream, in every process. The engine takes global batches and
    places each process's rows of them (`sharding.put`), which keeps the
    batches, and so the run, independent of the number of processes."""
    return {"shard_index": 0, "shard_count": 1}

  def model_params(self, state: Any) -> Any:
    """The model's params in a train state (adapters merged under LoRA)."""
    return lora_lib.full_params(state, self.training.lora)

  def local_batch(self, batch_size: int, name: str = "batch_size") -> int:
    """The rows of a batch a stage's pipeline makes: all `batch_size` of
    the global batch (see `shard`), in every process."""
    del name
    return batch_size


@dataclasses.dataclass
class StageSpec:
  """A stage: its model, loss, data and evals; `run_stage` does the rest.

  loss: a registered loss name (`losses.registry`) of kind `loss_kind`; it
    is built as `get_loss(loss)(*loss_graphdefs(graphdef), **loss_kwargs)`
    (default: the model's graphdef alone), the held-out loss with
    `eval_loss_kwargs` (None: the same kwargs).
  params_tree: (abstract params, PartitionSpecs) of a trained tree that is
    not one `model_cls` model (an RL policy and critic); `loss_graphdefs`
    then names the graphdefs the loss needs (the engine's graphdef is None).
  data(ctx): the train-data source (`train.loop.DataIterator`), built after
    the engine (its position is restored by the engine).
  evals(ctx): the `train.engine.Evals` of the stage.
  init_from: the run (or HF directory) whose params start the stage; the
    default `initial_params` loads them. Without it the model starts fresh.
  inputs: lineage input files by role; details: stage-specific lineage
    facts. finish(ctx, result) writes the stage's own outputs and returns
    what to add to the summary.
  """

  name: str
  model_kind: str
  model: TransformerConfig
  loss: str
  loss_kind: str
  example_batch: Mapping[str, Any]
  data: Callable[[Context], Any]
  tokenizer: Any
  tokens_per_step: int
  loss_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  eval_loss_kwargs: Mapping[str, Any] | None = None
  evals: Callable[[Context], engine.Evals] | None = None
  template: chat.ChatTemplate | None = None
  init_from: str | None = None
  reference: str | None = None
  initial_params: Callable[[Context, trainer_lib.Plan], Any] | None = None
  model_cls: type = transformer.Transformer
  inputs: Mapping[str, Sequence[str]] = dataclasses.field(
      default_factory=dict)
  details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finish: Callable[[Context, engine.FitResult], dict] | None = None
  params_tree: tuple[Any, Any] | None = None
  loss_graphdefs: Callable[[Any], Sequence[Any]] = lambda g: (g,)


_CHECK_ONLY = contextvars.ContextVar("check_only", default=False)


@contextlib.contextmanager
def checking_only():
  """Stage calls inside return right after checking their options (no
  file is read or written): a lifecycle checks every stage this way before
  it generates the world."""
  token = _CHECK_ONLY.set(True)
  try:
    yield
  finally:
    _CHECK_ONLY.reset(token)


def only_checking() -> bool:
  """True inside `checking_only()`: the stage returns {} here."""
  return _CHECK_ONLY.get()


def preflight(stage: str, mesh_cfg: sharding.MeshConfig, batch_size: int,
              num_microbatches: int = 1,
              pipeline_model: TransformerConfig | None = None) -> None:
  """The checks a stage makes before any expensive work (world generation,
  tokenizer training, loading params): the mesh fits the devices, the batch
  divides among the data-parallel devices and into microbatches. A
  failure is a `checks.ConfigError` naming the stage.

  A mesh with pipeline stages (`MeshConfig.stage` > 1) is accepted only
  from a stage that passes `pipeline_model` (its TransformerConfig: layers
  divide into the stages, microbatches into pipeline microbatches); the
  others (RL, preference, distillation) sample or run models the pipeline
  does not cover."""
  try:
    if mesh_cfg.stage > 1:
      if pipeline_model is None:
        raise ValueError(
            f"mesh.stage={mesh_cfg.stage}: pipeline parallelism is supported "
            "by the pretrain and sft stages only (sampling with a KV cache "
            "and the RL / preference / distillation losses have no pipelined "
            "path); set mesh.stage=1")
      pipeline.check_pipeline(
          pipeline_model.num_layers, batch_size // max(num_microbatches, 1),
          mesh_cfg.stage, pipeline_model.pipeline_microbatches,
          pipeline_model.pipeline_schedule, mesh_cfg.model)
    mesh = sharding.make_mesh(mesh_cfg)
    checks.at_least(f"{stage}.num_microbatches", num_microbatches, 1)
    if batch_size % num_microbatches:
      raise ValueError(f"{stage}.batch_size={batch_size} is not divisible "
                       f"by num_microbatches={num_microbatches}")
    sharding.check_batch_divisible(batch_size // num_microbatches, mesh,
                                   mesh_cfg.rules,
                                   what=f"{stage} microbatch size")
  except ValueError as e:
    raise checks.ConfigError(f"{stage}: {e}") from e


def start_run(run_dir: str, stage: str,
              template: chat.ChatTemplate | None = None) -> RunDir:
  """Creates the run directory with stage.json, the gin config as
  launched and (for chat stages) the chat template."""
  run = RunDir(run_dir)
  if sharding.is_main_process():
    os.makedirs(run.root, exist_ok=True)
    _write_json(run.stage_file, {"stage": stage})
    with open(run.config_gin, "w", encoding="utf-8") as f:
      f.write(gin.config_str())
    if template is not None:
      artifacts.save_template(run.root, template)
  sharding.sync(f"lifejax run started: {run.root}")
  return run


def tokenizer_ref(tokenizer: Any, fallback: str) -> TokenizerRef:
  path = getattr(tokenizer, "model_path", fallback)
  return TokenizerRef(
      path=os.path.abspath(path), vocab_size=tokenizer.vocab_size,
      sha256_16=file_digest(path) if os.path.isfile(path) else None)


def lineage_of(spec: StageSpec) -> Lineage:
  return Lineage(
      stage=spec.name, model_kind=spec.model_kind, model=spec.model,
      init_from=os.path.abspath(spec.init_from) if spec.init_from else None,
      reference=(os.path.abspath(spec.reference) if spec.reference
                 else None),
      tokenizer=tokenizer_ref(spec.tokenizer, spec.init_from or ""),
      chat_template=spec.template.to_dict() if spec.template else None,
      inputs={role: file_inputs(paths) for role, paths in spec.inputs.items()},
      details={"loss": spec.loss, "loss_hparams": dict(spec.loss_kwargs),
               **spec.details})


def run_stage(spec: StageSpec, run_dir: str, training: Training
              ) -> dict[str, Any]:
  """Runs (or resumes) `spec` into `run_dir`; returns its summary.

  A bad loss name or a tokenizer larger than the model fails here, before
  anything is written."""
  loss_factory = registry.get_loss(spec.loss, kind=spec.loss_kind,
                                   option=f"{spec.name}.loss")
  if spec.tokenizer.vocab_size > spec.model.vocab_size:
    raise ValueError(
        f"{spec.name}: the tokenizer has {spec.tokenizer.vocab_size} pieces "
        f"but model.vocab_size={spec.model.vocab_size}; raise "
        "TransformerConfig.vocab_size")
  done = engine.finished_step(run_dir)
  if done is not None and (not training.loop.extend
                           or training.loop.num_steps <= done):
    print(f"{spec.name}: {run_dir} already finished at step {done}; "
          "nothing changed" + (
              "" if training.loop.extend else
              " (to train on, raise num_steps and set LoopConfig.extend "
              "= True)"), file=sys.stderr, flush=True)
    with open(RunDir(run_dir).summary, encoding="utf-8") as f:
      return json.load(f)
  run = start_run(run_dir, spec.name, spec.template)
  mesh = sharding.make_mesh(training.mesh)
  ctx = Context(run=run, spec=spec, training=training, mesh=mesh)
  if sharding.is_main_process():
    write_lineage(run.root, lineage_of(spec))
  eval_kwargs = (spec.loss_kwargs if spec.eval_loss_kwargs is None
                 else spec.eval_loss_kwargs)

  def with_trainer(build):
    def call(trainer):
      ctx.trainer = trainer
      return build(ctx)
    return call

  initial = spec.initial_params
  if initial is None and spec.init_from is not None:
    load = artifacts.initial_params(spec.init_from, spec.model)
    initial = lambda _, plan: load(plan)  # noqa: E731
  result = engine.fit(
      run_dir=run.root, loop_cfg=training.loop,
      checkpoint_cfg=training.checkpoint,
      make_data=with_trainer(spec.data),
      make_evals=with_trainer(spec.evals) if spec.evals else None,
      initial_params=(None if initial is None
                      else lambda plan: initial(ctx, plan)),
      tokens_per_step=spec.tokens_per_step, model_cfg=spec.model,
      model_cls=spec.model_cls,
      params_tree=spec.params_tree,
      make_loss=lambda g: loss_factory(*spec.loss_graphdefs(g),
                                       **spec.loss_kwargs),
      make_eval_loss=lambda g: loss_factory(*spec.loss_graphdefs(g),
                                            **eval_kwargs),
      optimizer_cfg=training.optimizer, mesh=mesh, rules=training.mesh.rules,
      example_batch=dict(spec.example_batch), seed=training.seed,
      num_microbatches=training.num_microbatches,
      loss_scale=training.loss_scale, lora_cfg=training.lora)
  summary = dict(result.summary)
  if spec.finish is not None:
    summary.update(spec.finish(ctx, result))
  return finish_run(run, summary)


def finish_run(run: RunDir, summary: dict[str, Any]) -> dict[str, Any]:
  """summary.json (no NaN: see `train.metrics.write_summary`) and the
  operative gin config: what every stage leaves. Every process returns
  once they are written (a next stage may read them at once)."""
  if sharding.is_main_process():
    write_summary(run.summary, summary)
    with open(run.operative_gin, "w", encoding="utf-8") as f:
      f.write(gin.operative_config_str())
  sharding.sync(f"lifejax run finished: {run.root}")
  return summary


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, default=str)
