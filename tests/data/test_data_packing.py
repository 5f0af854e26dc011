"""Invariants of lifejax.data.packing: nothing lost, nothing mixed."""

import collections

import grain
import numpy as np
import pytest

from lifejax.data import packing

T = 16


def _documents(n: int, seed: int) -> list[np.ndarray]:
  """Docs whose tokens encode (doc, position): doc d's token j = 1000*d + j.

  Lengths cover 1 token (no pairs), short docs, exactly T+1, and > 3T.
  """
  rng = np.random.default_rng(seed)
  lengths = list(rng.integers(2, 2 * T, size=n - 3)) + [1, T + 1, 3 * T + 5]
  return [1000 * (d + 1) + np.arange(k, dtype=np.int32)
          for d, k in enumerate(lengths)]


def _pack(docs, num_packing_bins=4, shuffle_bins=True):
  ds = grain.MapDataset.source(docs).to_iter_dataset()
  return list(packing.pack_documents(ds, seq_len=T,
                                     num_packing_bins=num_packing_bins,
                                     seed=7, shuffle_bins=shuffle_bins))


@pytest.mark.parametrize("num_packing_bins", [1, 4])
def test_row_contract(num_packing_bins):
  rows = _pack(_documents(30, 0), num_packing_bins)
  for row in rows:
    assert set(row) == set(packing.LM_KEYS)
    for key in packing.LM_KEYS:
      assert row[key].shape == (T,)
    assert row["loss_mask"].dtype == np.float32
    for key in ("tokens", "targets", "segment_ids", "positions"):
      assert row[key].dtype == np.int32, key
    pad = row["segment_ids"] == 0
    np.testing.assert_array_equal(row["loss_mask"], (~pad).astype(np.float32))
    assert not row["tokens"][pad].any() and not row["targets"][pad].any()
    # Real positions come first; segment ids count 1..k in order.
    k = int(row["segment_ids"].max())
    assert k >= 1
    real = row["segment_ids"][~pad]
    assert np.all(np.diff(real) >= 0) and set(real.tolist()) == set(
        range(1, k + 1))
    assert not pad[:len(real)].any()


@pytest.mark.parametrize("shuffle_bins", [False, True])
def test_no_pair_lost_and_segments_never_mix(shuffle_bins):
  docs = _documents(40, 1)
  expected = collections.Counter(
      (int(a), int(b)) for d in docs for a, b in zip(d[:-1], d[1:]))
  got = collections.Counter()
  pieces_per_doc = collections.Counter()
  for row in _pack(docs, shuffle_bins=shuffle_bins):
    for seg in range(1, int(row["segment_ids"].max()) + 1):
      sel = row["segment_ids"] == seg
      tokens, targets = row["tokens"][sel], row["targets"][sel]
      # One document per segment, consecutive tokens, next-token targets.
      assert len(set((tokens // 1000).tolist())) == 1
      np.testing.assert_array_equal(targets, tokens + 1)
      np.testing.assert_array_equal(np.diff(tokens), 1)
      np.testing.assert_array_equal(row["positions"][sel],
                                    np.arange(sel.sum()))
      got.update(zip(tokens.tolist(), targets.tolist()))
      pieces_per_doc[int(tokens[0]) // 1000] += 1
  assert got == expected
  long_doc = len(docs)  # the 3T+5 document, doc number len(docs)
  assert pieces_per_doc[long_doc] == 4
  assert pieces_per_doc[long_doc - 1] == 1  # exactly T+1 tokens fits one row
  assert (len(docs) - 2) not in pieces_per_doc  # the 1-token doc has no pairs


def test_split_document_overlaps_by_one():
  doc = np.arange(40)
  pieces = packing.split_document(doc, 16)
  assert [len(p) for p in pieces] == [17, 17, 8]
  assert [p[0] for p in pieces] == [0, 16, 32]
  assert packing.split_document([5], 16) == []
  with pytest.raises(ValueError, match="1-D"):
    packing.split_document(np.zeros((2, 3)), 16)


def test_more_bins_pack_tighter():
  docs = _documents(200, 2)
  eff = {}
  for bins in (1, 16):
    rows = _pack(docs, bins)
    eff[bins] = packing.packing_efficiency(
        {"segment_ids": np.stack([r["segment_ids"] for r in rows])})
  assert eff[16] > eff[1]
  assert eff[16] > 0.9


def test_packing_efficiency_counts_real_positions():
  seg = np.array([[1, 1, 2, 0], [1, 0, 0, 0]])
  assert packing.packing_efficiency({"segment_ids": seg}) == 0.5
