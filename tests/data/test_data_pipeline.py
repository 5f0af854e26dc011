"""Tests for lifejax.data.pipeline: contracts, determinism, resumption."""

import collections
import json

import numpy as np
import pytest

from lifejax.data import file_sources
from lifejax.data import packing
from lifejax.data import pipeline
from lifejax.data import sources

T, B = 32, 4
ONE_SHARD = dict(shard_index=0, shard_count=1)


def _texts(prefix: str, n: int) -> list[str]:
  return [f"{prefix} {i}: " + "lorem ipsum " * (i % 9) for i in range(n)]


@pytest.fixture
def web(tmp_path):
  path = tmp_path / "web.jsonl"
  path.write_text("".join(json.dumps({"text": t}) + "\n"
                          for t in _texts("web", 60)))
  return file_sources.JsonlSource(path)


@pytest.fixture
def books(tmp_path):
  path = tmp_path / "books.array_record"
  file_sources.write_array_record(path,
                                  [{"text": t} for t in _texts("book", 25)])
  return file_sources.ArrayRecordSource(path)


def _pairs(tokenizer, texts) -> collections.Counter:
  out = collections.Counter()
  for t in texts:
    doc = tokenizer.encode(t, add_bos=True, add_eos=True)
    out.update(zip(doc[:-1], doc[1:]))
  return out


def _batch_pairs(batches) -> collections.Counter:
  out = collections.Counter()
  for b in batches:
    real = b["segment_ids"] > 0
    out.update(zip(b["tokens"][real].tolist(), b["targets"][real].tolist()))
  return out


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_lm_batch_contract(web, tokenizer):
  batch = next(iter(pipeline.lm_dataset(web, tokenizer, seq_len=T,
                                        batch_size=B, seed=0, **ONE_SHARD)))
  assert set(batch) == set(packing.LM_KEYS)
  for k in packing.LM_KEYS:
    assert batch[k].shape == (B, T), k
  assert batch["loss_mask"].dtype == np.float32
  assert all(batch[k].dtype == np.int32
             for k in ("tokens", "targets", "segment_ids", "positions"))
  assert packing.packing_efficiency(batch) > 0.5


def test_deterministic_from_seed(web, books, tokenizer):
  def first(seed):
    ds = pipeline.lm_dataset([web, books], tokenizer, seq_len=T, batch_size=B,
                             seed=seed, weights=[2, 1], **ONE_SHARD)
    return _take(iter(ds), 5)
  _assert_same_batches(first(3), first(3))
  assert not np.array_equal(first(3)[0]["tokens"], first(4)[0]["tokens"])


@pytest.mark.parametrize("k", [0, 3, 7])
def test_resume_from_json_state_gives_identical_batches(web, books, tokenizer,
                                                        k):
  def make():
    return pipeline.lm_dataset([web, books], tokenizer, seq_len=T,
                               batch_size=B, seed=11, weights=[0.7, 0.3],
                               **ONE_SHARD)
  n = 12
  uninterrupted = _take(iter(make()), n)
  it = iter(make())
  _take(it, k)
  saved = json.dumps(pipeline.iterator_state_to_json(it.get_state()))
  fresh = iter(make())
  fresh.set_state(pipeline.iterator_state_from_json(json.loads(saved)))
  _assert_same_batches(_take(fresh, n - k), uninterrupted[k:])


def test_epochs_see_every_pair_once_per_epoch(web, tokenizer):
  ds = pipeline.lm_dataset(web, tokenizer, seq_len=T, batch_size=1, seed=5,
                           num_epochs=2, **ONE_SHARD)
  expected = _pairs(tokenizer, _texts("web", 60))
  assert _batch_pairs(ds) == collections.Counter(
      {p: 2 * c for p, c in expected.items()})


def test_process_shards_are_disjoint_and_complete(web, tokenizer):
  per_shard = []
  for i in range(3):
    ds = pipeline.lm_eval_dataset(web, tokenizer, seq_len=T, batch_size=B,
                                  shard_index=i, shard_count=3)
    per_shard.append(_batch_pairs(ds))
  assert sum(per_shard, collections.Counter()) == _pairs(
      tokenizer, _texts("web", 60))
  assert per_shard[0] != per_shard[1]


def test_eval_dataset_is_one_ordered_pass_with_padded_tail(web, books,
                                                           tokenizer):
  def batches():
    return list(pipeline.lm_eval_dataset([web, books], tokenizer, seq_len=T,
                                         batch_size=B, **ONE_SHARD))
  first = batches()
  _assert_same_batches(first, batches())
  assert _batch_pairs(first) == _pairs(
      tokenizer, _texts("web", 60) + _texts("book", 25))
  assert all(b["tokens"].shape == (B, T) for b in first)
  # Whole-row padding can only be at the end of the last batch.
  row_used = np.concatenate([b["loss_mask"].sum(1) > 0 for b in first])
  assert row_used[:row_used.sum()].all()


def test_default_shard_is_this_process():
  assert pipeline.resolve_shard(None, None) == (0, 1)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.resolve_shard(2, 2)


def test_bad_arguments_are_clear(web, tokenizer):
  with pytest.raises(ValueError, match="num_epochs"):
    pipeline.lm_dataset(web, tokenizer, seq_len=T, batch_size=B, seed=0,
                        num_epochs=0, **ONE_SHARD)
  with pytest.raises(ValueError, match="fields .*'text'.*not 'body'"):
    pipeline.lm_dataset(web, tokenizer, seq_len=T, batch_size=B, seed=0,
                        text_field="body", **ONE_SHARD)
  with pytest.raises(ValueError, match="weights"):
    pipeline.lm_dataset([web, web], tokenizer, seq_len=T, batch_size=B,
                        seed=0, weights=[1, 0], **ONE_SHARD)
  tiny = sources.InMemorySource([{"text": "a"}], name="tiny")
  with pytest.raises(ValueError, match="'tiny' has no records for shard 1"):
    pipeline.lm_dataset(tiny, tokenizer, seq_len=T, batch_size=B, seed=0,
                        shard_index=1, shard_count=2)


def test_iterator_state_json_rejects_non_json_values():
  state = {"parent": {"next_index": np.int64(3)}, "stop": np.bool_(False)}
  assert pipeline.iterator_state_to_json(state) == {
      "parent": {"next_index": 3}, "stop": False}
  with pytest.raises(TypeError, match=r"state/blob holds a bytes"):
    pipeline.iterator_state_to_json({"blob": b"\x00"})
