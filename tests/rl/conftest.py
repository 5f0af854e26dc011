"""A token-level toy for the RL tests: a tiny random LM, prompts of random
ids, and a score that prefers a set of tokens (no tokenizer, no world)."""

from __future__ import annotations

import functools
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.eval import generation
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import fit, iteration as iteration_lib, layout as layout_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig

CFG = TransformerConfig(vocab_size=32, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)
MESH_CFG = sharding.MeshConfig(data=1, fsdp=-1, model=1)
PREFERRED = np.arange(1, 9)  # the toy reward: share of tokens in 1..8
STOP_ID = 31


@functools.lru_cache(maxsize=None)
def random_lm(cfg: TransformerConfig = CFG, seed: int = 0,
              std: float = 0.05) -> tuple[nnx.GraphDef, dict]:
  """N(0, std) params in the LM's abstract shapes (unit norm gains)."""
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if str(path[-1].key) == "scale":
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      fill, nnx.to_pure_dict(abstract))


def prompt_records(n: int, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{"id": i, "prompt_ids": rng.integers(
      9, 31, int(rng.integers(2, 7))).tolist()} for i in range(n)]


def codec(stop: bool = False) -> rollout_lib.Codec:
  return rollout_lib.Codec(encode=lambda r: list(r["prompt_ids"]),
                           decode=None, stop_ids=(STOP_ID,) if stop else (),
                           pad_id=0)


def preferred_share(rollout: rollout_lib.Rollout) -> np.ndarray:
  n = rollout.response_BxN.shape[1]
  real = np.arange(n)[None, :] < rollout.lengths_B[:, None]
  hit = np.isin(rollout.response_BxN, PREFERRED) & real
  return (hit.sum(1) / np.maximum(real.sum(1), 1)).astype(np.float32)


def build_forwards(algorithm, kind, *, lm_params=None, ref_params=None,
                   sampling_devices=1):
  """The rollout forwards of a `kind` layout whose trained params start
  from `lm_params`: sampler(cfg), stats(rows), ref_logp(rows)."""
  del algorithm  # the forwards do not depend on the loss
  mesh = sharding.make_mesh(MESH_CFG)
  layout, abstract, specs = layout_lib.make_layout(kind, CFG, mesh,
                                                   MESH_CFG.rules)
  if lm_params is None:
    _, lm_params = random_lm()
  params = jax.device_put(
      layout_lib.assemble_params(layout, abstract, lm_params),
      sharding.named(mesh, specs))
  forwards = layout_lib.PolicyForwards(
      layout, mesh, MESH_CFG.rules,
      lm_params if ref_params is None else ref_params,
      sampling_devices=sampling_devices)
  return types.SimpleNamespace(
      sampler=lambda cfg: forwards.sampler(params, cfg),
      stats=lambda rows: forwards.stats(params, rows),
      ref_logp=forwards.ref_logp)


def run_toy(run_dir, algorithm, kind, *, iterations, prompts=16, epochs=4,
            minibatch=8, lr=1e-2, stop=False, seed=0, checkpoint_every=0,
            lora_cfg=None, loss_scale=None, eval_records=(), eval_every=0,
            early_stop_patience=0, sampling_devices=1):
  """An RL run on the toy (LoRA with `lora_cfg`); returns (summary,
  fit.RLRun)."""
  rollout_cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6,
                                          sampling_devices=sampling_devices)
  loop = iteration_lib.RLLoopConfig(
      num_iterations=iterations, prompts_per_iteration=prompts,
      epochs=epochs, minibatch_size=minibatch, samples_every=0,
      checkpoint_every=checkpoint_every, eval_every=eval_every,
      early_stop_patience=early_stop_patience, tensorboard=False,
      progress=False)
  _, lm_params = random_lm()
  run = fit.train(
      run_dir=str(run_dir), algorithm=algorithm, layout_kind=kind,
      policy_cfg=CFG, lm_params=lm_params,
      mesh=sharding.make_mesh(MESH_CFG), rules=MESH_CFG.rules,
      prompts=iteration_lib.PromptBatches(prompt_records(16), prompts,
                                          seed=0),
      codec=codec(stop), scorer=preferred_share, rollout_cfg=rollout_cfg,
      loop_cfg=loop,
      optimizer_cfg=OptimizerConfig(learning_rate=lr, schedule="constant",
                                    warmup_steps=0, weight_decay=0.0),
      checkpoint_cfg=CheckpointConfig(async_save=False), seed=seed,
      samples_dir=os.path.join(str(run_dir), "samples"), lora_cfg=lora_cfg,
      loss_scale=loss_scale, eval_records=eval_records)
  return run.summary, run


@functools.lru_cache(maxsize=None)
def eval_rows(seed: int = 5) -> dict[str, np.ndarray]:
  """Fixed rows to measure policies on: 16 prompts + reference samples."""
  graphdef, ref = random_lm()
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6)
  sample = generation.make_sampler(
      generation.default_sample_fn(), graphdef, ref,
      cfg.sampling_config((), 0))
  return rollout_lib.collect(prompt_records(16, seed), codec=codec(),
                             cfg=cfg, sample=sample,
                             rng=jax.random.PRNGKey(seed)).rows


@functools.partial(jax.jit, static_argnums=0)
def _exact(graphdef, params, ref, rows):
  def log_probs(p):
    model = nnx.merge(graphdef, p)
    return jax.nn.log_softmax(model(rows["tokens"], rows["positions"],
                                    rows["segment_ids"]), axis=-1)

  lp, lq = log_probs(params), log_probs(ref)
  mask = rows["loss_mask"]
  kl = jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
  mass = jnp.sum(jnp.exp(lp)[..., PREFERRED], axis=-1)
  return jnp.sum(kl * mask) / mask.sum(), jnp.sum(mass * mask) / mask.sum()


def exact_stats(params: dict, rows: dict[str, np.ndarray]
                ) -> tuple[float, float]:
  """(KL(policy || reference) per response token, policy mass on the
  preferred tokens), exact sums over the vocabulary on fixed rows: no
  sampling noise."""
  graphdef, ref = random_lm()
  kl, mass = _exact(graphdef, params, ref, rows)
  return float(kl), float(mass)


@pytest.fixture(scope="session")
def toy() -> types.SimpleNamespace:
  """The toy's pieces as plain functions (test modules cannot import
  conftest)."""
  return types.SimpleNamespace(
      cfg=CFG, mesh_cfg=MESH_CFG, preferred=PREFERRED, stop_id=STOP_ID,
      random_lm=random_lm, prompt_records=prompt_records, codec=codec,
      preferred_share=preferred_share, build_forwards=build_forwards,
      run_toy=run_toy, eval_rows=eval_rows, exact_stats=exact_stats)
