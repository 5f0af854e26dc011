"""Preference-pair and rollout-prompt pipelines."""

import numpy as np
import pytest

from lifejax.data import pipeline
from lifejax.data import preference
from lifejax.data import sources

T = 24
ONE_SHARD = dict(shard_index=0, shard_count=1)
PAIRS = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.",
          "rejected": f"Bad {i}"} for i in range(10)]


@pytest.fixture
def pairs_source():
  return sources.InMemorySource(PAIRS, name="prefs",
                                fields=["prompt", "chosen", "rejected"])


def test_preference_batch_masks_only_the_response(pairs_source, tokenizer):
  ds = pipeline.preference_dataset(pairs_source, tokenizer, seq_len=T,
                                   batch_size=4, seed=0, shuffle=False,
                                   **ONE_SHARD)
  batch = next(iter(ds))
  assert set(batch) == {"chosen", "rejected"}
  for side in ("chosen", "rejected"):
    half = batch[side]
    assert {k: v.shape for k, v in half.items()} == {
        k: (4, T) for k in ("tokens", "targets", "loss_mask", "segment_ids",
                            "positions")}
    for b, record in enumerate(PAIRS[:4]):
      mask = half["loss_mask"][b] > 0
      # The masked targets are exactly the response and its EOS.
      response = tokenizer.encode(record[side]) + [tokenizer.eos_id]
      assert half["targets"][b][mask].tolist() == response
      n = len(tokenizer.encode(record["prompt"])) + len(response)
      assert half["tokens"][b][0] == tokenizer.bos_id
      assert half["segment_ids"][b].tolist() == [1] * n + [0] * (T - n)
      assert half["positions"][b][:n].tolist() == list(range(n))


def test_custom_render_plugs_in(pairs_source, tokenizer):
  def render(record):
    return [tokenizer.bos_id, 7], [8] * len(record["response"])

  ds = pipeline.preference_dataset(pairs_source, tokenizer, seq_len=T,
                                   batch_size=2, seed=0, render=render,
                                   shuffle=False, **ONE_SHARD)
  batch = next(iter(ds))
  assert batch["chosen"]["loss_mask"][0].sum() == len(PAIRS[0]["chosen"])
  assert batch["rejected"]["loss_mask"][0].sum() == len(PAIRS[0]["rejected"])


def test_last_preference_batch_can_be_padded(pairs_source, tokenizer):
  ds = pipeline.preference_dataset(pairs_source, tokenizer, seq_len=T,
                                   batch_size=4, seed=0, num_epochs=1,
                                   drop_remainder=False, **ONE_SHARD)
  batches = list(ds)
  assert len(batches) == 3
  assert batches[-1]["chosen"]["loss_mask"].sum(1).tolist()[2:] == [0, 0]


def test_response_row_truncation_keeps_the_response():
  row = preference.response_row(list(range(10, 20)), [1, 2, 3], seq_len=6)
  # 7 tokens fit: the prompt keeps its last 4, the response is whole.
  assert row["tokens"].tolist() == [16, 17, 18, 19, 1, 2]
  assert row["targets"].tolist() == [17, 18, 19, 1, 2, 3]
  assert row["loss_mask"].tolist() == [0, 0, 0, 1, 1, 1]
  long = preference.response_row([5, 6], list(range(100, 120)), seq_len=6)
  assert long["tokens"].tolist() == [6, 100, 101, 102, 103, 104]
  assert long["loss_mask"].tolist() == [1] * 6
  with pytest.raises(ValueError, match="empty response"):
    preference.response_row([1], [], seq_len=6)


def test_prompts_are_left_padded_and_joinable(tokenizer):
  prompts = [{"prompt": "hi"}, {"prompt": "a much longer prompt " * 3},
             {"prompt": "Grüße"}, {"prompt": "x"}, {"prompt": "last one"}]
  src = sources.InMemorySource(prompts, name="prompts", fields=["prompt"])
  P = 12
  batches = list(pipeline.prompt_dataset(src, tokenizer, prompt_len=P,
                                         batch_size=2, seed=3, shuffle=True,
                                         **ONE_SHARD))
  assert len(batches) == 3
  seen = []
  for batch in batches:
    assert batch["prompt_tokens"].shape == (2, P)
    assert batch["prompt_tokens"].dtype == np.int32
    assert batch["prompt_mask"].dtype == np.bool_
    for row in range(2):
      index = int(batch["record_index"][row])
      n = int(batch["prompt_lengths"][row])
      mask = batch["prompt_mask"][row]
      assert mask.tolist() == [False] * (P - n) + [True] * n
      assert not batch["prompt_tokens"][row][~mask].any()
      if index < 0:  # padding row of the last batch
        assert n == 0
        continue
      seen.append(index)
      ids = tokenizer.encode(prompts[index]["prompt"], add_bos=True)[-P:]
      assert batch["prompt_tokens"][row][mask].tolist() == ids
  assert sorted(seen) == list(range(5)) and seen != list(range(5))


def test_prompt_record_index_survives_sharding(tokenizer):
  prompts = [{"prompt": f"p{i}"} for i in range(6)]
  src = sources.InMemorySource(prompts, name="prompts", fields=["prompt"])
  batch = next(iter(pipeline.prompt_dataset(
      src, tokenizer, prompt_len=8, batch_size=3, shard_index=1,
      shard_count=2)))
  assert batch["record_index"].tolist() == [1, 3, 5]


def test_missing_fields_are_reported_up_front(tokenizer):
  src = sources.InMemorySource([{"prompt": "p", "chosen": "c"}], name="half",
                               fields=["prompt", "chosen"])
  with pytest.raises(ValueError, match="'half' has fields.*not 'rejected'"):
    pipeline.preference_dataset(src, tokenizer, seq_len=T, batch_size=1,
                                seed=0, **ONE_SHARD)
  text_only = sources.InMemorySource([{"text": "t"}], name="texts")
  with pytest.raises(ValueError, match="not 'prompt'"):
    pipeline.prompt_dataset(text_only, tokenizer, prompt_len=8, batch_size=1,
                            **ONE_SHARD)
