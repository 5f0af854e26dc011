"""Validated inputs (data/validation.py): every loader names a bad record as
`path:line: reason` under "strict", and skips and counts it under "skip"
with the good records still loaded; an empty file is an error under both.
"""

import json
import logging
import threading

import numpy as np
import pytest

from lifejax.data import chat, files, jsonl, pipeline, preference, prompts
from lifejax.data import sft, sources, validation
from lifejax.data import tokenizer as tokenizer_lib

ONE_SHARD = dict(shard_index=0, shard_count=1)


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _conv(i, role="user", user="Question?", answer="Answer."):
  return json.dumps({"id": f"c{i}", "messages": [
      {"role": role, "content": f"{user} {i}"},
      {"role": "assistant", "content": answer}]})


def _pair(i, chosen="Good.", rejected="Bad.", prompt=None):
  return json.dumps({"id": f"p{i}", "prompt": prompt if prompt is not None
                     else [{"role": "user", "content": f"Q {i}?"}],
                     "chosen": chosen, "rejected": rejected})


def _check_both_policies(load, path, reason, *, detail=None, kept=2):
  """Strict: RecordError at path:2 naming `reason`; skip: the good
  records, the bad one counted under `reason`."""
  with pytest.raises(validation.RecordError) as err:
    load(path, "strict")
  assert str(err.value).startswith(f"{path}:2: {reason}"), str(err.value)
  assert err.value.reason == reason and err.value.path == path
  if detail:
    assert detail in str(err.value)
  records, counts = load(path, "skip")
  assert len(records) == kept
  assert counts.read == 3 and dict(counts.skipped) == {reason: 1}
  return records, counts


# ------------------------------------------------------------- JSONL reader

def test_read_checked_locates_bad_lines_and_counts_them(tmp_path):
  path = _write(tmp_path / "r.jsonl", [
      '{"a": 1}', '{"a": ', "", "[1]", '{"b": 2}', '{"a": 3}'])

  def check(r):
    if "a" not in r:
      raise validation.RecordError("", "no_a", "field 'a' is missing")

  with pytest.raises(validation.RecordError, match=f"^{path}:2: bad_json"):
    jsonl.read_checked(path, check, policy="strict")
  got = jsonl.read_checked(path, check, policy="skip")
  assert got.records == [{"a": 1}, {"a": 3}] and got.lines == [1, 6]
  assert got.counts.as_dict() == {
      "read": 5, "kept": 2, "truncated": 0,
      "skipped": {"bad_json": 1, "no_a": 1, "not_an_object": 1}}


@pytest.mark.parametrize("policy", validation.POLICIES)
@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_file_is_an_error_under_both_policies(tmp_path, policy,
                                                       text):
  path = tmp_path / "empty.jsonl"
  path.write_text(text)
  with pytest.raises(validation.RecordError,
                     match=f"^{path}: empty_file") as err:
    jsonl.read_checked(path, policy=policy)
  assert err.value.path == str(path)


def test_a_file_with_no_valid_record_is_an_error(tmp_path):
  path = _write(tmp_path / "bad.jsonl", ["[1]", "nope"])
  with pytest.raises(validation.RecordError,
                     match=f"^{path}: no_valid_records: all 2"):
    jsonl.read_checked(path, policy="skip")


def test_a_torn_last_line_is_skipped_and_counted(tmp_path):
  path = tmp_path / "t.jsonl"
  path.write_text('{"a": 1}\n{"a": 2', encoding="utf-8")
  got = jsonl.read_checked(path, policy="strict")
  assert got.records == [{"a": 1}]
  assert dict(got.counts.skipped) == {"torn_last_line": 1}


def test_unknown_policy_is_an_error():
  with pytest.raises(ValueError, match="sft.bad_records='lenient'"):
    validation.check_policy("sft.bad_records", "lenient")
  with pytest.raises(ValueError, match="give only sft.bad_records"):
    validation.training_policy("sft", "skip", True)
  assert validation.training_policy("sft", None, None) == "skip"
  assert validation.training_policy("sft", None, False) == "strict"


# ---------------------------------------------------------- SFT chat data

SFT_BAD = {
    "bad_json": ('{"messages": [', None),
    "not_an_object": ('["messages"]', None),
    "missing_field": ('{"id": "x"}', "field 'messages' is missing"),
    "wrong_type": ('{"messages": "hello"}', "should be list, got str"),
    "unknown_role": (_conv(9, role="robot"),
                     "unknown role 'robot' (expected system/user/assistant)"),
    "empty_turn": (_conv(9, user=" ", answer="  "), "is empty"),
    "bad_message": ('{"messages": [{"role": "user"}]}', None),
    "last_not_assistant": (json.dumps({"messages": [
        {"role": "user", "content": "hi"}]}), None),
}


@pytest.mark.parametrize("reason", sorted(SFT_BAD))
def test_sft_conversations(tmp_path, reason):
  line, detail = SFT_BAD[reason]
  path = _write(tmp_path / "sft.jsonl", [_conv(0), line, _conv(2)])
  records, _ = _check_both_policies(
      lambda p, pol: sft.load_conversations(p, "lifejax", policy=pol),
      path, reason, detail=detail)
  assert [r["id"] for r in records] == ["c0", "c2"]


def test_sft_too_long_and_truncated_conversations(tmp_path, tokenizer):
  long_answer = "word " * 80
  path = _write(tmp_path / "sft.jsonl", [
      _conv(0), _conv(1, user="long " * 80), _conv(2, answer=long_answer)])
  for policy in validation.POLICIES:  # a length bound is not corruption
    records, counts = sft.load_conversations(
        path, "lifejax", policy=policy, tokenizer=tokenizer, seq_len=32)
    # Counted; left in the list (sft_dataset drops it), so the order of
    # the others is what it was before validation existed.
    assert len(records) == 3
    assert counts.as_dict() == {"read": 3, "kept": 2, "truncated": 1,
                                "skipped": {"too_long": 1}}


def test_sft_skip_really_skips_into_batches(tmp_path, tokenizer):
  """What the SFT stage does with skip_bad=True / bad_records="skip": bad
  JSON, a missing field and a wrong type no longer abort; the good
  conversations become batches."""
  lines = [_conv(i) for i in range(8)]
  lines[1] = '{"messages": [oops'
  lines[4] = '{"id": "no messages"}'
  lines[6] = '{"messages": 7}'
  path = _write(tmp_path / "train.jsonl", lines)
  records, counts = sft.load_conversations(
      path, "lifejax", policy="skip", tokenizer=tokenizer, seq_len=64)
  assert dict(counts.skipped) == {"bad_json": 1, "missing_field": 1,
                                  "wrong_type": 1}
  src = sources.InMemorySource(records, name="train",
                               fields={"messages": list})
  batches = list(sft.sft_dataset(src, tokenizer, "lifejax", seq_len=64,
                                 batch_size=1, seed=0, shuffle=False,
                                 num_epochs=1, skip_bad=True, **ONE_SHARD))
  assert batches and sum(int(b["segment_ids"].max()) for b in batches) == 5


# -------------------------------------------------------- preference pairs

PAIR_BAD = {
    "bad_json": ('{"prompt": ', None),
    "missing_field": (json.dumps({"prompt": [{"role": "user",
                                              "content": "q"}],
                                  "chosen": "a"}),
                      "field 'rejected' is missing"),
    "wrong_type": (_pair(9, chosen=3), "should be str, got int"),
    "unknown_role": (_pair(9, prompt=[{"role": "narrator", "content": "x"}]),
                     "unknown role 'narrator' (expected "
                     "system/user/assistant)"),
    "chosen_equals_rejected": (_pair(9, chosen="Same.", rejected="Same."),
                               "chosen equals rejected"),
    "empty_prompt": (_pair(9, prompt=[]), None),
    "empty_response": (_pair(9, rejected="   "), "'rejected' is empty"),
    "empty_turn": (_pair(9, prompt=[{"role": "user", "content": ""}]), None),
}


@pytest.mark.parametrize("reason", sorted(PAIR_BAD))
def test_preference_pairs(tmp_path, tokenizer, reason):
  line, detail = PAIR_BAD[reason]
  path = _write(tmp_path / "pairs.jsonl", [_pair(0), line, _pair(2)])
  render = sft.ChatRender(chat.LIFEJAX, tokenizer)
  records, counts = _check_both_policies(
      lambda p, pol: preference.load_pairs(
          p, policy=pol, template=chat.LIFEJAX, render=render, seq_len=64),
      path, reason, detail=detail)
  assert [r["id"] for r in records] == ["p0", "p2"]
  assert counts.truncated == 0


def test_plain_text_pairs_and_truncation(tmp_path, tokenizer):
  path = _write(tmp_path / "plain.jsonl", [
      _pair(0, prompt="Question?"), _pair(1, prompt=""),
      _pair(2, prompt="Question?", chosen="long " * 50)])
  render = preference.PlainRender(tokenizer)
  with pytest.raises(validation.RecordError,
                     match=f"^{path}:2: empty_prompt"):
    preference.load_pairs(path, policy="strict", render=render, seq_len=16)
  records, counts = preference.load_pairs(path, policy="skip", render=render,
                                          seq_len=16)
  assert [r["id"] for r in records] == ["p0", "p2"]
  assert counts.truncated == 1 and dict(counts.skipped) == {
      "empty_prompt": 1}


# ---------------------------------------------------------------- prompts

PROMPT_BAD = {
    "bad_json": ("{", None),
    "missing_field": ('{"id": "x", "task": "t"}',
                      "needs a 'prompt' or a 'messages' list"),
    "unknown_role": (_conv(9, role="bot"), "unknown role 'bot'"),
    "empty_prompt": ('{"prompt": []}', None),
    "empty_turn": (json.dumps({"messages": [{"role": "user",
                                             "content": ""}]}), None),
}


@pytest.mark.parametrize("reason", sorted(PROMPT_BAD))
def test_prompt_records(tmp_path, reason):
  line, detail = PROMPT_BAD[reason]
  path = _write(tmp_path / "prompts.jsonl", [_conv(0), line, _conv(2)])
  _check_both_policies(
      lambda p, pol: prompts.load_prompts(p, chat.LIFEJAX, policy=pol),
      path, reason, detail=detail)


def test_rl_prompts_count_bad_too_long_and_unjudgeable(tmp_path, tokenizer):
  from lifejax.rl import rollout  # pylint: disable=g-import-not-at-top
  from lifejax.stages import rl_common  # pylint: disable=g-import-not-at-top
  judged = {"task": "fact_qa", "reference": {"answer": "x"}}
  lines = [json.dumps({**json.loads(_conv(i)), **judged}) for i in range(5)]
  lines[1] = '{"prompt": "not a list"}'
  lines[2] = json.dumps({**json.loads(_conv(2, user="long " * 60)), **judged})
  lines[3] = _conv(3)  # no task: the judge cannot score it
  path = _write(tmp_path / "p.jsonl", lines)
  codec = rollout.chat_codec(chat.LIFEJAX, tokenizer)
  with pytest.raises(validation.RecordError,
                     match=f"^{path}:2: missing_field"):
    rl_common.prompts([path], codec, 32, True, bad_records="strict")
  log = validation.SkipLog()
  records, counts = rl_common.prompts([path], codec, 32, True, log=log)
  assert [r["id"] for r in records] == ["c0", "c4"]
  assert counts == {"kept": 2, "too_long": 1, "unjudgeable": 1}
  assert log.as_dict() == {path: {
      "kind": "prompts", "policy": "skip", "read": 5, "kept": 2,
      "truncated": 0, "skipped": {"missing_field": 1, "too_long": 1,
                                  "unjudgeable": 1}}}


# ------------------------------------------------ pretraining text sources

@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_pretraining_sources(tmp_path, tokenizer, suffix):
  if suffix == ".jsonl":
    lines = ['{"text": "alpha beta"}', '{"text": 5}', '{"text": "gamma"}']
    reason = "wrong_type"
  else:
    lines = ["alpha beta", "caf\udce9", "gamma"]
    reason = "invalid_utf8"
  path = tmp_path / f"docs{suffix}"
  path.write_bytes("".join(x + "\n" for x in lines).encode(
      "utf-8", "surrogateescape"))
  path = str(path)
  with pytest.raises(validation.RecordError, match=f"^{path}:2: {reason}"):
    files.source_from_path(path).as_map_dataset()
  log = validation.SkipLog()
  src = log.watch(files.source_from_path(path, policy="skip"),
                  kind="documents", policy="skip")
  batch = next(iter(pipeline.lm_dataset(src, tokenizer, seq_len=8,
                                        batch_size=1, seed=0, num_epochs=1,
                                        **ONE_SHARD)))
  assert batch["tokens"].shape == (1, 8)
  assert log.as_dict()[path] == {"kind": "documents", "policy": "skip",
                                 "read": 3, "kept": 2, "truncated": 0,
                                 "skipped": {reason: 1}}


@pytest.mark.parametrize("policy", validation.POLICIES)
@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_an_empty_pretraining_file_names_its_path(tmp_path, policy, suffix):
  path = tmp_path / f"sub{suffix}"
  path.write_text("\n")
  src = files.source_from_path(str(path), policy=policy)
  with pytest.raises(validation.RecordError,
                     match=f"^{path}: empty_file: the file has no records"):
    src.as_map_dataset()
  with pytest.raises(validation.RecordError, match=f"^{path}: empty_file"):
    files.holdout_split([files.source_from_path(str(path), policy=policy)],
                        "text", 0.5)


def test_all_bad_pretraining_file_names_its_path(tmp_path):
  path = _write(tmp_path / "bad.jsonl", ['{"x": 1}'])
  with pytest.raises(validation.RecordError,
                     match=f"^{path}: no_valid_records: no valid records"):
    files.source_from_path(path, policy="skip").as_map_dataset()


# ----------------------------------------------------------------- the log

def test_skip_log_summary_and_one_warning_per_file(tmp_path):
  a = _write(tmp_path / "a.jsonl", [_conv(0), "{", _conv(2)])
  b = _write(tmp_path / "b.jsonl", [_conv(0)])
  log = validation.SkipLog()
  for p in (a, b):
    log.put(p, sft.load_conversations(p, "lifejax", policy="skip")[1],
            kind="conversations", policy="skip")
  seen = []
  handler = logging.Handler()
  handler.emit = lambda record: seen.append(record.getMessage())
  logger = logging.getLogger("lifejax.data.validation")
  logger.addHandler(handler)
  try:
    out = log.summary("sft")
  finally:
    logger.removeHandler(handler)
  assert out == {"input_records": {
      a: {"kind": "conversations", "policy": "skip", "read": 3, "kept": 2,
          "truncated": 0, "skipped": {"bad_json": 1}},
      b: {"kind": "conversations", "policy": "skip", "read": 1, "kept": 1,
          "truncated": 0, "skipped": {}}}}
  assert seen == [f"sft: {a}: 2 of 3 conversations kept; skipped 1 "
                  "(bad_json 1)"]


def test_record_errors_pickle():
  import pickle  # pylint: disable=g-import-not-at-top
  for err in (validation.RecordError("f:2", "bad_json", "x", path="f"),
              chat.ConversationError("empty_turn", "m 0", "f:3", path="f")):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert back.path == "f" and back.reason == err.reason


# ------------------------------------------------- long lines are linear

def test_long_texts_are_encoded_in_bounded_calls(tokenizer, monkeypatch):
  """A SentencePiece call holds the GIL for its whole input, so one call
  per multi-megabyte text stalls every other thread for time linear in its
  length (the packer waits on it many times: quadratic time to the first
  batch). Long texts go in bounded pieces; normal ones in one call."""
  size = 1000
  monkeypatch.setattr(tokenizer_lib, "ENCODE_CHUNK_CHARS", size)
  calls = []
  sp = tokenizer._sp

  me = threading.get_ident()

  class Spy:  # counts this thread's calls (not a reader thread's)

    def encode(self, text):
      if threading.get_ident() == me:
        calls.append(len(text))
      return sp.encode(text)

    def __getattr__(self, name):
      return getattr(sp, name)

  monkeypatch.setattr(tokenizer, "_sp", Spy())
  words = " ".join(f"word{i % 97} and  more" for i in range(3000))
  ids = tokenizer.encode(words, add_bos=True, add_eos=True)
  assert len(calls) >= len(words) // (2 * size) and max(calls) <= 2 * size
  assert sum(calls) == len(words)
  assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
  assert tokenizer.decode(ids) == words  # exact round trip across cuts
  calls.clear()
  normal = words[:size]
  assert tokenizer.encode(normal) == sp.encode(normal) and calls == [size]


def test_encode_chunks_cut_at_word_starts():
  text = "ab  cd" * 50 + "x" * 300 + " end"
  pieces = list(tokenizer_lib.encode_chunks(text, 40))
  assert "".join(pieces) == text
  for before, p in zip(pieces, pieces[1:]):
    # a cut is just before a space that follows a non-space, or (in the
    # 300 letters with no space) a hard cut at the size
    assert (p[0] == " " and before[-1] != " ") or p[0] == "x"
  assert all(len(p) < 80 for p in pieces)
  with pytest.raises(ValueError):
    list(tokenizer_lib.encode_chunks(text, 0))


def test_document_pieces_are_views_of_one_pairs_array():
  """The packer's per-document work is one numpy call, whatever the
  number of pieces, and gives split_document's pairs exactly."""
  from lifejax.data import packing  # pylint: disable=g-import-not-at-top
  doc = np.arange(1000, dtype=np.int32)
  pieces = packing._DocumentToPairs(64).flat_map(doc)
  base = pieces[0]["pairs"].base
  assert base is not None and all(p["pairs"].base is base for p in pieces)
  expected = [np.stack([p[:-1], p[1:]], -1)
              for p in packing.split_document(doc, 64)]
  assert len(pieces) == len(expected)
  assert all(np.array_equal(p["pairs"], e) for p, e in zip(pieces, expected))
