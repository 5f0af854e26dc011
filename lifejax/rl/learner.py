"""The RL learner and the iteration loop that PPO and GRPO share.

A `Learner` holds one sharded train state over the trained params (the
policy LM, plus a critic for PPO; `Layout` says where each sits), the frozen
reference params, the jitted rollout forwards and the generic jitted train
step (`train.step.build_train_step` around the algorithm's registered loss).

`run` repeats: draw prompts -> `rollout.collect` (sample, log-probs, values,
reference log-probs, score) -> `algorithm.prepare` (advantages) -> several
epochs of shuffled minibatch train steps -> log one metrics.jsonl row per
iteration. Checkpoints hold the train state (policy, critic, optimizer),
the prompt position and the algorithm's state (e.g. the adaptive KL
coefficient); sampling and minibatch order are pure functions of
(seed, iteration), so a restarted run continues exactly as an uninterrupted
one would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lifejax import sharding
from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.model import heads, sampling, transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import rollout as rollout_lib
from lifejax.train import optim, state as state_lib, step as step_lib
from lifejax.train.checkpoint import Checkpointer, CheckpointConfig
from lifejax.train.metrics import MetricsWriter, plot_curves, progress_desc

KINDS = ("policy", "separate", "shared")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the policy LM (and the critic) sit in the trained params tree.

  policy:   params = the LM's params (no critic; GRPO).
  separate: {"policy": LM params, "value": ValueModel params};
            value_graphdef is the ValueModel's.
  shared:   PolicyValueModel params {"lm": ..., "value_head": ...};
            value_graphdef is the PolicyValueModel's.
  lm_graphdef is always the plain LM's (sampling, reference log-probs).
  """

  kind: str
  lm_graphdef: nnx.GraphDef
  value_graphdef: nnx.GraphDef | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown layout {self.kind!r}; choose one of {KINDS}")
    if (self.kind == "policy") != (self.value_graphdef is None):
      raise ValueError(f"layout {self.kind!r}: value_graphdef must be "
                       f"{'None' if self.kind == 'policy' else 'given'}")

  def lm_params(self, params: Any) -> Any:
    if self.kind == "separate":
      return params["policy"]
    if self.kind == "shared":
      return params["lm"]
    return params

  def stats(self, params: Any, rows: dict[str, jax.Array]
            ) -> tuple[jax.Array, jax.Array | None]:
    """(log-probs of the targets, values or None), (B, T) f32."""
    if self.kind == "shared":
      logits, values = common.model_forward(self.value_graphdef, params, rows)
    else:
      logits = common.model_forward(self.lm_graphdef, self.lm_params(params),
                                    rows)
      values = (common.model_forward(self.value_graphdef, params["value"],
                                     rows)
                if self.kind == "separate" else None)
    return common.token_logprobs(logits, rows["targets"]), values


def make_layout(kind: str, policy_cfg: TransformerConfig, mesh: Any,
                rules: sharding.Rules,
                value_cfg: TransformerConfig | None = None
                ) -> tuple[Layout, Any, Any]:
  """(layout, abstract params, PartitionSpecs) of the trained params tree.

  value_cfg: the separate critic's config (default: the policy's; a critic
  started from a reward model takes the reward model's).
  """
  lm_gd, lm_abs, lm_specs = rollout_lib.abstract_params(
      transformer.Transformer, policy_cfg, mesh, rules)
  if kind == "policy":
    return Layout(kind, lm_gd), lm_abs, lm_specs
  if kind == "separate":
    v_gd, v_abs, v_specs = rollout_lib.abstract_params(
        heads.ValueModel, value_cfg or policy_cfg, mesh, rules)
    return (Layout(kind, lm_gd, v_gd), {"policy": lm_abs, "value": v_abs},
            {"policy": lm_specs, "value": v_specs})
  if kind == "shared":
    if value_cfg is not None and value_cfg != policy_cfg:
      raise ValueError("a shared-trunk critic has the policy's config")
    pv_gd, pv_abs, pv_specs = rollout_lib.abstract_params(
        heads.PolicyValueModel, policy_cfg, mesh, rules)
    return Layout(kind, lm_gd, pv_gd), pv_abs, pv_specs
  raise ValueError(f"unknown layout {kind!r}; choose one of {KINDS}")


def assemble_params(layout: Layout, abstract: Any, lm_params: Any,
                    value_backbone: Any = None) -> Any:
  """The trained params tree from LM params: the policy is a copy of them;
  the critic's backbone is `value_backbone` (e.g. a reward model's; default:
  the LM's minus its head) and its head starts at zero, as a fresh
  ValueHead does. Every leaf is a fresh buffer (the train state donates
  them, the reference keeps its own)."""
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
  zeros = lambda tree: jax.tree.map(  # noqa: E731
      lambda a: jnp.zeros(a.shape, a.dtype), tree)
  if layout.kind == "policy":
    tree = copy(lm_params)
  elif layout.kind == "separate":
    backbone = (heads.backbone_params_from_lm(lm_params)
                if value_backbone is None else value_backbone)
    tree = {"policy": copy(lm_params),
            "value": {"backbone": copy(backbone),
                      "head": zeros(abstract["value"]["head"])}}
  else:
    tree = {"lm": copy(lm_params), "value_head": zeros(abstract["value_head"])}
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                               jax.tree.leaves(abstract)):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"{jax.tree_util.keystr(path)} has shape "
                       f"{tuple(got.shape)}, the model expects "
                       f"{tuple(want.shape)}")
  if jax.tree.structure(tree) != jax.tree.structure(abstract):
    raise ValueError(f"params tree does not match the {layout.kind!r} layout")
  return tree


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _stats(layout: Layout, mesh: Any, rules: sharding.Rules, params: Any,
           rows: dict[str, jax.Array]):
  with sharding.activation_sharding(mesh, rules):
    return layout.stats(params, rows)


class Learner:
  """Sharded train state, frozen reference, jitted rollout forwards and update.

  A checkpoint in `run_dir` is resumed (`restored_extra` /
  `restored_data_state` then hold what `save` stored); otherwise the state
  starts from `initial_params()` (called only then).
  """

  def __init__(self, *, run_dir: str, layout: Layout, abstract_params: Any,
               param_specs: Any, initial_params: Callable[[], Any],
               ref_params: Any, loss_fn: LossFn,
               optimizer_cfg: optim.OptimizerConfig, mesh: Any,
               rules: sharding.Rules, example_minibatch: dict[str, Any],
               num_microbatches: int = 1, chunk_size: int = 0, seed: int = 0,
               checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
               generate: rollout_lib.Generate | None = None):
    if jax.process_count() > 1:
      # Rollout rows and minibatches are built whole on the host and placed
      # as global arrays; multi-host runs need per-process sharding first.
      raise RuntimeError(
          "RL runs are single-process: rollouts gather on one host "
          f"(jax.process_count() = {jax.process_count()})")
    self.layout, self.mesh, self.rules = layout, mesh, rules
    self.chunk_size = chunk_size
    self.generate = generate or rollout_lib.default_generate()
    mb = next(iter(example_minibatch.values())).shape[0]
    sharding.check_batch_divisible(mb, mesh, rules, what="minibatch size")
    if mb % num_microbatches:
      raise ValueError(f"minibatch size {mb} is not divisible by "
                       f"num_microbatches={num_microbatches}")
    optimizer = optim.make_optimizer(optimizer_cfg)
    init, self.abstract_state, self.state_shardings = (
        state_lib.plan_train_state(
            lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                 abstract_params),
            optimizer, param_specs, mesh, seed))
    lm_shardings = layout.lm_params(self.state_shardings["params"])
    self.ref_params = jax.device_put(ref_params, lm_shardings)
    self.batch_shardings = sharding.batch_shardings(example_minibatch, mesh,
                                                    rules)
    step_fn = step_lib.build_train_step(
        loss_fn, optimizer, num_microbatches=num_microbatches,
        schedule=optim.make_schedule(optimizer_cfg))
    self.train_step = step_lib.jit_train_step(
        step_fn, self.state_shardings, self.batch_shardings, mesh, rules)
    self.checkpointer = Checkpointer(run_dir, checkpoint_cfg)
    self.restored_extra = self.restored_data_state = None
    latest = self.checkpointer.latest_step()
    if latest is not None:
      logging.info("resuming %s from iteration %d", run_dir, latest)
      self.state, self.restored_data_state, self.restored_extra = (
          self.checkpointer.restore(latest, self.abstract_state,
                                    self.state_shardings))
    else:
      params = jax.device_put(initial_params(),
                              self.state_shardings["params"])
      with jax.set_mesh(mesh):
        self.state = init(params)

  # -- rollout forwards --------------------------------------------------------

  def policy_params(self) -> Any:
    return self.layout.lm_params(self.state["params"])

  def _chunked(self, layout: Layout, params: Any, rows: rollout_lib.Rows):
    def one(chunk, _):
      chunk = sharding.put(chunk, sharding.batch_shardings(
          chunk, self.mesh, self.rules))
      with jax.set_mesh(self.mesh):
        return _stats(layout, self.mesh, self.rules, params, chunk)
    return rollout_lib.map_chunks(one, rows, self.chunk_size)

  def stats(self, rows: rollout_lib.Rows
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Current policy's log-probs and values of LM rows, (B, T) f32."""
    return self._chunked(self.layout, self.state["params"], rows)

  def ref_logp(self, rows: rollout_lib.Rows) -> np.ndarray:
    """The frozen reference's log-probs of LM rows, (B, T) f32."""
    return self._chunked(Layout("policy", self.layout.lm_graphdef),
                         self.ref_params, rows)[0]

  def sampler(self, cfg: sampling.SamplingConfig):
    return rollout_lib.make_sampler(self.generate, self.layout.lm_graphdef,
                                    self.policy_params(), cfg,
                                    self.chunk_size)

  # -- update ------------------------------------------------------------------

  def update(self, batch: dict[str, np.ndarray], epochs: int,
             minibatch_size: int, rng: np.random.Generator
             ) -> dict[str, float]:
    """`epochs` passes of shuffled minibatch train steps over `batch`;
    returns the step metrics averaged over all steps."""
    n = next(iter(batch.values())).shape[0]
    if n % minibatch_size:
      raise ValueError(f"rollout batch of {n} rows is not a multiple of "
                       f"minibatch_size={minibatch_size}")
    pending = []
    for _ in range(epochs):
      order = rng.permutation(n)
      for s in range(0, n, minibatch_size):
        idx = order[s:s + minibatch_size]
        mb = sharding.put({k: v[idx] for k, v in batch.items()},
                          self.batch_shardings)
        self.state, metrics = self.train_step(self.state, mb)
        pending.append(metrics)  # fetched once, after every step is queued
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]
            if k != "weight"}

  # -- checkpoints -------------------------------------------------------------

  def save(self, iteration: int, data_state: dict, extra: dict) -> None:
    self.checkpointer.save(iteration, self.state, data_state=data_state,
                           extra=extra, force=True)

  def export_policy(self, out_dir: str, step: int) -> None:
    """Writes the policy LM's params as a plain LM run's checkpoint
    (`out_dir/checkpoints/<step>/state` = {"params": LM params}), which
    `train.checkpoint.restore_params` and every `init_from` read."""
    ckpt = Checkpointer(out_dir, CheckpointConfig(async_save=False))
    ckpt.save(step, {"params": self.policy_params()}, force=True)
    ckpt.wait()
    ckpt.close()

  def close(self) -> None:
    self.checkpointer.wait()
    self.checkpointer.close()


# -- the iteration loop -------------------------------------------------------


class Algorithm(Protocol):
  """What an RL algorithm supplies to `run` (see ppo.PPO, grpo.GRPO)."""

  group_size: int  # samples per prompt

  def make_loss(self, layout: Layout) -> LossFn: ...

  def example_minibatch(self, size: int, seq_len: int
                        ) -> dict[str, np.ndarray]: ...

  def prepare(self, rollout: rollout_lib.Rollout
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]: ...

  def observe(self, metrics: dict[str, float], num_samples: int) -> None: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...


class PromptBatches:
  """Endless batches of prompt records: epoch e is a permutation seeded by
  (seed, e); batch i covers positions i*B .. i*B + B - 1 of the stream.
  The state is the batch count, so a restart continues with the next one."""

  def __init__(self, records: Sequence[rollout_lib.Record], batch_size: int,
               seed: int = 0, shuffle: bool = True):
    if not records:
      raise ValueError("no prompt records")
    self.records, self.batch_size = list(records), batch_size
    self.seed, self.shuffle = seed, shuffle
    self.cursor = 0
    self._orders: dict[int, np.ndarray] = {}

  def __iter__(self):
    return self

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:  # a batch spans at most two epochs
      n = len(self.records)
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
      self._orders[epoch] = (
          np.random.default_rng([self.seed, epoch]).permutation(n)
          if self.shuffle else np.arange(n))
    return self._orders[epoch]

  def __next__(self) -> list[rollout_lib.Record]:
    n, start = len(self.records), self.cursor * self.batch_size
    self.cursor += 1
    return [self.records[self._order(k // n)[k % n]]
            for k in range(start, start + self.batch_size)]

  def get_state(self) -> dict:
    return {"cursor": self.cursor}

  def set_state(self, state: dict) -> None:
    self.cursor = int(state["cursor"])


@dataclasses.dataclass(frozen=True)
class RLLoopConfig:
  """Iterations, batch sizes and bookkeeping of an RL run.

  Each iteration samples prompts_per_iteration * group_size rows and takes
  epochs * rows / minibatch_size train steps (each split into
  num_microbatches for gradient accumulation).
  """

  num_iterations: int = 100
  prompts_per_iteration: int = 16
  epochs: int = 4
  minibatch_size: int = 16
  num_microbatches: int = 1
  samples_every: int = 10  # 0: never; iteration 1 is always saved
  checkpoint_every: int = 10  # 0: only at the end
  tensorboard: bool = True
  progress: bool = True


def _merge(update: dict[str, float], rollout_level: dict[str, float]
           ) -> dict[str, float]:
  """Rollout-level metrics keep their names; an update metric whose name
  they already use gets an "update/" prefix."""
  out = dict(rollout_level)
  for k, v in update.items():
    out[f"update/{k}" if k in rollout_level else k] = v
  return out


def run(*, run_dir: str, learner: Learner, algorithm: Algorithm,
        prompts: PromptBatches, codec: rollout_lib.Codec,
        scorer: rollout_lib.Scorer, rollout_cfg: rollout_lib.RolloutConfig,
        loop_cfg: RLLoopConfig, seed: int = 0) -> dict[str, Any]:
  """Runs iterations (resuming after the learner's checkpoint) up to
  loop_cfg.num_iterations; returns a summary (also written to
  summary.json). Metrics rows use step = iteration number (1-based)."""
  start = 0
  if learner.restored_extra is not None:
    start = int(learner.restored_extra["iteration"])
    algorithm.set_state(learner.restored_extra["algorithm"])
  if learner.restored_data_state is not None:
    prompts.set_state(learner.restored_data_state)
  writer = MetricsWriter(run_dir, tensorboard=loop_cfg.tensorboard)
  sampling_cfg = rollout_cfg.sampling_config(codec.stop_ids, codec.pad_id,
                                             codec.vocab_limit)
  bar = None
  if loop_cfg.progress and start < loop_cfg.num_iterations:
    from tqdm.auto import tqdm
    bar = tqdm(total=loop_cfg.num_iterations, initial=start,
               desc=progress_desc("rl"),
               dynamic_ncols=True)
  row: dict[str, float] = {}
  for it in range(start, loop_cfg.num_iterations):
    records = next(prompts)
    rollout = rollout_lib.collect(
        records, codec=codec, cfg=rollout_cfg,
        sample=learner.sampler(sampling_cfg),
        rng=jax.random.fold_in(jax.random.PRNGKey(seed), it),
        group_size=algorithm.group_size, stats=learner.stats,
        ref_logp=learner.ref_logp, scorer=scorer)
    batch, prepared = algorithm.prepare(rollout)
    update = learner.update(batch, loop_cfg.epochs, loop_cfg.minibatch_size,
                            np.random.default_rng([seed, it]))
    algorithm.observe(prepared, rollout.batch_size)
    row = _merge(update, {**prepared, **rollout_lib.rollout_metrics(rollout)})
    writer.write(it + 1, row)
    if it == 0 or (loop_cfg.samples_every
                   and (it + 1) % loop_cfg.samples_every == 0):
      _write_samples(run_dir, it + 1, rollout)
    if ((loop_cfg.checkpoint_every
         and (it + 1) % loop_cfg.checkpoint_every == 0)
        or it + 1 == loop_cfg.num_iterations):
      learner.save(it + 1, prompts.get_state(),
                   {"iteration": it + 1, "algorithm": algorithm.get_state()})
    if bar is not None:
      bar.update(1)
      bar.set_postfix(reward=f"{row.get('reward', float('nan')):.3f}",
                      kl=f"{row.get('kl', float('nan')):.3f}")
  if bar is not None:
    bar.close()
  writer.close()
  learner.checkpointer.wait()
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    plot_curves(metrics_path, os.path.join(run_dir, "rl_curves.png"),
                keys=("reward", "true_judge", "kl"))
  summary = {"final_iteration": max(start, loop_cfg.num_iterations),
             "resumed_from": start, "last_metrics": row}
  with open(os.path.join(run_dir, "summary.json"), "w",
            encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def _write_samples(run_dir: str, iteration: int,
                   rollout: rollout_lib.Rollout) -> None:
  path = os.path.join(run_dir, "samples", f"iter_{iteration:06d}.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rollout_lib.sample_records(rollout):
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
