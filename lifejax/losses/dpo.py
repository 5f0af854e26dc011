"""Direct preference optimization and its relatives, one registered loss each.

All work on sequence log-probs of the policy, log pi(y | x) summed over
response tokens, for the chosen (w) and rejected (l) answer of each pair:

* "dpo"   (Rafailov et al., 2023):  -log sigmoid(beta * h),
          h = [log pi(w) - log ref(w)] - [log pi(l) - log ref(l)].
* "cdpo"  conservative DPO (Mitchell, 2023), labels flipped with prob. eps:
          -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h).
* "ipo"   (Azar et al., 2023):  (h - 1 / (2 tau))^2, with h on summed
          log-probs as in the paper (TRL's variant averages per token).
* "simpo" (Meng et al., 2024), reference-free and length-normalized:
          -log sigmoid(beta / |w| * log pi(w) - beta / |l| * log pi(l) - gamma).
* "orpo"  (Hong et al., 2024), reference-free: the chosen answer's NLL plus
          lambda * -log sigmoid(log odds(w) - log odds(l)), where
          odds(y) = p / (1 - p) of the length-averaged p = exp(log pi(y) / |y|)
          and log odds = a - log(1 - exp(a)), a = log pi(y) / |y| < 0, with
          log(1 - exp(a)) computed stably (log1p(-exp(a)) far from 0,
          log(-expm1(a)) near it). The NLL is the per-token mean of each
          chosen answer, averaged over pairs (the paper's L_SFT; TRL averages
          over all chosen tokens of the batch instead, which differs only
          when lengths differ). Its "implicit rewards" are the log-odds, so
          reward_margin is the mean log odds ratio.

SimPO and ORPO are reference-free (their factories carry
`reference_free = True`, see `needs_reference`): a stage computes no
reference log-probs for them.

Reference log-probs come from the batch (`batch["chosen"]["ref_logp"]`,
`batch["rejected"]["ref_logp"]`, (B,) f32, e.g. precomputed once with
`make_reference_fn`) or, if the factory gets `ref_params`, from a frozen
reference model run inside the loss. Precomputing is cheaper (one forward
over the data instead of one per step) and keeps the reference out of the
step; `ref_params` are closed over by the loss (jit passes them as
arguments, not embedded constants).

Every loss takes `nll_weight` (alpha, default 0; ORPO's default is 1, its
SFT term): alpha times the chosen answer's per-token negative
log-likelihood, -log pi(w) / |w|, is added to each pair's loss (RPO, Pang
et al., 2024; TRL's `rpo_alpha`). DPO alone can lower the chosen answer's
likelihood along with the rejected one's; the NLL term keeps probability
mass on the chosen answers, which matters for on-policy pairs whose
rejected side is often degenerate text.

Batch: {"chosen": LM batch, "rejected": LM batch}, (B, T) arrays with
loss_mask on response targets only (`lifejax.data.pipeline.preference_dataset`).
metrics["weight"] = number of pairs (padding pairs excluded); other metrics
are means over pairs: chosen_logp, rejected_logp, chosen_reward,
rejected_reward (the implicit rewards), reward_margin, reward_accuracy,
chosen_nll (per token).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.losses.registry import get_loss, register_loss

F32 = jnp.float32
_LM_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


class PreferenceLogps(NamedTuple):
  """Sequence log-probs of a batch of pairs, all (B,) f32.

  chosen/rejected: policy sum of response-token log-probs; *_len: number of
  response tokens; ref_*: the reference model's sums (None if not needed).
  """

  chosen: jax.Array
  rejected: jax.Array
  chosen_len: jax.Array
  rejected_len: jax.Array
  ref_chosen: jax.Array | None = None
  ref_rejected: jax.Array | None = None


# (losses_B, chosen_reward_B, rejected_reward_B)
PairOutputs = tuple[jax.Array, jax.Array, jax.Array]


def _log_ratios(lp: PreferenceLogps) -> tuple[jax.Array, jax.Array]:
  if lp.ref_chosen is None or lp.ref_rejected is None:
    raise ValueError("this preference loss needs reference log-probs")
  return lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected


def dpo_objective(lp: PreferenceLogps, *, beta: float) -> PairOutputs:
  """-log sigmoid(beta * h); implicit rewards beta * (log pi - log ref)."""
  chosen_B, rejected_B = _log_ratios(lp)
  return (-jax.nn.log_sigmoid(beta * (chosen_B - rejected_B)),
          beta * chosen_B, beta * rejected_B)


def cdpo_objective(lp: PreferenceLogps, *, beta: float,
                   label_smoothing: float) -> PairOutputs:
  """DPO whose preference labels are wrong with probability eps."""
  chosen_B, rejected_B = _log_ratios(lp)
  z_B = beta * (chosen_B - rejected_B)
  eps = label_smoothing
  losses_B = (-(1.0 - eps) * jax.nn.log_sigmoid(z_B)
              - eps * jax.nn.log_sigmoid(-z_B))
  return losses_B, beta * chosen_B, beta * rejected_B


def ipo_objective(lp: PreferenceLogps, *, tau: float) -> PairOutputs:
  """(h - 1 / (2 tau))^2; implicit rewards are the log-ratios themselves."""
  chosen_B, rejected_B = _log_ratios(lp)
  return (jnp.square(chosen_B - rejected_B - 0.5 / tau), chosen_B,
          rejected_B)


def simpo_objective(lp: PreferenceLogps, *, beta: float,
                    gamma: float) -> PairOutputs:
  """-log sigmoid(r_w - r_l - gamma), r = beta * log pi / |y|."""
  r_chosen_B = beta * lp.chosen / jnp.maximum(lp.chosen_len, 1.0)
  r_rejected_B = beta * lp.rejected / jnp.maximum(lp.rejected_len, 1.0)
  return (-jax.nn.log_sigmoid(r_chosen_B - r_rejected_B - gamma),
          r_chosen_B, r_rejected_B)


# a above this is treated as this (p = 1 - 1e-6): log(1 - exp(a)) -> -inf at
# a = 0, and its gradient with it.
_MAX_AVG_LOGP = -1e-6
_LOG_HALF = -0.6931471805599453


def log1mexp(a: jax.Array) -> jax.Array:
  """log(1 - exp(a)) for a < 0, f32, accurate at both ends (Maechler,
  2012): log(-expm1(a)) for a > -log 2, log1p(-exp(a)) below. a is clamped
  to <= -1e-6 first, so both branches (and their gradients) stay finite."""
  a = jnp.minimum(a.astype(F32), _MAX_AVG_LOGP)
  return jnp.where(a > _LOG_HALF, jnp.log(-jnp.expm1(a)),
                   jnp.log1p(-jnp.exp(a)))


def log_odds(avg_logp: jax.Array) -> jax.Array:
  """log(p / (1 - p)) of p = exp(avg_logp): avg_logp - log(1 - p)."""
  return jnp.minimum(avg_logp, _MAX_AVG_LOGP) - log1mexp(avg_logp)


def orpo_objective(lp: PreferenceLogps, *,
                   odds_ratio_weight: float) -> PairOutputs:
  """lambda * -log sigmoid(log odds(w) - log odds(l)) on length-averaged
  log-probs (the NLL term is the builder's nll_weight); the rewards are
  the log-odds of each answer."""
  lo_chosen_B = log_odds(lp.chosen / jnp.maximum(lp.chosen_len, 1.0))
  lo_rejected_B = log_odds(lp.rejected / jnp.maximum(lp.rejected_len, 1.0))
  return (-odds_ratio_weight * jax.nn.log_sigmoid(lo_chosen_B - lo_rejected_B),
          lo_chosen_B, lo_rejected_B)


# -- from a model and a batch to PreferenceLogps -------------------------------


def _pair_logps(graphdef: nnx.GraphDef, params: Any,
                both: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  logits = common.model_forward(graphdef, params, both)
  return common.sequence_logprobs(logits, both["targets"], both["loss_mask"])


def make_reference_fn(graphdef: nnx.GraphDef
                      ) -> Callable[[Any, dict[str, Any]],
                                    tuple[jax.Array, jax.Array]]:
  """`ref(params, pair_batch) -> (chosen_logp_B, rejected_logp_B)`, f32.

  For precomputing `ref_logp` once per dataset with the frozen reference.
  """

  def ref(params, batch):
    both = common.concat_pair(batch, _LM_KEYS)
    return common.split_pair(_pair_logps(graphdef, params, both)[0])

  return ref


def _batch_reference(batch, both):
  del both
  for half in ("chosen", "rejected"):
    if "ref_logp" not in batch[half]:
      raise KeyError(
          f'batch["{half}"] has no "ref_logp" (keys: {sorted(batch[half])}); '
          "precompute it with dpo.make_reference_fn or pass ref_params to "
          "the loss factory")
  return (batch["chosen"]["ref_logp"].astype(F32),
          batch["rejected"]["ref_logp"].astype(F32))


def _model_reference(ref_graphdef: nnx.GraphDef, ref_params: Any):
  def reference(batch, both):
    del batch
    logp_2B, _ = _pair_logps(ref_graphdef, ref_params, both)
    return common.split_pair(jax.lax.stop_gradient(logp_2B))
  return reference


def _no_reference(batch, both):
  del batch, both
  return None, None


def build_preference_loss_fn(
    graphdef: nnx.GraphDef,
    objective: Callable[[PreferenceLogps], PairOutputs],
    *,
    needs_reference: bool,
    ref_params: Any = None,
    ref_graphdef: nnx.GraphDef | None = None,
    nll_weight: float = 0.0,
) -> LossFn:
  """Wraps a pair objective into `loss_fn(params, batch, rng)`.

  The reference comes from `ref_params` (run with `ref_graphdef`, default
  `graphdef`) if given, else from the batch's "ref_logp" entries.
  `nll_weight` adds that multiple of the chosen answer's per-token NLL.
  """
  if nll_weight < 0:
    raise ValueError(f"nll_weight must be >= 0, got {nll_weight}")
  if not needs_reference:
    if ref_params is not None:
      raise ValueError("this preference loss is reference-free; drop "
                       "ref_params")
    reference = _no_reference
  elif ref_params is not None:
    reference = _model_reference(ref_graphdef or graphdef, ref_params)
  else:
    reference = _batch_reference

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    both = common.concat_pair(batch, _LM_KEYS)
    logp_2B, len_2B = _pair_logps(graphdef, params, both)
    chosen_B, rejected_B = common.split_pair(logp_2B)
    chosen_len_B, rejected_len_B = common.split_pair(len_2B)
    ref_chosen_B, ref_rejected_B = reference(batch, both)
    lp = PreferenceLogps(chosen_B, rejected_B, chosen_len_B, rejected_len_B,
                         ref_chosen_B, ref_rejected_B)
    losses_B, r_chosen_B, r_rejected_B = objective(lp)
    nll_B = -chosen_B / jnp.maximum(chosen_len_B, 1.0)
    if nll_weight:
      losses_B = losses_B + nll_weight * nll_B
    valid_B = common.valid_pairs(batch)
    mean = lambda x: common.masked_mean(x, valid_B)  # noqa: E731
    metrics = {
        "chosen_logp": mean(chosen_B),
        "rejected_logp": mean(rejected_B),
        "chosen_reward": mean(r_chosen_B),
        "rejected_reward": mean(r_rejected_B),
        "reward_margin": mean(r_chosen_B - r_rejected_B),
        "reward_accuracy": mean((r_chosen_B > r_rejected_B).astype(F32)),
        "chosen_nll": mean(nll_B),
        "weight": jnp.sum(valid_B),
    }
    return mean(losses_B), metrics

  return loss_fn


@register_loss("dpo", kind="preference")
def make_dpo_loss_fn(graphdef: nnx.GraphDef, *, beta: float = 0.1,
                     nll_weight: float = 0.0, ref_params: Any = None,
                     ref_graphdef: nnx.GraphDef | None = None) -> LossFn:
  """DPO with KL strength `beta` (+ nll_weight x chosen NLL: RPO)."""
  def objective(lp):
    return dpo_objective(lp, beta=beta)
  return build_preference_loss_fn(graphdef, objective, needs_reference=True,
                                  ref_params=ref_params,
                                  ref_graphdef=ref_graphdef,
                                  nll_weight=nll_weight)


@register_loss("cdpo", kind="preference")
def make_cdpo_loss_fn(graphdef: nnx.GraphDef, *, beta: float = 0.1,
                      label_smoothing: float = 0.1, nll_weight: float = 0.0,
                      ref_params: Any = None,
                      ref_graphdef: nnx.GraphDef | None = None) -> LossFn:
  """Conservative DPO: labels assumed flipped with prob. `label_smoothing`."""
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5), got "
                     f"{label_smoothing}")

  def objective(lp):
    return cdpo_objective(lp, beta=beta, label_smoothing=label_smoothing)
  return build_preference_loss_fn(graphdef, objective, needs_reference=True,
                                  ref_params=ref_params,
                                  ref_graphdef=ref_graphdef,
                                  nll_weight=nll_weight)


@register_loss("ipo", kind="preference")
def make_ipo_loss_fn(graphdef: nnx.GraphDef, *, tau: float = 0.1,
                     nll_weight: float = 0.0, ref_params: Any = None,
                     ref_graphdef: nnx.GraphDef | None = None) -> LossFn:
  """IPO: regress the log-ratio gap onto 1 / (2 tau)."""
  if tau <= 0:
    raise ValueError(f"tau must be > 0, got {tau}")

  def objective(lp):
    return ipo_objective(lp, tau=tau)
  return build_preference_loss_fn(graphdef, objective, needs_reference=True,
                                  ref_params=ref_params,
                                  ref_graphdef=ref_graphdef,
                                  nll_weight=nll_weight)


def _reference_free(factory: Callable[..., LossFn]) -> Callable[..., LossFn]:
  factory.reference_free = True  # type: ignore[attr-defined]
  return factory


def needs_reference(factory: Callable[..., LossFn]) -> bool:
  """Whether a registered preference loss reads reference log-probs (False
  for the factories marked reference-free: SimPO, ORPO)."""
  return not getattr(factory, "reference_free", False)


@register_loss("simpo", kind="preference")
@_reference_free
def make_simpo_loss_fn(graphdef: nnx.GraphDef, *, beta: float = 2.0,
                       gamma: float = 1.0, nll_weight: float = 0.0) -> LossFn:
  """SimPO: reference-free, length-normalized, target margin `gamma`."""
  def objective(lp):
    return simpo_objective(lp, beta=beta, gamma=gamma)
  return build_preference_loss_fn(graphdef, objective, needs_reference=False,
                                  nll_weight=nll_weight)


@register_loss("orpo", kind="preference")
@_reference_free
def make_orpo_loss_fn(graphdef: nnx.GraphDef, *, odds_ratio_weight: float = 0.1,
                      nll_weight: float = 1.0) -> LossFn:
  """ORPO: nll_weight x chosen NLL + odds_ratio_weight x the odds-ratio
  loss (the paper's lambda; TRL's ORPOConfig.beta, default 0.1)."""
  if odds_ratio_weight < 0:
    raise ValueError(f"odds_ratio_weight must be >= 0, got "
                     f"{odds_ratio_weight}")

  def objective(lp):
    return orpo_objective(lp, odds_ratio_weight=odds_ratio_weight)
  return build_preference_loss_fn(graphdef, objective, needs_reference=False,
                                  nll_weight=nll_weight)


PREFERENCE_LOSSES = ("dpo", "cdpo", "ipo", "simpo", "orpo")


def make_preference_loss_fn(name: str, graphdef: nnx.GraphDef,
                            **hparams: Any) -> LossFn:
  """The registered preference loss `name` (kind "preference": the built-in
  PREFERENCE_LOSSES or any other registered so) with `hparams`."""
  return get_loss(name, kind="preference")(graphdef, **hparams)
