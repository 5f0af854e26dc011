"""Where the policy (and its critic) sit in an RL stage's trained params, and
the forward passes a rollout needs.

The trained params tree is one of three layouts (`Layout.kind`): the policy
LM alone (GRPO), {"policy", "value"} with a separate ValueModel critic, or a
PolicyValueModel whose value head shares the policy's trunk (PPO). The
engine trains that tree like any other; `PolicyForwards` computes what a
rollout needs from it: samples, the current policy's log-probs and values,
and the frozen reference's log-probs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lifejax import sharding
from lifejax.data import batching
from lifejax.eval import generation
from lifejax.losses import common
from lifejax.model import heads, sampling, transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import rollout as rollout_lib

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
  # The distribution the policy's log-probs are taken under (None: the
  # full softmax; RolloutConfig.ratio_distribution).
  dist: sampling.Distribution | None = None

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
    return (common.target_logprobs(logits, rows["targets"], self.dist),
            values)

  def lm_logits(self, params: Any, rows: dict[str, jax.Array]) -> jax.Array:
    """The policy LM's logits (B, T, V) f32: the forward `stats` runs."""
    if self.kind == "shared":
      logits, _ = common.model_forward(self.value_graphdef, params, rows)
    else:
      logits = common.model_forward(self.lm_graphdef, self.lm_params(params),
                                    rows)
    return logits.astype(jnp.float32)


def make_layout(kind: str, policy_cfg: TransformerConfig, mesh: Any,
                rules: sharding.Rules,
                value_cfg: TransformerConfig | None = None,
                dist: sampling.Distribution | None = None
                ) -> tuple[Layout, Any, Any]:
  """(layout, abstract params, PartitionSpecs) of the trained params tree.

  value_cfg: the separate critic's config (default: the policy's; a critic
  started from a reward model takes the reward model's). dist: the
  distribution the policy's log-probs are taken under (None: full softmax).
  """
  lm_gd, lm_abs, lm_specs = rollout_lib.abstract_params(
      transformer.Transformer, policy_cfg, mesh, rules)
  if kind == "policy":
    return Layout(kind, lm_gd, dist=dist), lm_abs, lm_specs
  if kind == "separate":
    v_gd, v_abs, v_specs = rollout_lib.abstract_params(
        heads.ValueModel, value_cfg or policy_cfg, mesh, rules)
    return (Layout(kind, lm_gd, v_gd, dist),
            {"policy": lm_abs, "value": v_abs},
            {"policy": lm_specs, "value": v_specs})
  if kind == "shared":
    if value_cfg is not None and value_cfg != policy_cfg:
      raise ValueError("a shared-trunk critic has the policy's config")
    pv_gd, pv_abs, pv_specs = rollout_lib.abstract_params(
        heads.PolicyValueModel, policy_cfg, mesh, rules)
    return Layout(kind, lm_gd, pv_gd, dist), pv_abs, pv_specs
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


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _target_logprobs(dist: sampling.Distribution, mesh: Any,
                     rules: sharding.Rules, logits: jax.Array,
                     targets: jax.Array) -> jax.Array:
  with sharding.activation_sharding(mesh, rules):
    return common.target_logprobs(logits, targets, dist)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _lm_logits(layout: Layout, mesh: Any, rules: sharding.Rules,
               params: Any, rows: dict[str, jax.Array]) -> jax.Array:
  with sharding.activation_sharding(mesh, rules):
    return layout.lm_logits(params, rows)


class PolicyForwards:
  """The forwards a rollout needs, in chunks of `chunk_size` rows (0: all):
  samples from the policy, the current params' log-probs and values, and
  the frozen reference's log-probs.

  sampler "kv_cache": `generate` (default: the KV-cache sampler with its
  log-probs); "exact": `sampling.generate_exact` on this layout's own
  forward (`lm_logits`, the forward `stats` runs, same mesh and row
  shardings), so the sampler's log-probs are the learner's bit for bit.
  sampling_devices: where the "kv_cache" sampler runs
  (`RolloutConfig.sampling_devices`).
  """

  def __init__(self, layout: Layout, mesh: Any, rules: sharding.Rules,
               ref_params: Any, chunk_size: int = 0,
               generate: generation.SampleFn | None = None,
               sampler: str = "kv_cache", sampling_devices: int = 1):
    self.layout, self.mesh, self.rules = layout, mesh, rules
    self.sampling_devices = sampling_devices
    self.ref_params, self.chunk_size = ref_params, chunk_size
    self.sampler_kind = sampler
    if sampler == "exact" and generate is not None:
      raise ValueError("RolloutConfig.sampler='exact' samples with the "
                       "learner's forward; a custom generate function "
                       "cannot be used with it")
    self.generate = sharding.compiled_together(
        generate or generation.default_sample_fn(with_logprobs=True))
    self._stats = sharding.compiled_together(_stats)
    self._lm_logits = sharding.compiled_together(_lm_logits)

  def _chunked(self, layout: Layout, params: Any, rows: rollout_lib.Rows):
    def one(chunk, _):
      chunk = sharding.put(chunk, sharding.batch_shardings(
          chunk, self.mesh, self.rules))
      with jax.set_mesh(self.mesh):
        return self._stats(layout, self.mesh, self.rules, params, chunk)
    return batching.map_padded(one, rows, self.chunk_size)

  def stats(self, params: Any, rows: rollout_lib.Rows
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """The trained params' policy log-probs and values of LM rows, (B, T)."""
    return self._chunked(self.layout, params, rows)

  def ref_logp(self, rows: rollout_lib.Rows) -> np.ndarray:
    """The frozen reference's log-probs of LM rows, (B, T) f32: under the
    policy's distribution without top-k / top-p (`sampling.untruncated`)."""
    return self._chunked(Layout("policy", self.layout.lm_graphdef,
                                dist=sampling.untruncated(self.layout.dist)),
                         self.ref_params, rows)[0]

  def _exact_sample(self, layout: Layout, params: Any, prompt_BxP: Any,
                    mask_BxP: Any, cfg: sampling.SamplingConfig,
                    rng: jax.Array, prefix: Any = None,
                    width: int | None = None):
    def put(rows):
      return sharding.put(rows, sharding.batch_shardings(
          rows, self.mesh, self.rules))

    def logits_fn(rows):
      with jax.set_mesh(self.mesh):
        return self._lm_logits(layout, self.mesh, self.rules, params,
                               put(rows))

    def logprob_fn(logits, targets):
      # The behaviour policy: the distribution the tokens were drawn from.
      with jax.set_mesh(self.mesh):
        return _target_logprobs(sampling.distribution(cfg), self.mesh,
                                self.rules, logits,
                                put({"t": targets})["t"])

    return sampling.generate_exact(logits_fn, logprob_fn, prompt_BxP,
                                   mask_BxP, cfg, rng, prefix=prefix,
                                   width=width)

  def _exact_sampler(self, params: Any, cfg: sampling.SamplingConfig
                     ) -> Callable[..., Any]:
    """sample(prompt_BxP, mask_BxP, rng, prefix=None, width=None) in
    chunks of chunk_size rows (chunk i uses fold_in(rng, i)); `prefix`
    ((B, L) ids, (B,) lengths) and `width` lay rows out as the learner's
    (multi-turn rollouts, `sampling.generate_exact`)."""

    def sample(prompt_BxP, mask_BxP, rng, prefix=None, width=None):
      data = {"prompt": prompt_BxP, "mask": mask_BxP}
      if prefix is not None:
        data["prefix_ids"], data["prefix_len"] = prefix

      def one(chunk, i):
        pre = (None if prefix is None
               else (chunk["prefix_ids"], chunk["prefix_len"]))
        return self._exact_sample(self.layout, params, chunk["prompt"],
                                  chunk["mask"], cfg,
                                  jax.random.fold_in(rng, i), pre, width)
      return batching.map_padded(one, data, self.chunk_size)

    sample.takes_prefix = True  # type: ignore[attr-defined]
    return sample

  def sampler(self, params: Any, cfg: sampling.SamplingConfig
              ) -> Callable[..., Any]:
    """A sampler from the policy inside the trained params `params`:
    sample(prompt_BxP, mask_BxP, rng) -> (tokens, lengths, log-probs)."""
    if self.sampler_kind == "exact" and cfg.temperature > 0:
      # The trained tree as is: `lm_logits` runs the forward `stats` runs.
      return self._exact_sampler(params, cfg)
    return generation.make_sampler(self.generate, self.layout.lm_graphdef,
                                   self.layout.lm_params(params), cfg,
                                   self.chunk_size, self.sampling_devices)
