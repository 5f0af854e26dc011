"""Mixing weights: validation and the realized mix."""

import collections

import grain
import pytest

from lifejax.data import mixture
from lifejax.data import pipeline
from lifejax.data import sources


def test_realized_record_mix_matches_weights():
  datasets = [grain.MapDataset.source([name] * 7).repeat()
              for name in ("web", "code", "math")]
  weights = [0.5, 0.3, 0.2]
  n = 10_000
  mixed = mixture.mix(datasets, weights)
  counts = collections.Counter(mixed[i] for i in range(n))
  for name, w in zip(("web", "code", "math"), weights):
    assert abs(counts[name] / n - w) < 0.01, counts
  # Any window is close too, not just the total: the mix is interleaved.
  window = collections.Counter(mixed[i] for i in range(5000, 5100))
  assert abs(window["web"] - 50) <= 2, window


def test_realized_document_mix_in_lm_batches(tokenizer):
  srcs = [sources.InMemorySource([{"text": f"{name} text {i}"}
                                  for i in range(13)], name=name)
          for name in ("alpha", "beta")]
  ds = pipeline.lm_dataset(srcs, tokenizer, seq_len=64, batch_size=4, seed=2,
                           weights=[1, 4], shard_index=0, shard_count=1)
  counts = collections.Counter()
  it = iter(ds)
  for _ in range(30):
    batch = next(it)
    for tokens, segs in zip(batch["tokens"], batch["segment_ids"]):
      for seg in set(segs[segs > 0].tolist()):
        counts[tokenizer.decode(tokens[segs == seg]).split()[0]] += 1
  share = counts["beta"] / (counts["alpha"] + counts["beta"])
  assert abs(share - 0.8) < 0.03, counts


def test_single_dataset_passes_through():
  ds = grain.MapDataset.range(3)
  assert mixture.mix([ds]) is ds


@pytest.mark.parametrize("weights, match", [
    ([1.0], "1 mixing weights for 2"),
    ([1.0, 0.0], "> 0"),
    ([1.0, -1.0], "> 0"),
    ([1.0, float("nan")], "finite"),
])
def test_bad_weights(weights, match):
  with pytest.raises(ValueError, match=match):
    mixture.normalize_weights(weights, 2)


def test_normalized_weights_sum_to_one():
  assert mixture.normalize_weights([3, 1], 2) == [0.75, 0.25]
  assert mixture.normalize_weights(None, 4) == [0.25] * 4
