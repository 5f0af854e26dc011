"""experiments/fp16_vs_bf16: the gradient probe's measurements against
numpy's float16, and the arms' bindings."""

import math

import numpy as np
import pytest

from lifejax import sweep

_spec = sweep.load_spec("experiments/fp16_vs_bf16")
probe = _spec.grad_probe


def test_thresholds_are_float16s():
  assert np.float16(probe.FP16_TINY) == probe.FP16_TINY
  assert np.float16(probe.FP16_FLUSH) == 0  # half the tiniest: to even
  assert np.float16(np.nextafter(probe.FP16_FLUSH, 1.0)) == probe.FP16_TINY
  assert np.finfo(np.float16).tiny == probe.FP16_NORMAL
  assert np.finfo(np.float16).max == probe.FP16_MAX
  with np.errstate(over="ignore"):
    assert np.isinf(np.float16(probe.FP16_OVERFLOW))
    assert np.float16(np.nextafter(probe.FP16_OVERFLOW, 0.0)) == \
        probe.FP16_MAX


def test_cotangent_shares_match_a_float16_cast():
  rng = np.random.default_rng(0)
  d = np.exp(rng.uniform(-25, 12, 10_000)) * rng.choice([-1, 1], 10_000)
  d[:50] = 0.0  # exact zeros (masked tokens) are not counted
  s = probe.cotangent_shares(d)
  nz = d[d != 0]
  with np.errstate(over="ignore"):
    h = nz.astype(np.float16)
  assert s["flushed"] == np.mean(h == 0)
  assert s["overflow"] == np.mean(np.isinf(h))
  assert s["subnormal"] == pytest.approx(
      np.mean(np.abs(nz) < np.finfo(np.float16).tiny))
  assert 0 < s["flushed"] < s["subnormal"] < 1 and s["overflow"] > 0


def test_grad_error_counts_zeroed_and_non_finite_entries():
  ref = {"a": np.array([1.0, 2.0, 0.0]), "b": np.array([[3.0, 4.0]])}
  same = probe.grad_error(ref, ref)
  assert same == {"rel_err": 0.0, "zeroed": 0.0, "nonfinite": 0.0}
  g = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([[3.0, 4.0]])}
  e = probe.grad_error(g, ref)
  assert e["zeroed"] == pytest.approx(1 / 4)
  assert e["rel_err"] == pytest.approx(2 / math.sqrt(30))
  bad = probe.grad_error({"a": np.array([1.0, np.inf, 0.0]),
                          "b": ref["b"]}, ref)
  assert bad["nonfinite"] == 1.0 and math.isnan(bad["rel_err"])


def test_conventions_and_reference_dir():
  assert probe._multiplier("mean", 2000.0) == 1.0
  assert probe._multiplier("sum", 2000.0) == 2000.0
  assert probe._multiplier("sum_x2^15", 2.0) == 2.0 ** 16
  with pytest.raises(ValueError, match="loss convention"):
    probe._multiplier("max", 1.0)
  assert probe.reference_dir("runs/x/grad_probe/seed2", "f32") == \
      "runs/x/f32/seed2"


def test_arms_bind_the_precision_and_scales():
  arms = {a.name: a for a in _spec.SWEEP.arms}
  assert set(_spec.TRAIN_ARMS) | {"grad_probe"} == set(arms)
  dt = lambda a: [p for p in arms[a].gin_params  # noqa: E731
                  if p.startswith("TransformerConfig.compute_dtype")]
  assert dt("f32") == ["TransformerConfig.compute_dtype='float32'"]
  assert dt("fp16") == ["TransformerConfig.compute_dtype='float16'"]
  assert not any("loss_scale" in p for p in arms["fp16"].gin_params)
  assert any("loss_scale" in p for p in arms["fp16_scaled"].gin_params)
  assert f"LossScaleConfig.initial_scale={2.0 ** -11!r}" in \
      arms["fp16_mean"].gin_params
  # the probe reads the f32 arm's run of the same seed: it must run first
  names = [a.name for a in _spec.SWEEP.arms]
  assert names.index(_spec.REFERENCE) < names.index("grad_probe")
