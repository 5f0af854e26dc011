"""data/batching.py: the pad-run-trim map equals an unbatched run, calls its
function with fixed shapes only, and the example batches have the layouts
the losses read."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lifejax.data import batching


@jax.jit
def _row_fn(rows):
  """Row-wise (no row sees another): a per-row sum and a scaled copy."""
  return {"sum": jnp.sum(rows["x"] * rows["w"][:, None], axis=1),
          "twice": 2 * rows["x"], "none": None}


def _rows(n: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(n)
  return {"x": rng.integers(-9, 9, (n, 5)).astype(np.int32),
          "w": rng.integers(1, 4, (n,)).astype(np.int32)}


@pytest.mark.parametrize("n,batch_size", [(10, 4), (8, 4), (3, 8), (7, 1),
                                          (6, 0)])
def test_map_padded_equals_the_unbatched_run(n, batch_size):
  rows = _rows(n)
  want = jax.device_get(_row_fn(rows))
  got = batching.map_padded(lambda chunk, _: _row_fn(chunk), rows,
                            batch_size)
  assert got["none"] is None
  for k in ("sum", "twice"):
    assert isinstance(got[k], np.ndarray) and got[k].shape[0] == n
    np.testing.assert_array_equal(got[k], want[k])


def test_map_padded_pads_the_last_chunk_with_its_first_row():
  rows = {"id": np.arange(10, dtype=np.int32)}
  seen = []

  def fn(chunk, i):
    seen.append((i, chunk["id"].tolist()))
    return chunk["id"] * 10

  out = batching.map_padded(fn, rows, 4)
  assert seen == [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7]), (2, [8, 9, 8, 8])]
  np.testing.assert_array_equal(out, np.arange(10) * 10)


def test_map_padded_with_batch_size_zero_makes_one_call():
  calls = []
  out = batching.map_padded(lambda c, i: calls.append(i) or c, _rows(5), 0)
  assert calls == [0] and out["x"].shape == (5, 5)


def test_map_padded_refuses_empty_and_ragged_rows():
  with pytest.raises(ValueError, match="at least one row"):
    batching.map_padded(lambda c, _: c, {"x": np.zeros((0, 3))}, 4)
  with pytest.raises(ValueError, match="disagree"):
    batching.map_padded(lambda c, _: c, {"x": np.zeros((3, 1)),
                                         "y": np.zeros((4, 1))}, 2)


def test_pad_rows():
  ids, mask = batching.pad_rows((np.array([[1, 2], [3, 4]]),
                                 np.array([[0, 1], [1, 1]])), 4)
  np.testing.assert_array_equal(ids, [[1, 2], [3, 4], [1, 2], [1, 2]])
  np.testing.assert_array_equal(mask, [[0, 1], [1, 1], [0, 1], [0, 1]])
  with pytest.raises(ValueError, match="do not fit"):
    batching.pad_rows(np.zeros((5, 2)), 4)


def test_example_batches_have_the_lm_and_pair_layouts():
  lm = batching.example_lm_batch(3, 7)
  assert sorted(lm) == sorted(["tokens", "targets", "loss_mask",
                               "segment_ids", "positions"])
  for k, v in lm.items():
    assert v.shape == (3, 7) and not v.any()
    assert v.dtype == (np.float32 if k == "loss_mask" else np.int32)
  pair = batching.example_pair_batch(3, 7)
  assert sorted(pair) == ["chosen", "rejected"]
  assert all(sorted(side) == sorted(lm) for side in pair.values())
  ref = batching.example_pair_batch(3, 7, with_ref_logp=True)
  for side in ref.values():
    assert side["ref_logp"].shape == (3,)
    assert side["ref_logp"].dtype == np.float32
