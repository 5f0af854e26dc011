"""Fuzzing the readers of records (hypothesis): whatever a file holds, the
JSONL reader, every loader and the chat-template renderer either return or
raise their documented error, `validation.RecordError` (of which
`chat.ConversationError` is one): never a KeyError, TypeError or
IndexError from deep inside.
"""

import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifejax.data import chat, chat_render, files, jsonl, preference, prompts
from lifejax.data import sft, validation

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# JSON values, with the strings that break naive code: empty, blank,
# markers, and a lone surrogate (valid JSON as an escape, not valid UTF-8).
TEXT = st.one_of(st.text(max_size=12),
                 st.sampled_from(["", " ", "\n", "<|user|>", "</s>",
                                  "\ud800", "a\udfffb"]))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                   st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON = st.recursive(SCALAR, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(TEXT, c, max_size=3)),
                    max_leaves=8)
ROLE = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", ""]),
                 JSON)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": st.one_of(TEXT, JSON)}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                           "content": st.text(min_size=1, max_size=12)}),
    JSON)
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=4), JSON)
CONVERSATION = st.one_of(
    st.fixed_dictionaries({}, optional={"messages": MESSAGES, "id": JSON}),
    JSON)
PAIR = st.one_of(
    st.fixed_dictionaries({}, optional={
        "prompt": st.one_of(MESSAGES, TEXT), "chosen": st.one_of(TEXT, JSON),
        "rejected": st.one_of(TEXT, JSON)}),
    JSON)
PROMPT = st.one_of(
    st.fixed_dictionaries({}, optional={"prompt": MESSAGES,
                                        "messages": MESSAGES}), JSON)
RAW_LINE = st.one_of(st.binary(max_size=20), st.sampled_from(
    [b"", b"  ", b"{", b"[]", b"{}", b'{"a": 1}', b"\xff\xfe", b"null"]))


def _file(lines: list[bytes], suffix: str = ".jsonl",
          newline_at_end: bool = True) -> str:
  fd, path = tempfile.mkstemp(suffix=suffix)
  with os.fdopen(fd, "wb") as f:
    f.write(b"\n".join(lines) + (b"\n" if newline_at_end else b""))
  return path


def _json_lines(records) -> list[bytes]:
  return [json.dumps(r).encode("utf-8") for r in records]


def _only_documented(fn, path: str) -> None:
  try:
    for policy in validation.POLICIES:
      try:
        fn(path, policy)
      except validation.RecordError as e:
        assert str(e) and e.reason
  finally:
    os.remove(path)


@FUZZ
@given(st.lists(RAW_LINE, max_size=6), st.booleans())
def test_jsonl_reader(lines, newline_at_end):
  path = _file(lines, newline_at_end=newline_at_end)
  try:
    list(jsonl.iter_jsonl(path))
  except validation.RecordError:
    pass
  _only_documented(lambda p, pol: jsonl.read_checked(p, policy=pol), path)


@FUZZ
@given(st.lists(st.one_of(CONVERSATION.map(json.dumps).map(str.encode),
                          RAW_LINE), max_size=5))
def test_sft_loader(tokenizer, lines):
  _only_documented(lambda p, pol: sft.load_conversations(
      p, "lifejax", policy=pol, tokenizer=tokenizer, seq_len=16), _file(lines))


@FUZZ
@given(st.lists(PAIR, max_size=5), st.booleans())
def test_preference_loader(tokenizer, records, chat_prompts):
  if chat_prompts:
    render = sft.ChatRender(chat.LIFEJAX, tokenizer)
    template = chat.LIFEJAX
  else:
    render, template = preference.PlainRender(tokenizer), None
  _only_documented(lambda p, pol: preference.load_pairs(
      p, policy=pol, template=template, render=render, seq_len=16),
                   _file(_json_lines(records)))


@FUZZ
@given(st.lists(PROMPT, max_size=5))
def test_prompt_loader(tokenizer, records):
  from lifejax.rl import rollout  # pylint: disable=g-import-not-at-top
  from lifejax.stages import rl_common  # pylint: disable=g-import-not-at-top
  codec = rollout.chat_codec(chat.LIFEJAX, tokenizer)
  _only_documented(lambda p, pol: prompts.load_prompts(
      p, chat.LIFEJAX, policy=pol), _file(_json_lines(records)))
  _only_documented(lambda p, pol: rl_common.prompts(
      [p], codec, 16, True, bad_records=pol), _file(_json_lines(records)))


@FUZZ
@given(st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={"text": JSON}).map(json.dumps).map(
        str.encode), RAW_LINE), max_size=5), st.sampled_from([".jsonl",
                                                              ".txt"]))
def test_pretraining_loader(lines, suffix):
  _only_documented(lambda p, pol: files.source_from_path(
      p, policy=pol).as_map_dataset(), _file(lines, suffix))


@FUZZ
@given(MESSAGES, st.sampled_from(sorted(chat.TEMPLATES)),
       st.sampled_from(chat_render.TRAIN_ON))
def test_chat_renderer(tokenizer, messages, name, train_on):
  template = chat.TEMPLATES[name]
  calls = [
      lambda: chat_render.render_conversation(template, tokenizer, messages,
                                              train_on=train_on),
      lambda: chat_render.render_prompt(template, tokenizer, messages),
      lambda: chat_render.render_text(template, messages),
      lambda: chat_render.render_text(template, messages,
                                      add_generation_prompt=True),
      lambda: prompts.prompt_ids(template, tokenizer, {"messages": messages}),
  ] + [lambda m=m: chat_render.validate_conversation(template, messages,
                                                     mode=m)
       for m in chat_render.MODES]
  for call in calls:
    try:
      call()
    except chat.ConversationError as e:
      assert e.reason


@FUZZ
@given(st.lists(st.integers(0, 599), max_size=12),
       st.sampled_from(sorted(chat.TEMPLATES)))
def test_chat_parser(tokenizer, ids, name):
  ids = [i for i in ids if i < tokenizer.vocab_size]
  try:
    chat_render.parse_conversation(chat.TEMPLATES[name], tokenizer, ids)
  except chat.ConversationError as e:
    assert e.reason == "unparseable"


def test_a_lone_surrogate_is_a_bad_record_not_a_crash(tmp_path, tokenizer):
  path = tmp_path / "s.jsonl"
  path.write_text(json.dumps({"messages": [
      {"role": "user", "content": "hi \ud800"},
      {"role": "assistant", "content": "ok"}]}) + "\n" + json.dumps(
          {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "ok"}]}) + "\n")
  with pytest.raises(validation.RecordError, match=f"^{path}:1: "):
    sft.load_conversations(str(path), "lifejax", policy="strict",
                           tokenizer=tokenizer, seq_len=32)
  records, counts = sft.load_conversations(
      str(path), "lifejax", policy="skip", tokenizer=tokenizer, seq_len=32)
  assert len(records) == 1 and counts.read == 2
