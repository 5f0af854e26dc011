"""The RL iteration as batches for the one training engine.

`RolloutSource` is the data iterator of an RL stage. At the first step of
each iteration it draws prompts, samples from the current policy in the
engine's train state (`rollout.collect`: samples, log-probs, values,
reference log-probs, scores), lets the algorithm turn the rollout into a
batch (`prepare`: advantages, returns), and queues `epochs` shuffled passes
of minibatches; every engine step then takes one minibatch. Sampling and
minibatch order are pure functions of (seed, iteration), and the source's
state (iteration, prompt position, the algorithm's state such as an
adaptive KL coefficient) is saved with every checkpoint, which falls on an
iteration boundary, so a restarted run continues exactly as an
uninterrupted one would.

An algorithm may ask for dynamic sampling (DAPO): groups it finds
uninformative are dropped and refilled from extra rollout rounds
(`dynamic_sampling.refill_groups`). `monitors.Monitors` (RLLoopConfig's
entropy_floor, kl_ceiling) log a warning and count an alert when the
policy's entropy collapses below a fraction of its first-iteration value
or the KL to the reference exceeds a bound.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from lifejax import checks
from lifejax.data.jsonl import write_jsonl
from lifejax.losses.lm import LossFn
from lifejax.rl import multiturn, rollout as rollout_lib
from lifejax.rl.dynamic_sampling import refill_groups
from lifejax.rl.layout import Layout, PolicyForwards
from lifejax.rl.monitors import Monitors, policy_entropy
from lifejax.run.layout import iteration_sample_name
from lifejax.world import tools as tools_lib


@dataclasses.dataclass(frozen=True)
class RLLoopConfig:
  """Iterations, batch sizes and bookkeeping of an RL run.

  Each iteration samples prompts_per_iteration * group_size rows and takes
  epochs * rows / minibatch_size engine steps (each split into
  num_microbatches for gradient accumulation). Metrics are logged once per
  iteration (the mean of its steps' metrics beside the rollout's metrics);
  checkpoints are written every `checkpoint_every` iterations.

  Monitors: log_entropy logs `policy_entropy`, the mean entropy (nats) of
  the sampling policy over the rollout's response tokens (one extra forward
  per iteration). entropy_floor (a fraction; 0: off; implies log_entropy):
  alert when policy_entropy < entropy_floor * its first-iteration value.
  kl_ceiling (0: off): alert when the rollout's `kl` (log pi - log ref
  summed over a response, mean over samples) exceeds it. An alert is a
  logged warning plus metrics alert/<name> (1 in that iteration) and
  alert/<name>_count (alerts so far in the run, resumed with it).

  Off-policy: rollout_lag L > 0 trains iteration k on a rollout sampled
  with the params of iteration k - L (as an asynchronous pipeline whose
  sampler runs L iterations ahead of the learner; the first L iterations
  use rollouts sampled with the initial params, staleness 0 .. L - 1). At
  consumption the current params recompute the rollout's log-probs and
  values (the proximal policy: PPO's ratio and clipping are taken against
  it), and each response token's surrogate is weighted by the truncated
  importance weight min(pi_prox / mu, is_weight_cap), mu the sampling
  params' log-probs (is_weight_cap 0: no correction, weight 1). Logged:
  staleness (iterations), is_weight_mean, is_weight_capped (share of
  tokens at the cap) and offpolicy_kl (k1 estimate of KL(mu || pi_prox)
  per sample). Pending rollouts are saved with each checkpoint, so a
  restarted run continues exactly.
  """

  num_iterations: int = 100
  prompts_per_iteration: int = 16
  epochs: int = 4
  minibatch_size: int = 16
  num_microbatches: int = 1
  samples_every: int = 10  # 0: never; iteration 1 is always saved
  checkpoint_every: int = 10  # 0: only at the end
  eval_every: int = 0  # iterations; 0: only at the end (with eval prompts)
  early_stop_patience: int = 0  # evals without a better eval/reward; 0: off
  tensorboard: bool = True
  progress: bool = True
  max_nonfinite_steps: int = 10  # LoopConfig's: minibatch steps
  extend: bool = False  # train a finished run on to num_iterations
  log_entropy: bool = False
  entropy_floor: float = 0.0
  kl_ceiling: float = 0.0
  rollout_lag: int = 0
  is_weight_cap: float = 2.0

  def __post_init__(self):
    checks.at_least("RLLoopConfig.num_iterations", self.num_iterations, 0)
    for name in ("prompts_per_iteration", "epochs", "minibatch_size",
                 "num_microbatches"):
      checks.at_least(f"RLLoopConfig.{name}", getattr(self, name), 1)
    checks.at_least("RLLoopConfig.samples_every", self.samples_every, 0)
    checks.at_least("RLLoopConfig.checkpoint_every", self.checkpoint_every, 0)
    checks.at_least("RLLoopConfig.eval_every", self.eval_every, 0)
    checks.at_least("RLLoopConfig.early_stop_patience",
                    self.early_stop_patience, 0)
    checks.in_range("RLLoopConfig.entropy_floor", self.entropy_floor, 0.0,
                    1.0)
    checks.at_least("RLLoopConfig.kl_ceiling", self.kl_ceiling, 0.0)
    checks.at_least("RLLoopConfig.rollout_lag", self.rollout_lag, 0)
    checks.at_least("RLLoopConfig.is_weight_cap", self.is_weight_cap, 0.0)
    if 0 < self.is_weight_cap < 1:
      raise ValueError(f"RLLoopConfig.is_weight_cap={self.is_weight_cap}: "
                       "a cap below 1 shrinks on-policy tokens too; use "
                       ">= 1 (or 0 for no correction)")
    if self.minibatch_size % self.num_microbatches:
      raise ValueError(f"RLLoopConfig.minibatch_size={self.minibatch_size} "
                       "is not divisible by RLLoopConfig.num_microbatches="
                       f"{self.num_microbatches}")

  def steps_per_iteration(self, group_size: int) -> int:
    rows = self.prompts_per_iteration * group_size
    if rows % self.minibatch_size:
      raise ValueError(
          f"a rollout of RLLoopConfig.prompts_per_iteration="
          f"{self.prompts_per_iteration} x group_size={group_size} = {rows} "
          f"rows is not a multiple of RLLoopConfig.minibatch_size="
          f"{self.minibatch_size}")
    return self.epochs * rows // self.minibatch_size


class Algorithm(Protocol):
  """What an RL algorithm supplies (see ppo.PPO, grpo.GRPO).

  Optional: `dynamic_sampling_rounds` (int, default 0) > 0 with
  `informative_groups(rollout) -> (num_groups,) bool` turns on
  `refill_groups` for its rollouts.
  """

  group_size: int  # samples per prompt
  loss: str  # a registered loss name ...
  loss_kind: str  # ... of this kind
  loss_kwargs: dict[str, Any]  # the loss factory's keyword arguments

  def loss_graphdefs(self, layout: Layout) -> tuple[Any, ...]: ...

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


def collect_fn(cfg: rollout_lib.RolloutConfig,
               tool: tools_lib.Tool | None) -> Callable[..., Any]:
  """`rollout.collect` (one turn), or `multiturn.collect` with `tool` bound
  when cfg.max_turns > 1; both take the same keyword arguments."""
  if cfg.max_turns == 1:
    if tool is not None:
      raise checks.unused("the RL stage's tool", "RolloutConfig.max_turns "
                          "is 1, so no turn follows a tool call")
    return rollout_lib.collect
  return functools.partial(multiturn.collect, tool=tool)


class RolloutSource:
  """An RL stage's minibatches for the engine (see the module docstring).

  `next_batch(state)` reads the policy from the engine's current train
  state; `pop_metrics()` hands the engine the rollout's metrics once per
  iteration. `samples_dir`, if given, receives iter_<n>.jsonl sample files.
  shard = (index, count): this process's rows of every minibatch (the
  rollout itself is the same in every process: sampling is a pure function
  of the seed and the iteration), contiguous as the engine assembles a
  global batch from per-process data.
  """

  def __init__(self, *, forwards: PolicyForwards, algorithm: Algorithm,
               prompts: PromptBatches, codec: rollout_lib.Codec,
               scorer: rollout_lib.Scorer,
               rollout_cfg: rollout_lib.RolloutConfig, loop_cfg: RLLoopConfig,
               seed: int = 0, samples_dir: str | None = None,
               trained_params: Callable[[Any], Any] = lambda s: s["params"],
               shard: tuple[int, int] = (0, 1),
               tool: tools_lib.Tool | None = None):
    self.forwards, self.algorithm, self.prompts = forwards, algorithm, prompts
    self.codec, self.scorer, self.seed = codec, scorer, seed
    self.rollout_cfg, self.loop_cfg = rollout_cfg, loop_cfg
    self.samples_dir, self.trained_params = samples_dir, trained_params
    self.tool = tool
    index, count = shard
    if loop_cfg.minibatch_size % count:
      raise ValueError(f"RLLoopConfig.minibatch_size={loop_cfg.minibatch_size}"
                       f" does not divide among {count} processes")
    local = loop_cfg.minibatch_size // count
    self._rows = slice(index * local, (index + 1) * local)
    self.steps_per_iteration = loop_cfg.steps_per_iteration(
        algorithm.group_size)
    self.sampling_cfg = rollout_cfg.sampling_config(
        codec.stop_ids, codec.pad_id, codec.vocab_limit)
    self.iteration = 0
    self.monitors = Monitors(loop_cfg.entropy_floor, loop_cfg.kl_ceiling)
    self._queue: list[dict[str, np.ndarray]] = []
    self._metrics: dict[str, float] = {}
    # rollout_lag > 0: rollouts sampled ahead, oldest first, with the
    # iteration they were sampled at and their sampling metrics.
    self._pending: list[tuple[int, rollout_lib.Rollout,
                              dict[str, float]]] = []

  def next_batch(self, state: Any) -> dict[str, np.ndarray]:
    if not self._queue:
      self._start_iteration(self.trained_params(state))
    return self._queue.pop(0)

  def _collect(self, params: Any, it: int
               ) -> tuple[rollout_lib.Rollout, dict[str, float]]:
    """This iteration's rollout (refilled when the algorithm asks for
    dynamic sampling; extra round r samples with the key folded with r)."""
    sample = self.forwards.sampler(params, self.sampling_cfg)
    key = jax.random.fold_in(jax.random.PRNGKey(self.seed), it)

    def one(rng: jax.Array) -> rollout_lib.Rollout:
      return collect_fn(self.rollout_cfg, self.tool)(
          next(self.prompts), codec=self.codec, cfg=self.rollout_cfg,
          sample=sample, rng=rng, group_size=self.algorithm.group_size,
          stats=lambda rows: self.forwards.stats(params, rows),
          ref_logp=self.forwards.ref_logp, scorer=self.scorer)

    rollout = one(key)
    rounds = getattr(self.algorithm, "dynamic_sampling_rounds", 0)
    if not rounds:
      return rollout, {}
    return refill_groups(rollout, lambda r: one(jax.random.fold_in(key, r)),
                         self.algorithm.informative_groups,
                         self.algorithm.group_size, rounds)

  def _policy_entropy(self, params: Any, rows: rollout_lib.Rows) -> float:
    f = self.forwards
    return policy_entropy(
        f.layout.lm_graphdef, f.layout.lm_params(params), rows, f.mesh,
        f.rules, f.chunk_size)

  def _lagged(self, params: Any, it: int
              ) -> tuple[rollout_lib.Rollout, dict[str, float],
                         np.ndarray]:
    """rollout_lag > 0: this iteration's rollout (sampled `staleness`
    iterations ago), re-scored by the current params, its sampling metrics
    and the truncated importance weights (B, T); samples the rollouts up
    to iteration it + lag with the current params."""
    lag = self.loop_cfg.rollout_lag
    while len(self._pending) <= lag:
      nxt = it + len(self._pending)
      self._pending.append((it, *self._collect(params, nxt)))
    sampled_at, rollout, sampled = self._pending.pop(0)
    mask = rollout.rows["loss_mask"]
    forward_rows = {k: rollout.rows[k] for k in rollout_lib.FORWARD_KEYS}
    if rollout.ref_logp is None:  # restored from a checkpoint
      rollout.ref_logp = self.forwards.ref_logp(forward_rows)
    behaviour = rollout.old_logp
    rollout.old_logp, rollout.values = self.forwards.stats(params,
                                                           forward_rows)
    log_w = (np.asarray(rollout.old_logp, np.float64)
             - np.asarray(behaviour, np.float64))
    on = mask > 0
    cap = self.loop_cfg.is_weight_cap
    raw = np.exp(np.minimum(log_w, 50.0))
    weight = (np.minimum(raw, cap) if cap else np.ones_like(raw)) * on
    n = max(int(on.sum()), 1)
    sampled = {**sampled, "staleness": float(it - sampled_at),
               "is_weight_mean": float(weight.sum() / n),
               "is_weight_capped": float(((raw >= cap) & on).sum() / n)
               if cap else 0.0,
               "offpolicy_kl": float(np.mean(np.sum(
                   np.where(on, -log_w, 0.0), axis=1)))}
    return rollout, sampled, weight.astype(np.float32)

  def _start_iteration(self, params: Any) -> None:
    it = self.iteration
    if self.loop_cfg.rollout_lag:
      rollout, sampled, is_weight = self._lagged(params, it)
    else:
      rollout, sampled = self._collect(params, it)
    batch, prepared = self.algorithm.prepare(rollout)
    if self.loop_cfg.rollout_lag:
      batch["is_weight"] = is_weight
    # The controller's update uses only this rollout's statistics, and the
    # loss never reads it, so observing now (not after the updates) changes
    # nothing but lets the checkpoint after this iteration hold it.
    self.algorithm.observe(prepared, rollout.batch_size)
    n = next(iter(batch.values())).shape[0]
    rng = np.random.default_rng([self.seed, it])
    size = self.loop_cfg.minibatch_size
    for _ in range(self.loop_cfg.epochs):
      order = rng.permutation(n)
      for s in range(0, n, size):
        idx = order[s:s + size][self._rows]
        self._queue.append({k: v[idx] for k, v in batch.items()})
    metrics = {**prepared, **rollout_lib.rollout_metrics(rollout),
               **sampled}
    if self.loop_cfg.log_entropy or self.loop_cfg.entropy_floor:
      metrics["policy_entropy"] = self._policy_entropy(params, rollout.rows)
    metrics.update(self.monitors.check(it + 1, metrics))
    self._metrics = {**metrics, "iteration": float(it + 1)}
    every = self.loop_cfg.samples_every
    if self.samples_dir and (it == 0 or (every and (it + 1) % every == 0)):
      write_samples(self.samples_dir, it + 1, rollout)
    self.iteration += 1

  def pop_metrics(self) -> dict[str, float]:
    out, self._metrics = self._metrics, {}
    return out

  def get_state(self) -> dict:
    if self._queue:
      raise RuntimeError(
          f"an RL checkpoint must fall on an iteration boundary; "
          f"{len(self._queue)} minibatches of iteration {self.iteration} "
          "are still queued")
    state = {"iteration": self.iteration,
             "prompts": self.prompts.get_state(),
             "algorithm": self.algorithm.get_state()}
    if self.monitors.active:
      state["monitors"] = self.monitors.get_state()
    if self._pending:
      state["pending"] = [rollout_lib.rollout_state(r, sampled_at=at,
                                                    metrics=m)
                          for at, r, m in self._pending]
    return state

  def set_state(self, state: dict) -> None:
    self.iteration = int(state["iteration"])
    self.prompts.set_state(state["prompts"])
    self.algorithm.set_state(state["algorithm"])
    if self.monitors.active and "monitors" in state:
      self.monitors.set_state(state["monitors"])
    self._queue = []
    self._pending = []
    for saved in state.get("pending", []):
      rollout = rollout_lib.rollout_from_state(saved, self.codec,
                                               self.rollout_cfg)
      self._pending.append((int(saved["sampled_at"]), rollout,
                            dict(saved.get("metrics", {}))))


def write_samples(samples_dir: str, iteration: int,
                  rollout: rollout_lib.Rollout) -> None:
  write_jsonl(os.path.join(samples_dir, iteration_sample_name(iteration)),
              rollout_lib.sample_records(rollout))
