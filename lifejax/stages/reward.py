"""The reward-model stage: a scalar head on the SFT model's backbone,
trained on preference pairs with a registered pairwise loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import jax
from flax import nnx

from lifejax import sharding
from lifejax.data import file_sources, pipeline, sources as sources_lib
from lifejax.data import validation
from lifejax.data.batching import example_pair_batch
from lifejax.eval import reward_eval
from lifejax.losses import registry, reward as reward_lib
from lifejax.model import heads, transformer
from lifejax.model.config import TransformerConfig
from lifejax.model.lora import LoraConfig
from lifejax.run import artifacts
from lifejax.stages import pairs as pairs_lib, runner
from lifejax.train import engine
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.state import base_params_key

PAIR_FIELDS = {"prompt": list, "chosen": str, "rejected": str}


@gin.configurable
def reward(
    run_dir: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    init_from: str = gin.REQUIRED,
    train_files: Sequence[str] = gin.REQUIRED,
    eval_file: str = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    loop: LoopConfig = LoopConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    batch_size: int = 16,
    seq_len: int = 384,
    seed: int = 0,
    loss: str = "reward",
    lora: LoraConfig | None = None,
    bad_records: str = validation.TRAIN_POLICY,
    bad_eval_records: str = validation.EVAL_POLICY,
) -> dict[str, Any]:
  """Trains a scalar reward head + backbone (from the SFT LM) with the
  Bradley-Terry loss (`loss`: a registered loss of kind "reward");
  evaluates pairwise accuracy by flaw kind and calibration; writes
  reward_stats.json for PPO. lora: adapters on the backbone, the head
  trained in full. bad_records / bad_eval_records: the skip policy
  (data/validation.py) of train_files (default "skip": bad pairs are
  dropped, counted in summary.json's input_records and logged) and of
  eval_file (default "strict": the first is an error)."""
  registry.get_loss(loss, kind="reward", option="reward.loss")  # fail early
  pairs = pairs_lib.prepare("reward", mesh, batch_size, init_from, train_files,
                            eval_file, seq_len, bad_records, bad_eval_records)
  if pairs is None:  # only checking (runner.checking_only)
    return {}
  template, tokenizer, render, inputs = (pairs.template, pairs.tokenizer,
                                         pairs.render, pairs.log)
  train_records, records = pairs.train, pairs.eval

  def source(paths: Sequence[str], recs: list[dict]) -> sources_lib.Source:
    return sources_lib.InMemorySource(
        recs, name=file_sources.stem(paths[0]), fields=PAIR_FIELDS)

  def initial_params(ctx: runner.Context, plan: Any) -> Any:
    _, lm = artifacts.load_params(init_from, transformer.Transformer, model,
                                  ctx.mesh, ctx.training.mesh.rules)

    def fresh():
      with nnx.use_eager_sharding(False):
        m = heads.RewardModel(model, nnx.Rngs(params=seed))
      return nnx.to_pure_dict(nnx.state(m, nnx.Param))

    with jax.set_mesh(ctx.mesh):
      init = jax.jit(fresh, out_shardings=plan.state_shardings[
          base_params_key(plan.state_shardings)])()
    return heads.scalar_params_from_lm(init, lm)

  def pairs(ctx: runner.Context, src: sources_lib.Source, **kw: Any) -> Any:
    return pipeline.preference_dataset(
        src, tokenizer, seq_len=seq_len,
        batch_size=ctx.local_batch(batch_size), render=render, **ctx.shard,
        **kw)

  chosen_rows, rejected_rows = reward_eval.pair_rows(records, render, seq_len)
  last: dict[str, Any] = {}

  def evals(ctx: runner.Context) -> engine.Evals:
    score_fn = reward_lib.make_score_fn(ctx.trainer.graphdef)

    def pairwise(state, step):
      params = sharding.fetch(ctx.model_params(state))
      rc = reward_eval.score_rows(score_fn, params, chosen_rows, batch_size)
      rr = reward_eval.score_rows(score_fn, params, rejected_rows, batch_size)
      res = reward_eval.evaluate_pairs(records, rc, rr)
      last.update(res, r_chosen=rc, r_rejected=rr)
      return {"eval/pair_accuracy": res["accuracy"], "eval/ece": res["ece"],
              "eval/mean_margin": res["mean_margin"],
              **{f"eval/pair_accuracy/{k}": v
                 for k, v in res["accuracy_by_flaw"].items()}}

    return engine.Evals(
        sets=lambda: iter(pairs(ctx, source([eval_file], records), seed=0,
                                shuffle=False, num_epochs=1)),
        evaluators=(pairwise,))

  def finish(ctx: runner.Context, _) -> dict[str, Any]:
    if "r_chosen" in last and sharding.is_main_process():
      reward_eval.write_outputs(ctx.run.root, last)
    return inputs.summary("reward")

  spec = runner.StageSpec(
      name="reward", model_kind="reward", model=model, loss=loss,
      loss_kind="reward", model_cls=heads.RewardModel,
      example_batch=example_pair_batch(batch_size, seq_len),
      data=lambda ctx: pipeline.JsonStateIterator(iter(pairs(
          ctx, source(train_files, train_records), seed=seed))),
      evals=evals, tokenizer=tokenizer, template=template,
      tokens_per_step=2 * batch_size * seq_len, init_from=init_from,
      initial_params=initial_params,
      inputs={"train_files": train_files, "eval_file": [eval_file]},
      finish=finish)
  return runner.run_stage(spec, run_dir, runner.Training(
      mesh=mesh, optimizer=optimizer, loop=loop, checkpoint=checkpoint,
      seed=seed, lora=lora))
