"""The distillation loss against a float64 numpy closed form for each option
(forward / reverse KL, temperature, the hard-label mix alpha), its gradient
against the analytic one and finite differences, and the registered loss
function on tiny student / teacher LMs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.losses import distill, lm, registry

B, T, V = 3, 5, 11


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl_per_token(student, teacher, divergence, temp):
  """KL at temperature `temp` per (b, t), brute force in float64."""
  log_q = np_log_softmax(np.asarray(student, np.float64) / temp)
  log_p = np_log_softmax(np.asarray(teacher, np.float64) / temp)
  out = np.zeros(student.shape[:2])
  for b in range(student.shape[0]):
    for t in range(student.shape[1]):
      for v in range(student.shape[2]):
        if divergence == "forward":
          out[b, t] += np.exp(log_p[b, t, v]) * (log_p[b, t, v]
                                                 - log_q[b, t, v])
        else:
          out[b, t] += np.exp(log_q[b, t, v]) * (log_q[b, t, v]
                                                 - log_p[b, t, v])
  return out


def np_distill(student, teacher, targets, mask, divergence, temp, alpha):
  """The module docstring's loss and metrics, float64."""
  w = np.asarray(mask, np.float64)
  logp = np_log_softmax(student)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  ce = (nll * w).sum() / w.sum()
  kl = (np_kl_per_token(student, teacher, divergence, temp) * w).sum() / \
      w.sum()
  t_nll = -np.take_along_axis(np_log_softmax(teacher), targets[..., None],
                              -1)[..., 0]
  loss = alpha * ce + (1 - alpha) * temp ** 2 * kl
  return loss, {"cross_entropy": ce, "kl": kl,
                "teacher_cross_entropy": (t_nll * w).sum() / w.sum(),
                "weight": w.sum()}


def np_grad(student, teacher, targets, mask, divergence, temp, alpha):
  """d loss / d student logits, the analytic form in float64:
  forward: T (q_T - p_T); reverse: T q_T (log q_T - log p_T - KL_t);
  hard labels: softmax(z) - onehot(target); each weighted w_t / sum(w)."""
  w = np.asarray(mask, np.float64)[..., None] / np.sum(mask)
  log_q = np_log_softmax(student / temp)
  log_p = np_log_softmax(teacher / temp)
  q, p = np.exp(log_q), np.exp(log_p)
  if divergence == "forward":
    g_kd = temp * (q - p)
  else:
    kl = (q * (log_q - log_p)).sum(-1, keepdims=True)
    g_kd = temp * q * (log_q - log_p - kl)
  g_ce = np.exp(np_log_softmax(student)) - np.eye(student.shape[-1])[targets]
  return w * (alpha * g_ce + (1 - alpha) * g_kd)


@pytest.fixture(scope="module")
def logits():
  rng = np.random.default_rng(0)
  student = rng.normal(0, 2, (B, T, V)).astype(np.float32)
  teacher = rng.normal(0, 2, (B, T, V)).astype(np.float32)
  targets = rng.integers(0, V, (B, T)).astype(np.int32)
  mask = (rng.random((B, T)) > 0.3).astype(np.float32)
  mask[2] = 0.0  # a padding row
  mask[0, 0] = 0.5  # fractional weights count as weights
  return student, teacher, targets, mask


OPTIONS = [(d, temp, a) for d in ("forward", "reverse")
           for temp in (1.0, 2.0, 0.5) for a in (0.0, 0.3, 1.0)]


@pytest.mark.parametrize("divergence,temp,alpha", OPTIONS)
def test_loss_and_metrics_equal_the_numpy_closed_form(logits, divergence,
                                                      temp, alpha):
  student, teacher, targets, mask = logits
  loss, m = distill.distill_loss(
      jnp.asarray(student), jnp.asarray(teacher), targets, mask,
      divergence=divergence, temperature=temp, alpha=alpha)
  want, wm = np_distill(student, teacher, targets, mask, divergence, temp,
                        alpha)
  assert float(loss) == pytest.approx(want, rel=2e-5)
  for k, v in wm.items():
    assert float(m[k]) == pytest.approx(v, rel=2e-5), k


@pytest.mark.parametrize("divergence,temp,alpha", OPTIONS)
def test_gradient_equals_the_analytic_one_and_finite_differences(
    logits, divergence, temp, alpha):
  student, teacher, targets, mask = logits
  got = jax.grad(lambda z: distill.distill_loss(
      z, jnp.asarray(teacher), targets, mask, divergence=divergence,
      temperature=temp, alpha=alpha)[0])(jnp.asarray(student))
  want = np_grad(student.astype(np.float64), teacher.astype(np.float64),
                 targets, mask, divergence, temp, alpha)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6, rtol=1e-4)
  # The analytic form is itself the derivative of the float64 closed form:
  # central differences on a few coordinates.
  s64 = student.astype(np.float64)
  for idx in [(0, 1, 3), (1, 4, 0), (0, 0, 10), (2, 2, 5)]:
    h = 1e-6
    up, down = s64.copy(), s64.copy()
    up[idx] += h
    down[idx] -= h
    fd = (np_distill(up, teacher, targets, mask, divergence, temp, alpha)[0]
          - np_distill(down, teacher, targets, mask, divergence, temp,
                       alpha)[0]) / (2 * h)
    assert fd == pytest.approx(want[idx], abs=1e-7, rel=1e-5)
  assert np.all(np.asarray(got)[2] == 0)  # the padding row gets nothing


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_kl_is_zero_when_the_student_is_the_teacher(logits, divergence):
  student, _, targets, mask = logits
  for temp in (1.0, 3.0):
    loss, m = distill.distill_loss(
        jnp.asarray(student), jnp.asarray(student), targets, mask,
        divergence=divergence, temperature=temp, alpha=0.0)
    assert abs(float(loss)) < 1e-6 and abs(float(m["kl"])) < 1e-6
    assert float(m["agreement"]) == 1.0
    grad = jax.grad(lambda z: distill.distill_loss(  # noqa: B023
        z, jnp.asarray(student), targets, mask, divergence=divergence,
        temperature=temp)[0])(jnp.asarray(student))
    assert float(jnp.max(jnp.abs(grad))) < 1e-6


def test_forward_and_reverse_differ_and_temperature_matters(logits):
  student, teacher, targets, mask = logits
  kw = dict(targets_BxT=targets, loss_mask_BxT=mask)
  f = distill.distill_loss(student, teacher, **kw, divergence="forward")[0]
  r = distill.distill_loss(student, teacher, **kw, divergence="reverse")[0]
  f2 = distill.distill_loss(student, teacher, **kw, temperature=2.0)[1]
  assert abs(float(f) - float(r)) > 1e-2
  assert abs(float(f2["kl"]) - float(f)) > 1e-2


def test_banned_teacher_tokens_are_allowed(logits):
  """A teacher logit of -inf (a banned id) has p = 0, which forward KL
  skips (0 log 0 = 0): loss and gradient stay finite. (Reverse KL puts
  student mass on a token the teacher rules out: infinite by definition.)"""
  student, teacher, targets, mask = logits
  teacher = teacher.copy()
  teacher[..., 0] = -np.inf
  loss, _ = distill.distill_loss(student, teacher, targets, mask)
  grad = jax.grad(lambda z: distill.distill_loss(
      z, teacher, targets, mask)[0])(jnp.asarray(student))
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))


def test_empty_mask_gives_zero_not_nan(logits):
  student, teacher, targets, _ = logits
  loss, m = distill.distill_loss(student, teacher, targets,
                                 np.zeros((B, T), np.float32), alpha=0.5)
  assert float(loss) == 0.0 and float(m["weight"]) == 0.0


def test_registered_loss_fn_on_tiny_lms(helpers, tiny_lm, tiny_lm_other):
  """The loss function runs the student and the teacher on the batch: equal
  to the closed form on their brute-force float64 logits."""
  rows = helpers.lm_rows(np.random.default_rng(1), 4, [1, 2, 3, 1],
                         [7, 5, 3, 6])
  factory = registry.get_loss("distill", kind="distill")
  assert factory is distill.make_distill_loss_fn
  s_logits = helpers.lm_logits(tiny_lm, rows)
  t_logits = helpers.lm_logits(tiny_lm_other, rows)
  for divergence, temp, alpha in [("forward", 2.0, 0.5), ("reverse", 1.0,
                                                          0.0)]:
    fn = factory(tiny_lm.graphdef, tiny_lm_other.graphdef,
                 tiny_lm_other.params, divergence=divergence,
                 temperature=temp, alpha=alpha)
    loss, m = jax.jit(fn)(tiny_lm.params, rows, jax.random.PRNGKey(0))
    want, wm = np_distill(s_logits, t_logits, rows["targets"],
                          rows["loss_mask"], divergence, temp, alpha)
    assert float(loss) == pytest.approx(want, rel=1e-4)
    assert float(m["teacher_cross_entropy"]) == pytest.approx(
        wm["teacher_cross_entropy"], rel=1e-4)
    assert float(m["weight"]) == rows["loss_mask"].sum()
  # Hard labels only, teacher not run: exactly the LM loss without z-loss.
  hard = factory(tiny_lm.graphdef, alpha=1.0, teacher_metrics=False)
  plain = lm.make_lm_loss_fn(tiny_lm.graphdef)
  got, gm = jax.jit(hard)(tiny_lm.params, rows, None)
  want, _ = jax.jit(plain)(tiny_lm.params, rows, None)
  assert float(got) == float(want) and "kl" not in gm


@pytest.mark.parametrize("kw,match", [
    ({"divergence": "js"}, "divergence='js'"),
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"alpha": 0.5}, "needs teacher_graphdef"),
    ({"alpha": 1.0}, "needs teacher_graphdef"),  # teacher_metrics default
])
def test_bad_options_name_the_option(tiny_lm, kw, match):
  with pytest.raises(ValueError, match=match):
    distill.make_distill_loss_fn(tiny_lm.graphdef, **kw)
