"""experiments/grad_accumulation: the equal-curve comparison and the arms'
token budgets (the runs themselves are the tiny test's)."""

import json
import math

import pytest

from lifejax import sweep

_spec = sweep.load_spec("experiments/grad_accumulation")


def _cell(tmp_path, name, losses, weights, batch="%BIG_BATCH"):
  d = tmp_path / name
  d.mkdir()
  rows = [{"step": i + 1, "loss": l, "grad_norm": 1.0 + l, "weight": w,
           "skipped": 0.0} for i, (l, w) in enumerate(zip(losses, weights))]
  rows.append({"step": len(losses), "eval/loss": losses[-1]})
  (d / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  (d / "summary.json").write_text(json.dumps(
      {"eval": {"eval/loss": losses[-1] + 0.1}}))
  (d / "operative_config.gin").write_text(
      f"BATCH = {batch}\nBIG_BATCH = 32\n# pretrain.batch_size = 7\n"
      "pretrain.batch_size = %BATCH\n")
  return sweep.Cell(sweep.Arm(name), 0, str(d), {})


def test_equality_reports_step_differences(tmp_path):
  a = _cell(tmp_path, "a", [8.0, 7.0, 6.0], [100, 101, 99])
  b = _cell(tmp_path, "b", [8.0, 7.0 + 1e-6, 6.0 - 3e-6], [100, 101, 99])
  e = _spec.equality(a, b)
  assert e["step1_abs"] == 0.0
  assert e["max_abs"] == pytest.approx(3e-6, rel=1e-3)
  assert math.isnan(e["separated_at"])
  d = _cell(tmp_path, "d", [8.0, 7.0, 6.01], [100, 101, 99])
  assert _spec.equality(d, a)["separated_at"] == 3
  assert e["eval_abs"] == pytest.approx(3e-6, rel=1e-3)
  c = _cell(tmp_path, "c", [8.0, 7.0, 6.0], [100, 102, 99])
  with pytest.raises(ValueError, match="different batches"):
    _spec.equality(a, c)


def test_batch_rows_follow_macros(tmp_path):
  assert _spec._batch_rows(_cell(tmp_path, "a", [1.0], [1])) == 32
  bad = _cell(tmp_path, "b", [1.0], [1], batch="%NOPE")
  with pytest.raises(ValueError, match="pretrain.batch_size"):
    _spec._batch_rows(bad)


def test_every_arm_sees_the_same_tokens():
  import gin  # pylint: disable=g-import-not-at-top
  from lifejax import main  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    main.parse_gin(["experiments/grad_accumulation/base.gin"],
                   ["RUN_DIR='unused'"])
    q = gin.query_parameter
    small = q("%SMALL_BATCH") * q("%SMALL_STEPS")
    big = q("%BIG_BATCH") * q("%BIG_STEPS")
    assert small == big
    assert q("%SMALL_BATCH") * q("%SMALL_WARMUP") == \
        q("%BIG_BATCH") * q("%BIG_WARMUP")
    assert q("%BIG_BATCH") == _spec.MICROBATCHES * q("%SMALL_BATCH")
  finally:
    gin.clear_config()
  arms = {a.name: a for a in _spec.SWEEP.arms}
  for pair, compute in ((_spec.EQUAL_PAIR, "bfloat16"),
                        (_spec.EQUAL_PAIR_F32, "float32")):
    x, y = (arms[n] for n in pair)
    assert x.labels["lr"] == y.labels["lr"]
    assert x.labels["rows"] == y.labels["rows"]
    assert x.labels["compute"] == y.labels["compute"] == compute
    assert (x.labels["microbatches"], y.labels["microbatches"]) == (
        1, _spec.MICROBATCHES)
    assert f"pretrain.num_microbatches={_spec.MICROBATCHES}" in y.gin_params
