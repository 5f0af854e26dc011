"""Truly on-policy RL (issue 20.4): the sampler's own log-probs, the
learner's log-probs under the distribution actually sampled (temperature,
top-k, top-p, vocab limit), and the exact sampler whose log-probs equal the
learner's recomputation bit for bit."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lifejax import sharding
from lifejax.losses import common, grpo as grpo_loss
from lifejax.model import sampling
from lifejax.model.config import TransformerConfig
from lifejax.rl import fit, grpo as grpo_lib, iteration as iteration_lib
from lifejax.rl import layout as layout_lib, rollout as rollout_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.optim import OptimizerConfig

# Wider than the toy (d 32, vocab 32) so that the KV-cache kernels and the
# learner's forward round differently: the mismatch the exact sampler removes.
WIDE = TransformerConfig(vocab_size=256, d_model=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, mlp_dim=256)
TRUNCATED = dict(temperature=0.8, top_k=40, top_p=0.9)


def _reference_logprobs(logits, ids, temperature, top_k, top_p, vocab_limit):
  """Independent numpy: drop ids >= vocab_limit, divide by T, keep the k
  largest, keep the smallest prefix (by probability) with mass >= top_p,
  renormalize."""
  x = np.asarray(logits, np.float64).copy()
  if vocab_limit:
    x[..., vocab_limit:] = -np.inf
  x = x / temperature
  out = np.zeros(ids.shape)
  for idx in np.ndindex(ids.shape):
    row = x[idx]
    keep = np.isfinite(row)
    if top_k:
      kth = np.sort(row[keep])[-top_k]
      keep &= row >= kth
    z = np.where(keep, row, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    kept = np.zeros_like(keep)
    kept[order[before < top_p]] = True
    z = np.where(kept, row, -np.inf)
    q = np.exp(z - z.max())
    q /= q.sum()
    out[idx] = np.log(q[ids[idx]])
  return out


def test_sampled_logprobs_equal_the_truncated_renormalized_distribution():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (3, 4, 50)).astype(np.float32)
  dist = sampling.Distribution(vocab_limit=45, **TRUNCATED)
  # Score ids that the truncation keeps (the top token of each row).
  x = np.where(np.arange(50) < 45, logits, -np.inf)
  ids = np.argmax(x, -1)
  ids[0, 0] = np.argsort(-x[0, 0])[1]  # a second-ranked id too
  got = np.asarray(sampling.sampled_logprobs(jnp.asarray(logits),
                                             jnp.asarray(ids), dist))
  want = _reference_logprobs(logits, ids, vocab_limit=45, **TRUNCATED)
  np.testing.assert_allclose(got, want, atol=2e-5)
  # The full softmax is the default and differs under truncation.
  full = np.asarray(common.target_logprobs(jnp.asarray(logits),
                                             jnp.asarray(ids)))
  assert np.all(full < got - 1e-3)


def test_draws_follow_the_logprobs_the_sampler_reports():
  logits = jnp.log(jnp.asarray(np.tile([0.4, 0.25, 0.2, 0.1, 0.05],
                                       (6000, 1))))
  cfg = sampling.SamplingConfig(temperature=1.0, top_p=0.8)
  tok, logp = sampling.choose_with_logprob(logits, jax.random.PRNGKey(0), cfg)
  tok, logp = np.asarray(tok), np.asarray(logp)
  freq = np.bincount(tok, minlength=5) / len(tok)
  want = np.asarray([0.4, 0.25, 0.2, 0, 0]) / 0.85  # 0.4+0.25 < 0.8
  np.testing.assert_allclose(freq, want, atol=0.02)
  np.testing.assert_allclose(np.exp(logp), want[tok], rtol=1e-5)
  greedy = sampling.choose_with_logprob(logits[:4], jax.random.PRNGKey(0),
                                        sampling.SamplingConfig())
  assert np.all(np.asarray(greedy[1]) == 0)
  with pytest.raises(ValueError, match="temperature > 0"):
    sampling.Distribution(temperature=0.0)


def _forwards(dist, sampler, chunk_size=0):
  from tests.rl.conftest import random_lm  # noqa: the toy's initializer
  mesh_cfg = sharding.MeshConfig(data=1, fsdp=-1, model=1)
  mesh = sharding.make_mesh(mesh_cfg)
  layout, abstract, specs = layout_lib.make_layout(
      "policy", WIDE, mesh, mesh_cfg.rules, dist=dist)
  _, lm = random_lm(WIDE, 0, 0.08)
  params = jax.device_put(layout_lib.assemble_params(layout, abstract, lm),
                          sharding.named(mesh, specs))
  return layout_lib.PolicyForwards(layout, mesh, mesh_cfg.rules, lm,
                                   chunk_size, sampler=sampler), params


def _rollout(sampler, ratio, chunk_size=0, **knobs):
  cfg = rollout_lib.RolloutConfig(prompt_len=12, max_new_tokens=10,
                                  ratio_distribution=ratio, sampler=sampler,
                                  chunk_size=chunk_size, **knobs)
  stop, vocab_limit = 250, 252
  fw, params = _forwards(cfg.learner_distribution(vocab_limit), sampler,
                         chunk_size)
  rng = np.random.default_rng(1)
  records = [{"id": i, "ids": rng.integers(3, 240, int(rng.integers(
      3, 12))).tolist()} for i in range(12)]
  codec = rollout_lib.Codec(encode=lambda r: r["ids"], decode=None,
                            stop_ids=(stop,), pad_id=0,
                            vocab_limit=vocab_limit)
  return rollout_lib.collect(
      records, codec=codec, cfg=cfg,
      sample=fw.sampler(params, cfg.sampling_config((stop,), 0, vocab_limit)),
      rng=jax.random.PRNGKey(3), group_size=2,
      stats=lambda rows: fw.stats(params, rows), ref_logp=fw.ref_logp)


@pytest.mark.parametrize("chunk_size", [0, 8])
def test_exact_sampler_logprobs_are_bitwise_the_learners(chunk_size):
  ro = _rollout("exact", "sampled", chunk_size, **TRUNCATED)
  mask = ro.rows["loss_mask"] > 0
  assert mask.sum() > 100
  # The sampler's log-probs of the tokens it drew, and the learner's
  # recomputation of the finished rows with the same params: equal bits.
  np.testing.assert_array_equal(ro.sample_logp[mask], ro.old_logp[mask])
  m = rollout_lib.rollout_metrics(ro)
  assert m["logp_mismatch_max"] == 0.0 and m["behaviour_kl"] == 0.0
  # The reference (the same params here): tempered, never truncated, so
  # it gives the draws less probability than the truncated policy.
  assert np.all(ro.ref_logp[mask] < ro.old_logp[mask])
  assert np.all(np.isfinite(ro.ref_logp[mask]))


def test_kv_cache_sampler_mismatch_is_measured_and_small():
  kv = _rollout("kv_cache", "sampled", **TRUNCATED)
  ex = _rollout("exact", "sampled", **TRUNCATED)
  # Same random stream and nearly equal logits: the same draws.
  same = np.mean(kv.response_BxN == ex.response_BxN)
  assert same > 0.95, same
  mask = kv.rows["loss_mask"] > 0
  diff = np.abs(kv.sample_logp - kv.old_logp)[mask]
  m = rollout_lib.rollout_metrics(kv)
  assert m["logp_mismatch_max"] == pytest.approx(float(diff.max()))
  assert m["logp_mismatch_max"] < 1e-4  # different kernels, f32 rounding


def test_full_softmax_ratio_is_off_policy_under_truncation():
  """With ratio_distribution="full" the learner scores truncated samples
  under the untruncated softmax: the sampler's log-probs and the
  learner's differ by the truncated mass; with "sampled" they agree."""
  full = _rollout("exact", "full", **TRUNCATED)
  m = rollout_lib.rollout_metrics(full)
  assert m["logp_mismatch_mean"] > 0.05
  assert m["behaviour_kl"] > 0.1  # the sampler puts more mass on its draws


def test_grpo_ratio_is_one_at_the_sampling_params():
  """The loss under the sampled distribution, at the params that sampled:
  the ratio is 1 (to the rounding of the train step's forward) and nothing
  is clipped; under the full softmax the same batch is far off-policy."""
  from tests.rl.conftest import random_lm  # noqa
  ro = _rollout("exact", "sampled", **TRUNCATED)
  graphdef, lm = random_lm(WIDE, 0, 0.08)
  batch = {k: jnp.asarray(v) for k, v in ro.rows.items()}
  batch.update(old_logp=jnp.asarray(ro.old_logp),
               ref_logp=jnp.asarray(ro.ref_logp),
               advantages=jnp.asarray(np.linspace(-1, 1, ro.batch_size),
                                      jnp.float32))
  dist = sampling.Distribution(vocab_limit=252, **TRUNCATED)
  on = grpo_loss.make_grpo_loss_fn(graphdef, logprob_dist=dist,
                                   clip_eps=0.01)
  off = grpo_loss.make_grpo_loss_fn(graphdef, clip_eps=0.01)
  _, m_on = jax.jit(on)(lm, batch, None)
  _, m_off = jax.jit(off)(lm, batch, None)
  assert float(m_on["clip_fraction"]) == 0.0
  assert 0 < float(m_on["kl"]) < 1.0  # the untruncated reference: finite
  assert float(m_off["clip_fraction"]) > 0.3


def test_rollout_config_checks():
  with pytest.raises(ValueError, match="ratio_distribution"):
    rollout_lib.RolloutConfig(ratio_distribution="truncated")
  with pytest.raises(ValueError, match="sampler"):
    rollout_lib.RolloutConfig(sampler="vllm")
  with pytest.raises(ValueError, match="temperature > 0"):
    rollout_lib.RolloutConfig(ratio_distribution="sampled", temperature=0.0)
  assert rollout_lib.RolloutConfig().learner_distribution(10) is None


def test_exact_on_policy_grpo_run(toy, tmp_path):
  """A GRPO run with the exact sampler and the sampled distribution: every
  iteration's logged sampler-vs-learner mismatch is exactly 0, and the
  policy learns the toy reward."""
  cfg = rollout_lib.RolloutConfig(prompt_len=8, max_new_tokens=6,
                                  temperature=0.9, top_p=0.95,
                                  ratio_distribution="sampled",
                                  sampler="exact")
  loop = iteration_lib.RLLoopConfig(
      num_iterations=3, prompts_per_iteration=8, epochs=2, minibatch_size=16,
      samples_every=0, tensorboard=False, progress=False)
  _, lm = toy.random_lm()
  algo = grpo_lib.GRPO(grpo_lib.GRPOConfig(group_size=4, kl_coef=0.0))
  run = fit.train(
      run_dir=str(tmp_path), algorithm=algo, layout_kind="policy",
      policy_cfg=toy.cfg, lm_params=lm,
      mesh=sharding.make_mesh(toy.mesh_cfg), rules=toy.mesh_cfg.rules,
      prompts=iteration_lib.PromptBatches(toy.prompt_records(16), 8, seed=0),
      codec=toy.codec(), scorer=toy.preferred_share, rollout_cfg=cfg,
      loop_cfg=loop,
      optimizer_cfg=OptimizerConfig(learning_rate=3e-2, schedule="constant",
                                    warmup_steps=0, weight_decay=0.0),
      checkpoint_cfg=CheckpointConfig(async_save=False))
  assert algo.loss_kwargs["logprob_dist"] == sampling.Distribution(
      temperature=0.9, top_p=0.95)
  from lifejax.data.jsonl import read_jsonl
  from lifejax.run.layout import RunDir
  rows = read_jsonl(RunDir(str(tmp_path)).metrics)
  assert len(rows) == 3
  assert all(r["logp_mismatch_max"] == 0.0 for r in rows)
  assert all(np.isfinite(r["kl"]) and np.isfinite(r["kl_k3"]) for r in rows)
  assert rows[-1]["reward"] > rows[0]["reward"]
  assert run.summary["final_iteration"] == 3
