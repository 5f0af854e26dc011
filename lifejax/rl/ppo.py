"""PPO for language models: the algorithm that `learner.run` drives.

Per iteration: the rollout's score (reward model or judge) lands on the last
response token, every response token pays beta * (log pi - log pi_ref)
(fixed beta, or the adaptive controller steering the observed KL to a
target), GAE(gamma, lambda) turns rewards and the critic's values into
advantages (whitened over the batch) and returns, then several epochs of
minibatch steps of the registered "ppo" loss: clipped surrogate, clipped
value loss, entropy bonus. The critic is a separate ValueModel or a value
head on the policy's trunk (`learner.Layout` "separate" / "shared").

Everything numeric lives in `lifejax.losses.ppo`; this module only decides
what goes into the batch and carries the KL controller between iterations.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lifejax import checks
from lifejax.data import batching
from lifejax.losses import ppo as ppo_loss
from lifejax.losses.lm import LossFn
from lifejax.losses.registry import get_loss
from lifejax.model import sampling
from lifejax.rl import rollout as rollout_lib
from lifejax.rl.layout import Layout

F32 = jnp.float32
LM_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """PPO hyperparameters (defaults follow Ziegler et al. / Stiennon et al.
  and TRL's PPO trainer where they agree).

  kl_coef: beta of the per-token KL penalty (the initial beta when
    adaptive_kl). target_kl, kl_horizon: the adaptive controller's target
    KL (nats per sequence) and horizon (samples).
  score_clip: clip scores to [-score_clip, score_clip] before shaping.
  whiten_rewards: rescale the shaped per-token rewards to unit variance.
  """

  gamma: float = 1.0
  lam: float = 0.95
  clip_eps: float = 0.2
  value_clip_eps: float | None = 0.2
  vf_coef: float = 0.1
  ent_coef: float = 0.0
  kl_coef: float = 0.05
  adaptive_kl: bool = False
  target_kl: float = 6.0
  kl_horizon: float = 10000.0
  score_clip: float | None = None
  whiten_rewards: bool = False
  whiten_advantages: bool = True

  def __post_init__(self):
    if self.kl_coef < 0:
      raise ValueError(f"PPOConfig.kl_coef must be >= 0, got {self.kl_coef}")
    if not 0 < self.clip_eps < 1:
      raise ValueError(f"PPOConfig.clip_eps must be in (0, 1), got "
                       f"{self.clip_eps}")
    checks.in_range("PPOConfig.gamma", self.gamma, 0.0, 1.0)
    checks.in_range("PPOConfig.lam", self.lam, 0.0, 1.0)
    checks.at_least("PPOConfig.vf_coef", self.vf_coef, 0.0)
    checks.at_least("PPOConfig.ent_coef", self.ent_coef, 0.0)
    if not (self.target_kl > 0 and self.kl_horizon > 0):
      raise ValueError("PPOConfig.target_kl and PPOConfig.kl_horizon must be "
                       f"> 0, got {self.target_kl!r}, {self.kl_horizon!r}")
    # 0 would not mean "off" (None does): it clips every value update or
    # every score to zero.
    for name in ("value_clip_eps", "score_clip"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"PPOConfig.{name}={value!r}: must be > 0 (None "
                         "turns it off)")


@functools.partial(jax.jit, static_argnames=(
    "gamma", "lam", "score_clip", "whiten_rewards", "whiten_advantages"))
def _advantages(score_B, logp_BxT, ref_logp_BxT, values_BxT, mask_BxT,
                kl_coef, *, gamma, lam, score_clip, whiten_rewards,
                whiten_advantages):
  adv_BxT, returns_BxT, metrics = ppo_loss.ppo_advantages(
      score_B, logp_BxT, ref_logp_BxT, values_BxT, mask_BxT, kl_coef=kl_coef,
      gamma=gamma, lam=lam, score_clip=score_clip,
      whiten_rewards=whiten_rewards, whiten_advantages=whiten_advantages)
  metrics["explained_variance"] = ppo_loss.explained_variance(
      values_BxT, returns_BxT, mask_BxT)
  return adv_BxT, returns_BxT, metrics


class PPO:
  """The PPO algorithm of an RL run; its state is the KL coefficient."""

  group_size = 1
  loss_kind = "ppo"

  def __init__(self, cfg: PPOConfig, loss: str = "ppo"):
    """loss: a registered loss of kind "ppo" (looked up here, so an unknown
    name fails before any rollout)."""
    self.cfg, self.loss = cfg, loss
    self.make_loss_fn = get_loss(loss, kind="ppo", option="ppo.loss")
    # RolloutConfig.ratio_distribution="sampled": set by the RL job.
    self.logprob_dist: sampling.Distribution | None = None
    if cfg.adaptive_kl:
      self.kl_ctl = ppo_loss.AdaptiveKLController.create(
          cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    else:
      self.kl_ctl = ppo_loss.FixedKLController.create(cfg.kl_coef)

  def loss_graphdefs(self, layout: Layout) -> tuple[Any, ...]:
    """The graphdefs the loss factory takes: (LM, critic) or the shared
    model's."""
    if layout.kind == "policy":
      raise ValueError("PPO needs a critic: layout 'separate' or 'shared'")
    return ((layout.value_graphdef,) if layout.kind == "shared"
            else (layout.lm_graphdef, layout.value_graphdef))

  @property
  def loss_kwargs(self) -> dict[str, Any]:
    c = self.cfg
    return dict(clip_eps=c.clip_eps, value_clip_eps=c.value_clip_eps,
                vf_coef=c.vf_coef, ent_coef=c.ent_coef,
                **({} if self.logprob_dist is None
                   else {"logprob_dist": self.logprob_dist}))

  def make_loss(self, layout: Layout) -> LossFn:
    return self.make_loss_fn(*self.loss_graphdefs(layout), **self.loss_kwargs)

  def example_minibatch(self, size: int, seq_len: int
                        ) -> dict[str, np.ndarray]:
    """The LM layout plus PPO's per-token float32 (B, T) old_logp,
    old_values, advantages and returns."""
    f = np.zeros((size, seq_len), np.float32)
    return {**batching.example_lm_batch(size, seq_len), "old_logp": f,
            "old_values": f, "advantages": f, "returns": f}

  def advantages(self, rollout: rollout_lib.Rollout
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(advantages, returns) (B, T) and the shaping metrics of a rollout
    with scores, log-probs, reference log-probs and values."""
    c = self.cfg
    adv, ret, metrics = _advantages(
        jnp.asarray(rollout.score_B), rollout.old_logp, rollout.ref_logp,
        rollout.values, rollout.rows["loss_mask"], self.kl_ctl.value,
        gamma=c.gamma, lam=c.lam, score_clip=c.score_clip,
        whiten_rewards=c.whiten_rewards,
        whiten_advantages=c.whiten_advantages)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    metrics["kl_coef"] = float(self.kl_ctl.value)
    return np.asarray(adv), np.asarray(ret), metrics

  def prepare(self, rollout: rollout_lib.Rollout
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if rollout.values is None or rollout.score_B is None:
      raise ValueError("a PPO rollout needs values and scores")
    adv, ret, metrics = self.advantages(rollout)
    batch = {k: rollout.rows[k] for k in LM_KEYS}
    batch.update(old_logp=rollout.old_logp, old_values=rollout.values,
                 advantages=adv, returns=ret)
    return batch, metrics

  def observe(self, metrics: dict[str, float], num_samples: int) -> None:
    self.kl_ctl = self.kl_ctl.update(jnp.asarray(metrics["kl"], F32),
                                     num_samples)

  def get_state(self) -> dict:
    return {"kl_coef": float(self.kl_ctl.value)}

  def set_state(self, state: dict) -> None:
    self.kl_ctl = self.kl_ctl.replace(
        value=jnp.asarray(state["kl_coef"], F32))
