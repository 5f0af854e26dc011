"""The GRPO family's loss options against float64 numpy closed forms on
hand-built (B, T) arrays: the four aggregations, clip-higher, GSPO and
GSPO-token ratios, the group std's ddof; k microbatches of the generic train
step equal one batch for every aggregation; and the registered loss passes
every option through."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lifejax.losses import common, grpo
from lifejax.train import step as step_lib

# Four rows with 3, 5, 0 and 1 response tokens (row 2: none, e.g. filtered).
MASK = np.array([[0, 1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 1, 0],
                 [0, 0, 0, 0, 0, 0],
                 [0, 0, 0, 0, 0, 1]], np.float32)
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
         "seq-mean-token-sum-norm")
NORM = 7  # Dr. GRPO's constant: longer than any row's response
RATIO_LEVELS = ("token", "sequence", "sequence-token")


def _np_aggregate(x, mask, mode, norm=NORM):
  """(value, weight) in float64, loops over rows."""
  x, mask = np.asarray(x, np.float64), np.asarray(mask, np.float64)
  rows = [i for i in range(len(x)) if mask[i].sum() > 0]
  if mode == "token-mean":
    return (x * mask).sum() / mask.sum(), mask.sum()
  if mode == "seq-mean-token-mean":
    return np.mean([(x[i] * mask[i]).sum() / mask[i].sum()
                    for i in rows]), len(rows)
  if mode == "seq-mean-token-sum":
    return np.mean([(x[i] * mask[i]).sum() for i in rows]), len(rows)
  assert mode == "seq-mean-token-sum-norm"
  return (x * mask).sum() / (len(x) * norm), len(x)


def _case(seed=0):
  """Row log-ratios centred on +0.3 (A > 0: clipped), -0.35 (A > 0: the
  lower edge does not bind), none (empty row) and +0.1, +-0.1 per token."""
  rng = np.random.default_rng(seed)
  logp = (-rng.random(MASK.shape) * 2 - 0.1).astype(np.float32)
  offset = np.array([0.3, -0.35, 0.0, 0.1])[:, None]
  old = (logp - offset - rng.uniform(-0.1, 0.1, MASK.shape)).astype(
      np.float32)
  ref = (logp + rng.normal(0, 0.3, MASK.shape)).astype(np.float32)
  adv = np.array([1.2, 0.5, -0.7, -1.5], np.float32)
  return logp, old, ref, adv, MASK


@pytest.mark.parametrize("mode", MODES + ("sequence", "token"))
def test_aggregations_match_closed_form(mode):
  x = np.random.default_rng(1).normal(size=MASK.shape).astype(np.float32)
  aggregate, _ = grpo.aggregation_fns(
      mode, NORM if mode == grpo.NORMALIZED else 0)
  value, weight = aggregate(jnp.asarray(x), jnp.asarray(MASK))
  alias = {"sequence": "seq-mean-token-mean", "token": "token-mean"}
  want, want_w = _np_aggregate(x, MASK, alias.get(mode, mode))
  np.testing.assert_allclose(value, want, rtol=1e-6)
  assert float(weight) == want_w


def test_aggregations_differ_and_need_their_options():
  x = np.random.default_rng(1).normal(size=MASK.shape)
  values = {m: _np_aggregate(x, MASK, m)[0] for m in MODES}
  assert len({round(v, 6) for v in values.values()}) == 4
  with pytest.raises(ValueError, match="norm_length"):
    grpo.aggregation_fns("seq-mean-token-sum-norm")
  with pytest.raises(ValueError, match="norm_length=5 is set"):
    grpo.aggregation_fns("token-mean", 5)
  with pytest.raises(KeyError, match="token-sum"):
    grpo.aggregation_fns("token-sum")


def _np_token_loss(logp, old, ref, adv, mask, *, low, high, kl_coef, level):
  """Per-token loss, clipped indicator and k3 in float64 by loops."""
  logp, old, ref = (np.asarray(a, np.float64) for a in (logp, old, ref))
  b, t = logp.shape
  loss, clipped = np.zeros((b, t)), np.zeros((b, t))
  k3 = np.exp(ref - logp) - (ref - logp) - 1
  for i in range(b):
    n = mask[i].sum()
    seq = (sum((logp[i, j] - old[i, j]) for j in range(t) if mask[i, j])
           / n if n else 0.0)
    for j in range(t):
      log_rho = logp[i, j] - old[i, j] if level == "token" else seq
      rho = np.exp(log_rho)
      surr = min(rho * adv[i], np.clip(rho, 1 - low, 1 + high) * adv[i])
      clipped[i, j] = float(surr < rho * adv[i])
      loss[i, j] = -surr + kl_coef * k3[i, j]
  return loss, clipped, k3


@pytest.mark.parametrize("level", RATIO_LEVELS)
@pytest.mark.parametrize("high", [0.2, 0.28])
def test_token_loss_clip_higher_and_gspo_closed_form(level, high):
  logp, old, ref, adv, mask = _case()
  loss, kl, clipped = grpo.grpo_token_loss(
      logp, old, ref, adv, clip_eps=0.2, kl_coef=0.1, clip_eps_high=high,
      importance_sampling_level=level, mask_BxT=mask)
  want, want_clipped, k3 = _np_token_loss(
      logp, old, ref, adv, mask, low=0.2, high=high, kl_coef=0.1,
      level=level)
  on = mask > 0  # a sequence ratio is only defined where the row has tokens
  np.testing.assert_allclose(np.asarray(loss)[on], want[on], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(clipped)[on], want_clipped[on])
  np.testing.assert_allclose(kl, k3, rtol=1e-5, atol=1e-6)
  assert 0 < want_clipped[on].sum() < on.sum()


def test_clip_higher_changes_only_the_upper_edge():
  """rho = 1.25 with A > 0 is clipped at 1.2 but not at 1.28; rho = 0.7
  with A < 0 is clipped at 0.8 either way."""
  logp = np.log(np.array([[1.25, 0.7]], np.float32))
  old = np.zeros_like(logp)
  for adv, rho, want in ((1.0, 1.25, (-1.2, -1.25)),
                         (-1.0, 0.7, (0.8, 0.8))):
    col = [1.25, 0.7].index(rho)
    for high, expect in zip((0.2, 0.28), want):
      loss, _, _ = grpo.grpo_token_loss(
          logp, old, None, np.array([adv], np.float32), clip_eps=0.2,
          kl_coef=0.0, clip_eps_high=high)
      np.testing.assert_allclose(loss[0, col], expect, rtol=1e-6)


def _objective_grads(configs, logp, old, adv, mask):
  """{(level, aggregation): d loss / d logp}, one compiled program."""
  batch = {"loss_mask": mask, "old_logp": old, "advantages": adv}
  objectives = {(level, agg): grpo.make_grpo_objective(
      kl_coef=0.0, aggregation=agg, importance_sampling_level=level,
      norm_length=NORM if agg == grpo.NORMALIZED else 0)
                for level, agg in configs}
  return jax.jit(lambda lp: {
      key: jax.grad(lambda x, f=f: f(x, batch)[0])(lp)
      for key, f in objectives.items()})(jnp.asarray(logp))


def test_gspo_gradient_closed_form_and_gspo_token_equivalence():
  """GSPO under seq-mean-token-mean: d loss / d logp_it =
  -A_i s_i / (|y_i| N) where the unclipped branch is taken, else 0.
  GSPO-token has the same value and, with one advantage per sample, the same
  gradient under every aggregation; the token-level ratio's differs."""
  logp, old, _, adv, mask = _case()
  grads = _objective_grads(
      [(level, agg) for level in RATIO_LEVELS for agg in MODES],
      logp, old, adv, mask)
  grad = np.asarray(grads["sequence", "seq-mean-token-mean"])
  rows = [i for i in range(4) if mask[i].sum()]
  want = np.zeros(mask.shape)
  for i in rows:
    n = mask[i].sum()
    s = np.exp(np.sum((np.float64(logp[i]) - old[i]) * mask[i]) / n)
    unclipped = s * adv[i] <= np.clip(s, 0.8, 1.2) * adv[i]
    want[i] = -adv[i] * s / (n * len(rows)) * mask[i] * unclipped
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
  assert np.count_nonzero(want) == 6  # rows 1 and 3 are not clipped
  for agg in MODES:
    g_seq = np.asarray(grads["sequence", agg])
    np.testing.assert_allclose(grads["sequence-token", agg], g_seq,
                               rtol=1e-5, atol=1e-7)
    # Row 1 (5 tokens, unclipped): per-token ratios e^(+-0.1) apart.
    g_token = np.asarray(grads["token", agg])[1]
    assert (np.abs(g_token - g_seq[1]).max()
            > 0.02 * np.abs(g_seq[1]).max() > 0)


def test_group_std_ddof():
  scores = np.array([1.0, 2.0, 4.0, 7.0, 3.0, 3.0, 3.0, 3.0], np.float32)
  for ddof in (0, 1):
    adv = np.asarray(grpo.group_advantages(scores, 4, eps=1e-4, ddof=ddof))
    g = scores[:4].astype(np.float64)
    want = (g - g.mean()) / (np.std(g, ddof=ddof) + 1e-4)
    np.testing.assert_allclose(adv[:4], want, rtol=1e-5)
    assert np.all(adv[4:] == 0.0)
  # ddof = 1 divides by a std larger by sqrt(G / (G - 1)).
  a0, a1 = (np.asarray(grpo.group_advantages(scores, 4, eps=0.0, ddof=d))
            for d in (0, 1))
  np.testing.assert_allclose(a0[:4] / a1[:4], np.sqrt(4 / 3), rtol=1e-6)
  with pytest.raises(ValueError, match="ddof=2"):
    grpo.group_advantages(scores, 4, ddof=2)


@pytest.mark.parametrize("mode", MODES)
def test_objective_matches_numpy_with_metrics(mode):
  """The whole objective (GSPO, clip-higher, KL) for each aggregation;
  metrics are means with the loss's weight."""
  logp, old, ref, adv, mask = _case()
  objective = grpo.make_grpo_objective(
      kl_coef=0.05, aggregation=mode, clip_eps_high=0.28,
      importance_sampling_level="sequence",
      norm_length=NORM if mode == grpo.NORMALIZED else 0)
  loss, metrics = objective(jnp.asarray(logp), {
      "loss_mask": mask, "old_logp": old, "ref_logp": ref,
      "advantages": adv})
  per_token, clipped, k3 = _np_token_loss(
      logp, old, ref, adv, mask, low=0.2, high=0.28, kl_coef=0.05,
      level="sequence")
  want, weight = _np_aggregate(per_token, mask, mode)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(metrics["weight"]) == weight
  np.testing.assert_allclose(
      metrics["policy_loss"], want - 0.05 * _np_aggregate(k3, mask, mode)[0],
      rtol=1e-4, atol=1e-6)
  mean_mode = {"token-mean": "token-mean"}.get(mode, "seq-mean-token-mean")
  if mode == grpo.NORMALIZED:  # a mean over all rows (empty ones count 0)
    def per_row_mean(x):
      return np.mean([(x[i] * mask[i]).sum() / max(mask[i].sum(), 1)
                      for i in range(len(x))])
    want_kl, want_clip = per_row_mean(k3), per_row_mean(clipped)
  else:
    want_kl = _np_aggregate(k3, mask, mean_mode)[0]
    want_clip = _np_aggregate(clipped, mask, mean_mode)[0]
  np.testing.assert_allclose(metrics["kl"], want_kl, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], want_clip, rtol=1e-6)
  assert 0 < float(metrics["clip_fraction"]) < 1


# -- k microbatches == one batch -----------------------------------------------


def _linear_loss_fn(objective):
  """A 'policy' whose log-probs are log_sigmoid(x w + c): per row, so the
  train step can split rows into microbatches."""
  def loss_fn(params, batch, rng):
    del rng
    logp = jax.nn.log_sigmoid(batch["x"] * params["w"][None, :]
                              + params["c"])
    return objective(logp, batch)
  return loss_fn


# Every aggregation, with each ratio level once.
CONFIGS = [("token-mean", "token"), ("seq-mean-token-mean", "sequence"),
           ("seq-mean-token-sum", "token"),
           ("seq-mean-token-sum-norm", "sequence-token")]


def test_microbatches_equal_one_batch_for_every_mode():
  """One SGD step at lr 1 with 4 microbatches (strided rows i, i + 4, with
  different token and sequence counts: rows 2 and 6 are empty) moves the
  params by exactly the whole batch's -gradient and reports its loss and
  metrics."""
  rng = np.random.default_rng(3)
  b, t = 8, MASK.shape[1]
  x = rng.normal(size=(b, t)).astype(np.float32)
  params = {"w": rng.normal(size=t).astype(np.float32),
            "c": np.float32(-0.3)}
  logp0 = -np.log1p(np.exp(-(x * params["w"][None, :] + params["c"])))
  offset = rng.uniform(-0.35, 0.35, (b, 1))
  batch = {"x": x, "loss_mask": np.tile(MASK, (2, 1)),
           "old_logp": (logp0 - offset - rng.uniform(-0.1, 0.1, (b, t))
                        ).astype(np.float32),
           "ref_logp": (logp0 + rng.normal(0, 0.3, (b, t))).astype(
               np.float32),
           "advantages": rng.normal(size=b).astype(np.float32)}
  sgd = optax.sgd(1.0)
  state = {"step": np.int32(0), "params": params,
           "opt_state": sgd.init(params), "rng": jax.random.PRNGKey(0)}
  loss_fns = {cfg: _linear_loss_fn(grpo.make_grpo_objective(
      kl_coef=0.05, aggregation=cfg[0], clip_eps_high=0.28,
      importance_sampling_level=cfg[1],
      norm_length=NORM if cfg[0] == grpo.NORMALIZED else 0))
              for cfg in CONFIGS}
  steps = {cfg: step_lib.build_train_step(f, sgd, num_microbatches=4)
           for cfg, f in loss_fns.items()}

  def run(s, bt):
    whole = {cfg: jax.value_and_grad(lambda p, f=f: f(p, bt, None),
                                     has_aux=True)(s["params"])
             for cfg, f in loss_fns.items()}
    # A plain mean of the 4 microbatches' token-mean losses, for contrast.
    naive = jnp.mean(jnp.stack([
        loss_fns[CONFIGS[0]](s["params"], jax.tree.map(
            lambda v, i=i: v[i::4], bt), None)[0] for i in range(4)]))
    return whole, {cfg: f(s, bt) for cfg, f in steps.items()}, naive

  # One program for all of them: compiling is what costs here.
  whole, micro, naive = jax.jit(run)(state, batch)
  for cfg in CONFIGS:
    (loss, metrics), grads = whole[cfg]
    new_state, got = micro[cfg]
    np.testing.assert_allclose(got["loss"], loss, rtol=2e-6, err_msg=cfg)
    for key in ("weight", "kl", "clip_fraction", "policy_loss"):
      np.testing.assert_allclose(got[key], metrics[key], rtol=2e-6,
                                 atol=1e-7, err_msg=f"{key} {cfg}")
    for name in ("w", "c"):
      np.testing.assert_allclose(
          new_state["params"][name] - params[name], -grads[name],
          rtol=1e-5, atol=1e-7, err_msg=f"{name} {cfg}")
    assert max(np.abs(g).max() for g in jax.tree.leaves(grads)) > 1e-3
    assert 0 < float(metrics["clip_fraction"]) < 1
  # The data tells the weightings apart: a plain mean of the microbatch
  # losses is far from the token-mean loss.
  assert abs(float(naive) - float(whole[CONFIGS[0]][0][0])) > 1e-3


# -- the registered loss ------------------------------------------------------


def test_registered_loss_passes_every_option(tiny_lm, helpers):
  """Dr. GRPO + GSPO-token + clip-higher through `make_grpo_loss_fn` on a
  tiny LM equals the numpy objective on the LM's float64 log-probs."""
  rng = np.random.default_rng(0)
  rows = helpers.lm_rows(rng, 4, [2, 3, 1, 4], [5, 2, 7, 3])
  rows.update(advantages=np.array([1.0, -0.5, 0.8, -1.2], np.float32),
              # filled below, from the LM's own log-probs
              old_logp=np.zeros(rows["loss_mask"].shape, np.float32),
              ref_logp=np.zeros(rows["loss_mask"].shape, np.float32))
  loss_fn = grpo.make_grpo_loss_fn(
      tiny_lm.graphdef, kl_coef=0.1, aggregation="seq-mean-token-sum-norm",
      norm_length=9, clip_eps_low=0.1, clip_eps_high=0.15,
      importance_sampling_level="sequence-token")

  @jax.jit
  def run(params, batch, shift, noise):
    logits = nnx.merge(tiny_lm.graphdef, params)(
        batch["tokens"], batch["positions"], batch["segment_ids"])
    logp = common.token_logprobs(logits, batch["targets"])
    batch = dict(batch, old_logp=logp - shift, ref_logp=logp + noise)
    return logits, batch, loss_fn(params, batch, None)

  shift = (np.array([[0.25], [-0.2], [0.05], [0.3]])
           + rng.uniform(-0.1, 0.1, rows["loss_mask"].shape))
  noise = rng.normal(0, 0.2, rows["loss_mask"].shape)
  logits, rows, (loss, metrics) = run(tiny_lm.params, rows,
                                      shift.astype(np.float32),
                                      noise.astype(np.float32))
  logp = np.take_along_axis(
      helpers.np_log_softmax(np.asarray(logits, np.float64)),
      np.asarray(rows["targets"])[..., None], axis=-1)[..., 0]
  mask = np.asarray(rows["loss_mask"])
  per_token, _, _ = _np_token_loss(
      logp, logp - shift, logp + noise, np.asarray(rows["advantages"]),
      mask, low=0.1, high=0.15, kl_coef=0.1, level="sequence")
  want, weight = _np_aggregate(per_token, mask, "seq-mean-token-sum-norm",
                               norm=9)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(metrics["weight"]) == weight == 4
  assert float(metrics["clip_fraction"]) > 0
  with pytest.raises(KeyError, match="importance_sampling_level"):
    grpo.make_grpo_loss_fn(None, importance_sampling_level="seq")
  with pytest.raises(ValueError, match="clip range"):
    grpo.make_grpo_loss_fn(None, clip_eps_low=1.0)
