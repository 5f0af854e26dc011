"""PPO for language models (Ziegler et al., 2019; Stiennon et al., 2020;
Ouyang et al., 2022): KL-shaped rewards, GAE, clipped policy and value losses.

Per rollout (outside the train step, once per batch of samples):

    rewards_BxT, kl_metrics = rewards_with_kl(score_B, old_logp, ref_logp,
                                              mask, kl_ctl.value)
    advantages, returns = gae(rewards_BxT, old_values, mask, gamma, lam)
    advantages = masked_whiten(advantages, mask)

(`ppo_advantages` does the three steps, plus optional reward clipping and
whitening), then several epochs of minibatch updates with the registered
"ppo" loss. Token t of a row is the action "emit targets[t]"; the value at t
estimates the return from there on.

Rollout batch (all (B, T); what `make_ppo_loss_fn`'s loss reads):
  tokens, targets (int32), loss_mask (f32, 1 on generated response targets),
  positions, segment_ids (int32): the LM layout of prompt + response;
  old_logp (f32): log pi_old(targets[t]) under the sampling policy;
  old_values (f32): the critic's values at sampling time;
  advantages, returns (f32): from `ppo_advantages` / `gae`.
Inputs of `ppo_advantages` that the loss does not read: score (B,) f32, the
reward model's score per sequence, and ref_logp (B, T) f32, the reference
policy's log-probs of the targets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.losses.registry import register_loss
from lifejax.model.heads import last_token_index
from lifejax.model import sampling

F32 = jnp.float32


# -- rewards and advantages ----------------------------------------------------


def kl_k3(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(pi || ref) from samples of pi (Schulman,
  2020): exp(ref - logp) - (ref - logp) - 1 >= 0, unbiased, low variance."""
  log_ratio = ref_logp_BxT.astype(F32) - logp_BxT.astype(F32)
  return jnp.expm1(log_ratio) - log_ratio


def rewards_with_kl(score_B: jax.Array, logp_BxT: jax.Array,
                    ref_logp_BxT: jax.Array, mask_BxT: jax.Array,
                    beta: float | jax.Array
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token rewards: -beta * (logp - ref_logp) on every response token,
  plus the sequence score at the last response token. (B, T) f32, 0 off
  the mask.

  Metrics (means over rows with response tokens): kl (sum over tokens of
  logp - ref_logp, the k1 estimate the penalty uses and the adaptive KL
  controller reads), kl_k3 (the same with the k3 estimator), score,
  non_score_reward (sum of the KL penalty).
  """
  mask = mask_BxT.astype(F32)
  k1_BxT = (logp_BxT.astype(F32) - ref_logp_BxT.astype(F32)) * mask
  t = mask.shape[1]
  has_response_B = jnp.any(mask > 0, axis=1).astype(F32)
  at_last_BxT = jax.nn.one_hot(last_token_index(mask), t, dtype=F32)
  score_at_last_BxT = (at_last_BxT
                       * (score_B.astype(F32) * has_response_B)[:, None])
  rewards_BxT = -beta * k1_BxT + score_at_last_BxT
  per_row = lambda x: common.masked_mean(  # noqa: E731
      jnp.sum(x, axis=1), has_response_B)
  metrics = {
      "kl": per_row(k1_BxT),
      "kl_k3": per_row(kl_k3(logp_BxT, ref_logp_BxT) * mask),
      "score": common.masked_mean(score_B, has_response_B),
      "non_score_reward": per_row(-beta * k1_BxT),
  }
  return rewards_BxT, metrics


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  """Generalized advantage estimation over the masked positions of each row.

  A_t = delta_t + gamma * lam * A_next, delta_t = r_t + gamma * V_next - V_t,
  where "next" is the next position with mask > 0 (the episode ends after
  the last one: V_next = A_next = 0). Positions with mask 0 (prompt, padding,
  or tokens inserted by an environment) are skipped, not discounted.
  Returns (advantages, returns = advantages + values), (B, T) f32, 0 off
  the mask. Computed by a reverse `lax.scan` over time.
  """
  on_TxB = (mask_BxT > 0).T
  r_TxB = rewards_BxT.astype(F32).T
  v_TxB = values_BxT.astype(F32).T

  def step(carry, xs):
    next_value_B, next_adv_B = carry
    r_B, v_B, on_B = xs
    delta_B = r_B + gamma * next_value_B - v_B
    adv_B = delta_B + gamma * lam * next_adv_B
    carry = (jnp.where(on_B, v_B, next_value_B),
             jnp.where(on_B, adv_B, next_adv_B))
    return carry, jnp.where(on_B, adv_B, 0.0)

  zeros_B = jnp.zeros(r_TxB.shape[1], F32)
  _, adv_TxB = jax.lax.scan(step, (zeros_B, zeros_B), (r_TxB, v_TxB, on_TxB),
                            reverse=True)
  adv_BxT = adv_TxB.T
  mask = mask_BxT.astype(F32)
  return adv_BxT, (adv_BxT + values_BxT.astype(F32)) * mask


def ppo_advantages(
    score_B: jax.Array,
    logp_BxT: jax.Array,
    ref_logp_BxT: jax.Array,
    values_BxT: jax.Array,
    mask_BxT: jax.Array,
    *,
    kl_coef: float | jax.Array,
    gamma: float = 1.0,
    lam: float = 0.95,
    score_clip: float | None = None,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Rollout -> (advantages_BxT, returns_BxT, metrics).

  Clips scores to [-score_clip, score_clip] (if set), folds in the KL
  penalty, optionally whitens the rewards (scale only, over the batch's
  response tokens), runs GAE, and whitens the advantages (zero mean, unit
  variance over response tokens). Returns are taken before advantage
  whitening, so the critic regresses onto unwhitened targets.
  """
  mask = mask_BxT.astype(F32)
  if score_clip is not None:
    score_B = jnp.clip(score_B, -score_clip, score_clip)
  rewards_BxT, metrics = rewards_with_kl(score_B, logp_BxT, ref_logp_BxT,
                                         mask, kl_coef)
  if whiten_rewards:
    rewards_BxT = common.masked_whiten(rewards_BxT, mask, shift_mean=False)
  advantages_BxT, returns_BxT = gae(rewards_BxT, values_BxT, mask, gamma, lam)
  metrics["returns_mean"] = common.masked_mean(returns_BxT, mask)
  metrics["advantages_mean"] = common.masked_mean(advantages_BxT, mask)
  if whiten_advantages:
    advantages_BxT = common.masked_whiten(advantages_BxT, mask)
  return advantages_BxT, returns_BxT, metrics


# -- the losses ----------------------------------------------------------------


def clipped_policy_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array,
                        advantages_BxT: jax.Array, mask_BxT: jax.Array,
                        clip_eps: float,
                        is_weight_BxT: jax.Array | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO-clip surrogate, token mean of max(-A rho, -A clip(rho, 1 -+ eps)),
  each token's term times is_weight_BxT (an off-policy rollout's truncated
  importance weight, no gradient; None: 1).

  Metrics: clip_fraction (tokens where the clipped term is active),
  approx_kl (k3 estimate of KL(old || new) on the sampled tokens), ratio.
  """
  log_ratio_BxT = logp_BxT.astype(F32) - old_logp_BxT.astype(F32)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  adv_BxT = advantages_BxT.astype(F32)
  unclipped_BxT = -adv_BxT * ratio_BxT
  clipped_BxT = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps)
  metrics = {
      "clip_fraction": common.masked_mean(
          (clipped_BxT > unclipped_BxT).astype(F32), mask_BxT),
      "approx_kl": common.masked_mean(
          jax.lax.stop_gradient(jnp.expm1(log_ratio_BxT) - log_ratio_BxT),
          mask_BxT),
      "ratio": common.masked_mean(jax.lax.stop_gradient(ratio_BxT), mask_BxT),
  }
  per_token_BxT = jnp.maximum(unclipped_BxT, clipped_BxT)
  if is_weight_BxT is not None:
    per_token_BxT = per_token_BxT * jax.lax.stop_gradient(
        is_weight_BxT.astype(F32))
  return common.masked_mean(per_token_BxT, mask_BxT), metrics


def clipped_value_loss(values_BxT: jax.Array, old_values_BxT: jax.Array,
                       returns_BxT: jax.Array, mask_BxT: jax.Array,
                       clip_eps: float | None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token mean of 0.5 * max((V - R)^2, (V_clip - R)^2), where V_clip keeps
  V within clip_eps of the rollout's value (no clipping if None).

  Metrics: value_clip_fraction.
  """
  values = values_BxT.astype(F32)
  old = old_values_BxT.astype(F32)
  returns = returns_BxT.astype(F32)
  unclipped_BxT = jnp.square(values - returns)
  if clip_eps is None:
    clipped_BxT = unclipped_BxT
  else:
    clipped_BxT = jnp.square(
        old + jnp.clip(values - old, -clip_eps, clip_eps) - returns)
  metrics = {"value_clip_fraction": common.masked_mean(
      (clipped_BxT > unclipped_BxT).astype(F32), mask_BxT)}
  return (0.5 * common.masked_mean(jnp.maximum(unclipped_BxT, clipped_BxT),
                                   mask_BxT), metrics)


def explained_variance(values_BxT: jax.Array, returns_BxT: jax.Array,
                       mask_BxT: jax.Array) -> jax.Array:
  """1 - Var(R - V) / Var(R) over masked tokens (1 = perfect critic)."""
  var_returns = common.masked_var(returns_BxT, mask_BxT)
  var_resid = common.masked_var(returns_BxT.astype(F32)
                                - values_BxT.astype(F32), mask_BxT)
  return 1.0 - var_resid / jnp.maximum(var_returns, 1e-8)


def _separate_forward(policy_graphdef: nnx.GraphDef,
                      value_graphdef: nnx.GraphDef):
  def forward(params, batch):
    logits = common.model_forward(policy_graphdef, params["policy"], batch)
    values = common.model_forward(value_graphdef, params["value"], batch)
    return logits, values
  return forward


def _shared_forward(graphdef: nnx.GraphDef):
  def forward(params, batch):
    return common.model_forward(graphdef, params, batch)
  return forward


@register_loss("ppo", kind="ppo")
def make_ppo_loss_fn(policy_graphdef: nnx.GraphDef,
                     value_graphdef: nnx.GraphDef | None = None, *,
                     clip_eps: float = 0.2,
                     value_clip_eps: float | None = 0.2,
                     vf_coef: float = 0.1,
                     ent_coef: float = 0.0,
                     logprob_dist: sampling.Distribution | None = None
                     ) -> LossFn:
  """PPO `loss_fn(params, rollout_batch, rng)`; keys in the module docstring.

  logprob_dist: the distribution the policy's log-probs (the ratio) are
  taken under (None: the full softmax; see GRPO's). The entropy bonus and
  metric stay those of the full softmax.

  With a `value_graphdef`, params are {"policy": LM params, "value":
  ValueModel params}; without, the policy is a shared-trunk model whose call
  returns (logits, values) (`heads.PolicyValueModel`) and params are its.

  loss = policy_loss + vf_coef * value_loss - ent_coef * entropy, each a
  mean over response tokens; metrics["weight"] = number of response tokens.
  Metrics: policy_loss, value_loss, entropy, clip_fraction, approx_kl, ratio,
  value_clip_fraction, explained_variance (per microbatch), values_mean.
  """
  forward = (_shared_forward(policy_graphdef) if value_graphdef is None
             else _separate_forward(policy_graphdef, value_graphdef))

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    mask = batch["loss_mask"].astype(F32)
    logits_BxTxV, values_BxT = forward(params, batch)
    logp_BxT = common.target_logprobs(logits_BxTxV, batch["targets"],
                                        logprob_dist)
    pg_loss, pg_metrics = clipped_policy_loss(
        logp_BxT, batch["old_logp"], batch["advantages"], mask, clip_eps,
        batch.get("is_weight"))
    vf_loss, vf_metrics = clipped_value_loss(
        values_BxT, batch["old_values"], batch["returns"], mask,
        value_clip_eps)
    entropy = common.masked_mean(common.token_entropy(logits_BxTxV), mask)
    loss = pg_loss + vf_coef * vf_loss - ent_coef * entropy
    metrics = {
        "policy_loss": pg_loss,
        "value_loss": vf_loss,
        "entropy": entropy,
        "explained_variance": explained_variance(
            jax.lax.stop_gradient(values_BxT), batch["returns"], mask),
        "values_mean": common.masked_mean(
            jax.lax.stop_gradient(values_BxT), mask),
        **pg_metrics,
        **vf_metrics,
        "weight": jnp.sum(mask),
    }
    return loss, metrics

  return loss_fn


# -- KL coefficient controllers ------------------------------------------------


@struct.dataclass
class FixedKLController:
  """A constant KL coefficient (pytree; `value` is the current beta)."""

  value: jax.Array

  @classmethod
  def create(cls, kl_coef: float) -> FixedKLController:
    return cls(value=jnp.asarray(kl_coef, F32))

  def update(self, current_kl: jax.Array, n_steps: int | jax.Array
             ) -> FixedKLController:
    del current_kl, n_steps
    return self


@struct.dataclass
class AdaptiveKLController:
  """Ziegler et al. (2019): steer the observed KL towards `target`.

  e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n / horizon)
  after n more samples (episodes). A pytree: `value` is data, target and
  horizon are static.
  """

  value: jax.Array
  target: float = struct.field(pytree_node=False)
  horizon: float = struct.field(pytree_node=False)

  @classmethod
  def create(cls, init_kl_coef: float, target: float,
             horizon: float) -> AdaptiveKLController:
    if target <= 0 or horizon <= 0:
      raise ValueError(f"target and horizon must be > 0, got {target}, "
                       f"{horizon}")
    return cls(value=jnp.asarray(init_kl_coef, F32), target=target,
               horizon=horizon)

  def update(self, current_kl: jax.Array, n_steps: int | jax.Array
             ) -> AdaptiveKLController:
    error = jnp.clip(jnp.asarray(current_kl, F32) / self.target - 1.0,
                     -0.2, 0.2)
    mult = 1.0 + error * jnp.asarray(n_steps, F32) / self.horizon
    return self.replace(value=self.value * mult)
