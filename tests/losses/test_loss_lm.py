"""The masked LM loss and z-loss against a float64 numpy hand computation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.losses.lm import ROW_PREFIX, lm_loss, token_cross_entropy


def _case(seed: int = 0):
  rng = np.random.default_rng(seed)
  b, t, v = 3, 5, 11
  logits = (3.0 * rng.standard_normal((b, t, v))).astype(np.float32)
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  # Uneven weights: a padded row end, fractional weights, one empty row.
  mask = np.array([[1, 1, 1, 0, 0],
                   [0.5, 1, 2, 1, 0.25],
                   [0, 0, 0, 0, 0]], np.float32)
  return logits, targets, mask


def _numpy_reference(logits, targets, mask, coef):
  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
  log_probs = x - lse[..., None]
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  w = mask.astype(np.float64)
  ce = (nll * w).sum() / w.sum()
  z = coef * (lse ** 2 * w).sum() / w.sum()
  acc = ((x.argmax(-1) == targets) * w).sum() / w.sum()
  return ce, z, acc, nll, lse


@pytest.mark.parametrize("coef", [0.0, 1e-2])
def test_lm_loss_matches_numpy(coef: float):
  logits, targets, mask = _case()
  ce, z, acc, _, _ = _numpy_reference(logits, targets, mask, coef)
  loss, metrics = lm_loss(jnp.asarray(logits), jnp.asarray(targets),
                          jnp.asarray(mask), z_loss=coef)
  np.testing.assert_allclose(float(metrics["cross_entropy"]), ce, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["z_loss"]), z, rtol=1e-6,
                             atol=1e-12)
  np.testing.assert_allclose(float(loss), ce + z, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["accuracy"]), acc, rtol=1e-6)
  assert float(metrics["weight"]) == float(mask.sum())
  if coef:
    assert float(metrics["z_loss"]) > 1e-3 * float(loss)  # not negligible


def test_masked_tokens_do_not_matter():
  logits, targets, mask = _case()
  loss, _ = lm_loss(jnp.asarray(logits), jnp.asarray(targets),
                    jnp.asarray(mask), z_loss=1e-2)
  changed = logits.copy()
  changed[mask == 0] = 50.0 * np.random.default_rng(1).standard_normal(
      changed[mask == 0].shape)
  targets2 = np.where(mask == 0, 0, targets).astype(np.int32)
  loss2, _ = lm_loss(jnp.asarray(changed), jnp.asarray(targets2),
                     jnp.asarray(mask), z_loss=1e-2)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def test_token_cross_entropy_in_f32_from_bf16_logits():
  logits, targets, mask = _case(2)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  nll, lse = token_cross_entropy(bf16, jnp.asarray(targets))
  assert nll.dtype == lse.dtype == jnp.float32
  _, _, _, want_nll, want_lse = _numpy_reference(
      np.asarray(bf16.astype(jnp.float32)), targets, mask, 0.0)
  np.testing.assert_allclose(np.asarray(nll), want_nll, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(lse), want_lse, rtol=1e-5, atol=1e-5)


def test_all_masked_batch_gives_zero_not_nan():
  logits, targets, mask = _case()
  loss, metrics = lm_loss(jnp.asarray(logits), jnp.asarray(targets),
                          jnp.zeros_like(jnp.asarray(mask)), z_loss=1e-2)
  assert float(loss) == 0.0 and float(metrics["weight"]) == 0.0


def test_per_row_sums_match_numpy_and_leave_the_loss_alone():
  logits, targets, mask = _case()
  _, _, _, nll, _ = _numpy_reference(logits, targets, mask, 0.0)
  args = (jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  loss, metrics = lm_loss(*args, per_row=True)
  plain_loss, plain = lm_loss(*args)
  np.testing.assert_allclose(np.asarray(metrics[ROW_PREFIX + "loss_sum"]),
                             (nll * mask).sum(-1), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(metrics[ROW_PREFIX + "weight"]),
                                mask.sum(-1))
  assert float(loss) == float(plain_loss)
  assert set(metrics) - set(plain) == {ROW_PREFIX + "loss_sum",
                                       ROW_PREFIX + "weight"}


def test_eval_step_passes_rows_through_and_evaluate_collects_them():
  """build_eval_step weights the scalar metrics and leaves the per-row ones
  as they are; evaluate(per_row=) gets every row of weight > 0 across
  batches, whose sums make the token-weighted loss."""
  import jax  # pylint: disable=g-import-not-at-top
  from lifejax import sharding  # pylint: disable=g-import-not-at-top
  from lifejax.train import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from lifejax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  logits, targets, mask = _case()

  def loss_fn(params, batch, rng):
    del rng
    return lm_loss(params["scale"] * batch["logits"], batch["targets"],
                   batch["loss_mask"], per_row=True)

  mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sh = {"logits": rep, "targets": rep, "loss_mask": rep}
  step = step_lib.build_eval_step(loss_fn, {"scale": rep}, batch_sh, mesh,
                                  sharding.DEFAULT_RULES)
  batches = [{"logits": logits, "targets": targets, "loss_mask": mask},
             {"logits": logits[::-1], "targets": targets[::-1],
              "loss_mask": mask[::-1] * 2}]
  rows: list = []
  res = evaluate_lib.evaluate(step, {"scale": jnp.float32(1.0)},
                              iter(batches), batch_sh, per_row=rows)
  _, _, _, nll, _ = _numpy_reference(logits, targets, mask, 0.0)
  want = [((nll * mask).sum(-1)[i], mask.sum(-1)[i]) for i in (0, 1)]
  want += [(2 * (nll * mask).sum(-1)[i], 2 * mask.sum(-1)[i]) for i in (1, 0)]
  assert len(rows) == 4  # the empty row (weight 0) of each batch left out
  np.testing.assert_allclose(np.asarray(rows), np.asarray(want), rtol=1e-6)
  np.testing.assert_allclose(
      res["eval/loss"], sum(s for s, _ in rows) / sum(w for _, w in rows),
      rtol=1e-6)


def test_target_is_top_matches_argmax_and_counts_ties():
  """The accuracy's hit test is argmax(logits) == target on untied rows
  (f32 and bf16 logits), and a target tied for the max is a hit."""
  from lifejax.losses.lm import target_is_top
  r = np.random.default_rng(3)
  logits = r.normal(size=(4, 32, 97)).astype(np.float32)
  targets = r.integers(0, 97, (4, 32))
  targets[:, ::3] = logits.argmax(-1)[:, ::3]  # a third are hits
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.asarray(logits).astype(dtype)
    xs = np.asarray(x.astype(jnp.float32))
    unique = (xs == xs.max(-1, keepdims=True)).sum(-1) == 1
    want = np.asarray(jnp.argmax(x, -1)) == targets
    got = np.asarray(target_is_top(x, jnp.asarray(targets)))
    np.testing.assert_array_equal(got[unique], want[unique])
    assert unique.mean() > 0.9
    # Rows with a tied max (bf16 rounding makes a few): hit iff tied.
    tied_hit = np.take_along_axis(xs, targets[..., None], -1)[..., 0] == (
        xs.max(-1))
    np.testing.assert_array_equal(got[~unique], tied_hit[~unique])
    assert 0.3 < got.mean() < 0.5
  tied = np.zeros((1, 2, 5), np.float32)
  tied[0, 1, 2] = 1.0
  got = target_is_top(jnp.asarray(tied), jnp.asarray([[4, 3]]))
  np.testing.assert_array_equal(np.asarray(got), [[True, False]])
