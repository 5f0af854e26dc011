"""SFT packing of chat conversations and the chat renders for pipelines."""

import grain
import numpy as np
import pytest

from lifejax.data import chat, chat_render
from lifejax.data import packing
from lifejax.data import pipeline
from lifejax.data import sft
from lifejax.data import sources

T = 64
ONE_SHARD = dict(shard_index=0, shard_count=1)
FIELDS = {"id": str, "messages": list}


def _record(i):
  turns = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": f"Question {i}?"},
           {"role": "assistant", "content": "Answer " + "x" * (i % 5)}]
  if i % 3 == 0:  # Some multi-turn conversations.
    turns += [{"role": "user", "content": "Why?"},
              {"role": "assistant", "content": f"Because {i}."}]
  return {"id": f"rec-{i}", "messages": turns}


RECORDS = [_record(i) for i in range(12)]


@pytest.fixture
def source():
  return sources.InMemorySource(RECORDS, name="inst", fields=FIELDS)


def _segments(row):
  """{segment id: (tokens, targets, loss_mask, positions)} of one row."""
  out = {}
  for s in np.unique(row["segment_ids"]):
    if s:
      sel = row["segment_ids"] == s
      out[int(s)] = tuple(row[k][sel] for k in
                          ("tokens", "targets", "loss_mask", "positions"))
  return out


def test_sft_batches_carry_assistant_only_masks(source, tokenizer):
  ds = sft.sft_dataset(source, tokenizer, "lifejax", seq_len=T, batch_size=2,
                       seed=0, shuffle=False, num_epochs=1, **ONE_SHARD)
  expected = {}
  for r in RECORDS:
    ids, mask = chat_render.render_conversation(chat.LIFEJAX, tokenizer,
                                                r["messages"])
    expected[tuple(ids[:-1].tolist())] = (ids[1:], mask[1:])
  seen = 0
  for batch in ds:
    assert set(batch) == set(packing.LM_KEYS)
    assert {k: v.shape for k, v in batch.items()} == {
        k: (2, T) for k in packing.LM_KEYS}
    assert batch["tokens"].dtype == np.int32
    assert batch["loss_mask"].dtype == np.float32
    for row in (dict(zip(batch, v)) for v in zip(*batch.values())):
      seg = row["segment_ids"]
      # Segments are contiguous 1..k then padding with zero weight.
      k = seg.max()
      assert seg[seg > 0].tolist() == sorted(seg[seg > 0].tolist())
      assert set(seg[seg > 0].tolist()) == set(range(1, k + 1))
      assert row["loss_mask"][seg == 0].sum() == 0
      for tokens, targets, mask, positions in _segments(row).values():
        assert positions.tolist() == list(range(len(tokens)))
        want_targets, want_mask = expected[tuple(tokens.tolist())]
        np.testing.assert_array_equal(targets, want_targets)
        np.testing.assert_array_equal(mask, want_mask)
        seen += 1
  assert seen >= len(RECORDS) - 2  # at most the dropped last batch missing


def test_sft_eval_pass_scores_every_conversation(source, tokenizer):
  """drop_remainder=False (evaluation): every conversation appears exactly
  once; the last batch is padded with all-zero rows, so the summed
  loss_mask equals the assistant tokens of the whole set, which the
  training default (a dropped partial batch) misses here."""
  want = sum(float(chat_render.render_conversation(
      chat.LIFEJAX, tokenizer, r["messages"])[1][1:].sum()) for r in RECORDS)
  seen = {}
  for drop in (True, False):
    batches = list(sft.sft_dataset(
        source, tokenizer, "lifejax", seq_len=T, batch_size=3, seed=0,
        shuffle=False, num_epochs=1, num_packing_bins=1,
        drop_remainder=drop, **ONE_SHARD))
    assert all(b["tokens"].shape == (3, T) for b in batches)
    seen[drop] = sum(float(b["loss_mask"].sum()) for b in batches)
    rows = np.concatenate([b["segment_ids"].max(1) > 0 for b in batches])
    if not drop:  # whole padding rows only at the very end
      assert rows[:rows.sum()].all() and not rows.all()
  assert seen[False] == want
  assert seen[True] < want


def test_sft_iterator_state_resumes_exactly(source, tokenizer):
  ds = sft.sft_dataset(source, tokenizer, chat.PLAIN, seq_len=T,
                       batch_size=2, seed=3, **ONE_SHARD)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = pipeline.iterator_state_to_json(it.get_state())
  want = [next(it) for _ in range(4)]
  resumed = iter(ds)
  resumed.set_state(pipeline.iterator_state_from_json(state))
  got = [next(resumed) for _ in range(4)]
  for a, b in zip(want, got):
    for k in packing.LM_KEYS:
      np.testing.assert_array_equal(a[k], b[k])


def test_sft_shards_are_disjoint(source, tokenizer):
  firsts = []
  for index in range(2):
    ds = sft.sft_dataset(source, tokenizer, "lifejax", seq_len=T,
                         batch_size=1, seed=0, shuffle=False, num_epochs=1,
                         shard_index=index, shard_count=2,
                         num_packing_bins=1)
    firsts.append({tuple(b["tokens"][0][b["segment_ids"][0] == 1])
                   for b in ds})
  assert firsts[0] and firsts[1] and not firsts[0] & firsts[1]


BAD = [
    {"id": "empty", "messages": [{"role": "user", "content": ""},
                                 {"role": "assistant", "content": "a"}]},
    {"id": "two-users", "messages": [{"role": "user", "content": "a"},
                                     {"role": "user", "content": "b"},
                                     {"role": "assistant", "content": "c"}]},
    {"id": "asst-first", "messages": [{"role": "assistant", "content": "a"}]},
    {"id": "tool", "messages": [{"role": "tool", "content": "a"},
                                {"role": "assistant", "content": "b"}]},
    {"id": "no-reply", "messages": [{"role": "user", "content": "a"}]},
    {"id": "no-reply-2", "messages": [{"role": "user", "content": "b"}]},
]


def test_bad_conversations_error_or_are_counted(tokenizer):
  records = RECORDS[:4] + BAD
  src = sources.InMemorySource(records, name="mixed", fields=FIELDS)
  with pytest.raises(chat.ConversationError,
                     match=r"mixed record 4 \(id 'empty'\): empty_turn"):
    sft.sft_dataset(src, tokenizer, "lifejax", seq_len=T, batch_size=1,
                    seed=0, **ONE_SHARD)
  good, skipped = sft.screen_conversations(records, chat.LIFEJAX,
                                           skip_bad=True)
  assert [i for i, _ in good] == [0, 1, 2, 3]
  assert skipped == {"empty_turn": 1, "repeated_role": 1,
                     "assistant_first": 1, "unknown_role": 1,
                     "last_not_assistant": 2}
  ds = sft.sft_dataset(src, tokenizer, "lifejax", seq_len=T, batch_size=1,
                       seed=0, shuffle=False, num_epochs=1, skip_bad=True,
                       **ONE_SHARD)
  assert sum(b["segment_ids"].max() for b in ds) >= 3


def test_too_long_conversations(tokenizer):
  long_prompt = [{"role": "user", "content": "word " * 40},
                 {"role": "assistant", "content": "ok"}]
  records = [{"id": "long", "messages": long_prompt}] + RECORDS[:4]
  src = sources.InMemorySource(records, name="l", fields=FIELDS)
  kwargs = dict(seq_len=28, batch_size=1, seed=0, shuffle=False,
                num_epochs=1, num_packing_bins=1, **ONE_SHARD)
  with pytest.raises(chat.ConversationError, match="id 'long'.*too_long"):
    list(sft.sft_dataset(src, tokenizer, "lifejax", **kwargs))
  rows = list(sft.sft_dataset(src, tokenizer, "lifejax", skip_bad=True,
                              **kwargs))
  segments = [seg for b in rows for seg in _segments(
      {k: v[0] for k, v in b.items()}).values()]
  assert len(segments) == 4
  # A conversation longer than a row keeps its beginning; it is never split.
  ids, mask = chat_render.render_conversation(chat.LIFEJAX, tokenizer,
                                              RECORDS[0]["messages"])
  assert len(ids) > 29
  tokens, targets, weights, _ = segments[0]
  assert tokens.tolist() == ids[:28].tolist()
  assert targets.tolist() == ids[1:29].tolist()
  np.testing.assert_array_equal(weights, mask[1:29])
  assert weights.sum() > 0


def test_pack_examples_invariants():
  rng = np.random.default_rng(0)
  examples = []
  for n in rng.integers(1, 13, size=40):
    examples.append({"tokens": rng.integers(5, 99, n).astype(np.int32),
                     "targets": rng.integers(5, 99, n).astype(np.int32),
                     "loss_mask": rng.random(n).astype(np.float32)})
  rows = list(sft.pack_examples(
      grain.MapDataset.source(examples).to_iter_dataset(), seq_len=12,
      num_packing_bins=3, shuffle_bins=False))
  found = []
  for row in rows:
    assert {k: v.shape for k, v in row.items()} == {
        k: (12,) for k in packing.LM_KEYS}
    assert row["loss_mask"][row["segment_ids"] == 0].sum() == 0
    assert (row["tokens"][row["segment_ids"] == 0] == 0).all()
    for tokens, targets, mask, positions in _segments(row).values():
      assert positions.tolist() == list(range(len(tokens)))
      found.append((tokens.tolist(), targets.tolist(), mask.tolist()))
  # Every example appears exactly once, whole, weights unchanged.
  want = [(e["tokens"].tolist(), e["targets"].tolist(),
           e["loss_mask"].tolist()) for e in examples]
  assert sorted(found) == sorted(want)
  assert np.mean([packing.packing_efficiency(r) for r in rows]) > 0.7


def test_chat_render_plugs_into_preference_dataset(tokenizer):
  pairs = [{"id": f"p{i}", "prompt": _record(i)["messages"][:2],
            "chosen": f"Good {i}.", "rejected": "Bad."} for i in range(4)]
  src = sources.InMemorySource(
      pairs, name="prefs",
      fields={"id": str, "prompt": list, "chosen": str, "rejected": str})
  render = sft.ChatRender(chat.LIFEJAX, tokenizer)
  batch = next(iter(pipeline.preference_dataset(
      src, tokenizer, seq_len=T, batch_size=4, seed=0, render=render,
      shuffle=False, **ONE_SHARD)))
  for b, pair in enumerate(pairs):
    for side in ("chosen", "rejected"):
      half = batch[side]
      trained = half["targets"][b][half["loss_mask"][b] > 0].tolist()
      assert trained == chat_render.render_response(chat.LIFEJAX, tokenizer,
                                                    pair[side])
      # Prompt + reply is exactly what SFT renders for that conversation.
      conv = pair["prompt"] + [{"role": "assistant", "content": pair[side]}]
      ids, mask = chat_render.render_conversation(chat.LIFEJAX, tokenizer, conv)
      n = len(ids) - 1
      assert half["tokens"][b][:n].tolist() == ids[:-1].tolist()
      np.testing.assert_array_equal(half["loss_mask"][b][:n], mask[1:])
  with pytest.raises(chat.ConversationError, match="p9.*empty_turn"):
    render({"id": "p9", "prompt": pairs[0]["prompt"], "response": " "})


def test_chat_prompt_render_plugs_into_prompt_dataset(source, tokenizer):
  render = sft.ChatPromptRender(chat.LIFEJAX, tokenizer)
  batch = next(iter(pipeline.prompt_dataset(
      source, tokenizer, prompt_len=96, batch_size=2,
      render_prompt=render, **ONE_SHARD)))
  for b in range(2):
    n = batch["prompt_lengths"][b]
    record = RECORDS[batch["record_index"][b]]
    # The reference answer is dropped; the prompt ends with the assistant
    # marker and is the start of the training rendering.
    ids, _ = chat_render.render_conversation(chat.LIFEJAX, tokenizer,
                                             record["messages"])
    prompt = batch["prompt_tokens"][b][-n:].tolist()
    assert prompt[-1] == tokenizer.special_ids["<|assistant|>"]
    assert ids[:n].tolist() == prompt
