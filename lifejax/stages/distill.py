"""Knowledge distillation: a (smaller) student LM learns a frozen teacher
run's next-token distributions, on the one runner.

The teacher is any LM run directory (or HF checkpoint), loaded once with
`run.artifacts.load_params`, frozen, and run inside the train step on the
same tokens as the student (loss "distill", `losses/distill.py`: forward or
reverse KL at temperature T, scaled by T^2, mixed with the hard-label
cross-entropy by alpha). The student starts fresh (`model`, any width or
depth with the teacher's vocabulary) or from `init_from`; it uses the
teacher's tokenizer.

Data (off-policy, logit KD): pretraining text. By default the teacher run's
own training files and source weights (its lineage), with the teacher's
eval split: the documents the teacher held out are held out again (checked
text by text), so the student never trains on the teacher's eval set.

On-policy (`on_policy=True`; Agarwal et al., 2024, GKD): each step the
student in the engine's current state samples `rollout.max_new_tokens`
tokens after a prompt (the first `rollout.prompt_len` tokens of a training
document: BOS + text), with the RL rollout code (`rl.rollout.collect`,
sampler and row layout included); the teacher scores every sampled
position and the loss (reverse KL by default) is taken on the sampled
tokens only. The prompt stream is seeded and checkpointed, each batch's
sampling key is folded from the seed and the batch index, so a resumed run
samples what an uninterrupted one does.

Evals: held-out loss with alpha = 1, so eval/loss and eval/perplexity are
the student's next-token cross-entropy and perplexity (comparable with a
pretraining run's), plus eval/kl (to the teacher, at T),
eval/teacher_cross_entropy (the teacher on the same tokens) and
eval/agreement (argmax match).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import checks, sharding
from lifejax.data import files, pipeline, validation
from lifejax.data.batching import example_lm_batch
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import generation as generation_lib
from lifejax.losses import distill as distill_lib
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import iteration as iteration_lib, rollout as rollout_lib
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import read_lineage
from lifejax.stages import runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig

STAGE = "distill"
LM_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


class StudentSamples:
  """On-policy batches (`train.loop.DataIterator` with `next_batch(state)`):
  `batch_size` prompts, continued by the student in the engine's state.

  sampler(params) -> sample(prompt_BxP, mask_BxP, rng); params_of(state)
  -> the student's params. Batch k samples with fold_in(PRNGKey(seed), k);
  the state is the prompt stream's position.
  """

  def __init__(self, prompts: iteration_lib.PromptBatches,
               codec: rollout_lib.Codec, cfg: rollout_lib.RolloutConfig,
               sampler: Callable[[Any], Callable[..., Any]],
               params_of: Callable[[Any], Any], seed: int):
    self.prompts, self.codec, self.cfg = prompts, codec, cfg
    self.sampler, self.params_of, self.seed = sampler, params_of, seed
    self._metrics: dict[str, float] = {}

  def next_batch(self, state: Any) -> dict[str, np.ndarray]:
    k = self.prompts.cursor
    ro = rollout_lib.collect(
        next(self.prompts), codec=self.codec, cfg=self.cfg,
        sample=self.sampler(self.params_of(state)),
        rng=jax.random.fold_in(jax.random.PRNGKey(self.seed), k))
    self._metrics = {"sample_length": float(np.mean(ro.lengths_B)),
                     "sample_stopped": float(np.mean(ro.stopped_B))}
    return {key: ro.rows[key] for key in LM_KEYS}

  def pop_metrics(self) -> dict[str, float]:
    out, self._metrics = self._metrics, {}
    return out

  def get_state(self) -> dict:
    return {"prompts": self.prompts.get_state()}

  def set_state(self, state: dict) -> None:
    self.prompts.set_state(state["prompts"])


def prefix_codec(tokenizer: Any, prompt_len: int, text_field: str
                 ) -> rollout_lib.Codec:
  """Prompts = BOS + the first prompt_len - 1 ids of a document's text;
  sampling stops at EOS. No decoding (nothing reads the text)."""
  def encode(record: Any) -> list[int]:
    ids = tokenizer.encode(record[text_field])[:prompt_len - 1]
    return [tokenizer.bos_id] + ids

  return rollout_lib.Codec(encode=encode, decode=None,
                           stop_ids=(tokenizer.eos_id,),
                           pad_id=tokenizer.pad_id,
                           vocab_limit=tokenizer.vocab_size)


def _teacher_data(teacher: str) -> tuple[list[str], list | None, list[str]]:
  """(train files, source weights, eval files) the teacher's lineage
  records; ValueError naming distill.train_files when it records none."""
  lin = (read_lineage(teacher) if os.path.isfile(RunDir(teacher).lineage)
         else None)
  train = list((lin.inputs if lin else {}).get("train_files", {}))
  if not train:
    raise ValueError(f"distill.train_files: the teacher {teacher} records "
                     "no train_files in a lineage.json; set them")
  return (train, lin.details.get("source_weights"),
          list(lin.inputs.get("eval_files", {})))


def _check_same_heldout(teacher: str, held: Sequence[Any],
                        text_field: str) -> None:
  """The documents held out here are those the teacher held out (when the
  teacher kept its held-out files); ValueError naming distill.eval_holdout
  otherwise."""
  mine = RunDir(teacher)
  if not mine.heldout_files():
    return
  for src in held:
    path = mine.heldout_file(src.name)
    theirs = ([r[text_field] for r in read_jsonl(path)]
              if os.path.isfile(path) else None)
    if theirs != [r[text_field] for r in src]:
      raise ValueError(
          f"distill.eval_holdout: the documents held out of {src.name!r} "
          f"differ from the teacher's ({path}); use the teacher's "
          "eval_holdout so the student never trains on its eval set")


def _check_tokenizers(teacher: str, init_from: str, tokenizer: Any) -> None:
  mine = artifacts.load_tokenizer(init_from)
  a = runner.tokenizer_ref(tokenizer, teacher)
  b = runner.tokenizer_ref(mine, init_from)
  if a.vocab_size != b.vocab_size or (a.sha256_16 and b.sha256_16
                                      and a.sha256_16 != b.sha256_16):
    raise ValueError(f"distill.init_from: {init_from}'s tokenizer "
                     f"({b.path}) is not the teacher's ({a.path}); the KL "
                     "compares distributions over the same vocabulary")


@gin.configurable
def distill(
    run_dir: str = gin.REQUIRED,
    teacher: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    init_from: str | None = None,
    train_files: Sequence[str] | None = None,
    source_weights: Sequence[float] | None = None,
    eval_files: Sequence[str] = (),
    eval_holdout: float | None = None,
    text_field: str = "text",
    divergence: str | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    on_policy: bool = False,
    rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 256,
    num_microbatches: int = 1,
    seed: int = 0,
    bad_records: str = validation.TRAIN_POLICY,
    bad_eval_records: str = validation.EVAL_POLICY,
) -> dict[str, Any]:
  """Distils the `teacher` run into the student `model` (see the module
  docstring).

  divergence: "forward" (KL(teacher || student), the default off-policy)
  or "reverse" (KL(student || teacher), the default on-policy);
  temperature: T of the soft targets (loss scaled by T^2); alpha: the
  weight of the hard-label cross-entropy (0: pure distillation, 1: plain
  next-token training on the same batches, the teacher not run in the
  step). train_files: None = the teacher's training files and
  source_weights; eval_files: () = the teacher's eval files, else a held-out
  `eval_holdout` share (default 0.02, as pretraining) of the training
  documents, which must equal the teacher's held-out documents when the
  data is the teacher's. on_policy: the student samples its training
  batches (rollout: prompt_len, max_new_tokens, temperature, top_k, top_p,
  chunk_size); alpha must be 0 there.
  """
  divergence = divergence or ("reverse" if on_policy else "forward")
  distill_lib.check_options(divergence, temperature, alpha,
                            prefix=f"{STAGE}.")
  if on_policy and alpha:
    raise ValueError(f"{STAGE}.alpha={alpha}: on-policy batches are the "
                     "student's own samples, not labels to imitate; use 0")
  if not on_policy and rollout != rollout_lib.RolloutConfig():
    raise checks.unused(f"{STAGE}.rollout", "only on_policy=True samples")
  if eval_holdout is not None and eval_files:
    raise checks.unused(f"{STAGE}.eval_holdout",
                        "eval_files are given, so nothing is held out")
  validation.check_policy(f"{STAGE}.bad_records", bad_records)
  validation.check_policy(f"{STAGE}.bad_eval_records", bad_eval_records)
  runner.preflight(STAGE, mesh, batch_size, num_microbatches)
  if runner.only_checking():
    return {}
  teacher_cfg = artifacts.load_model_config(teacher)
  if teacher_cfg.vocab_size != model.vocab_size:
    raise ValueError(
        f"{STAGE}.model: vocab_size={model.vocab_size} but the teacher's is "
        f"{teacher_cfg.vocab_size}; the KL compares distributions over one "
        "vocabulary")
  tokenizer = artifacts.load_tokenizer(teacher)
  if init_from is not None:
    _check_tokenizers(teacher, init_from, tokenizer)
  from_teacher = train_files is None
  if from_teacher:
    train_files, weights, teacher_eval = _teacher_data(teacher)
    source_weights = weights if source_weights is None else source_weights
    if not eval_files and eval_holdout is None:
      eval_files = teacher_eval
  if source_weights is not None and len(source_weights) != len(train_files):
    raise ValueError(f"{STAGE}.source_weights: {len(source_weights)} weights "
                     f"for {len(train_files)} train_files")
  inputs = validation.SkipLog()

  def source(path: str, policy: str) -> Any:
    return inputs.watch(files.source_from_path(path, text_field,
                                               policy=policy),
                        kind="documents", policy=policy)

  train_srcs = [source(p, bad_records) for p in train_files]
  eval_srcs = [source(p, bad_eval_records) for p in eval_files]
  if not eval_srcs:
    train_srcs, eval_srcs = files.holdout_split(
        train_srcs, text_field, 0.02 if eval_holdout is None else eval_holdout)
    if from_teacher:
      _check_same_heldout(teacher, eval_srcs, text_field)
  run = runner.start_run(run_dir, STAGE)
  if not eval_files:  # later evaluations must read exactly these
    for src in eval_srcs if sharding.is_main_process() else ():
      write_jsonl(run.heldout_file(src.name),
                  ({text_field: r[text_field]} for r in src))
  jax_mesh = sharding.make_mesh(mesh)
  loaded: dict[str, Any] = {}

  def teacher_model() -> tuple[Any, Any]:
    """(graphdef, params) of the frozen teacher, loaded once."""
    if "teacher" not in loaded:
      loaded["teacher"] = artifacts.load_params(
          teacher, transformer.Transformer, teacher_cfg, jax_mesh,
          mesh.rules)
    return loaded["teacher"]

  train_len = rollout.seq_len if on_policy else seq_len

  def data(ctx: runner.Context) -> Any:
    if not on_policy:
      return pipeline.JsonStateIterator(iter(pipeline.lm_dataset(
          train_srcs, tokenizer, seq_len=seq_len,
          batch_size=ctx.local_batch(batch_size), seed=seed,
          weights=source_weights, text_field=text_field, **ctx.shard)))
    codec = prefix_codec(tokenizer, rollout.prompt_len, text_field)
    cfg = rollout.sampling_config(codec.stop_ids, codec.pad_id,
                                  codec.vocab_limit)
    records = [{text_field: r[text_field]} for s in train_srcs for r in s]
    graphdef = ctx.trainer.graphdef
    return StudentSamples(
        iteration_lib.PromptBatches(records, batch_size, seed=seed), codec,
        rollout, lambda params: generation_lib.make_sampler(
            generation_lib.default_sample_fn(), graphdef, params, cfg,
            rollout.chunk_size, rollout.sampling_devices), ctx.model_params, seed)

  def evals(ctx: runner.Context) -> engine.Evals:
    return engine.Evals(sets=lambda: iter(pipeline.lm_eval_dataset(
        eval_srcs, tokenizer, seq_len=seq_len,
        batch_size=ctx.local_batch(batch_size), text_field=text_field,
        **ctx.shard)))

  hparams = {"divergence": divergence, "temperature": temperature,
             "alpha": alpha}
  spec = runner.StageSpec(
      name=STAGE, model_kind="lm", model=model, loss="distill",
      loss_kind="distill",
      loss_kwargs={**hparams, "teacher_metrics": alpha < 1},
      eval_loss_kwargs={**hparams, "alpha": 1.0, "teacher_metrics": True},
      loss_graphdefs=lambda g: (g, *teacher_model()),
      example_batch=example_lm_batch(batch_size, train_len), data=data,
      evals=evals, tokenizer=tokenizer, tokens_per_step=batch_size * train_len,
      init_from=init_from,
      inputs={"train_files": train_files, "eval_files": eval_files},
      details={"teacher": os.path.abspath(teacher),
               "teacher_num_params": teacher_cfg.num_params(),
               "num_params": model.num_params(), "on_policy": on_policy,
               "source_weights": (list(source_weights) if source_weights
                                  else None),
               **({"rollout": dataclasses.asdict(rollout)} if on_policy
                  else {})},
      finish=lambda ctx, _: inputs.summary(STAGE))
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, num_microbatches=num_microbatches))
