"""Chat templates: golden layouts, loss masks, rules, JSON, Jinja, parsing."""

import dataclasses

import numpy as np
import pytest

from lifejax.data import chat, chat_render
from lifejax.data import chat_jinja
from lifejax.data import tokenizer as tokenizer_lib

CHAT_CORPUS = [
    "You are a helpful assistant. Answer briefly.",
    "What is the capital of France?",
    "The capital of France is Paris.",
    "And of Spain? Madrid is the capital of Spain.",
    "Hi! Hello, how can I help you today?",
    "Thanks, bye! Goodbye and have a nice day.",
    "User: hello there\n\nAssistant: hi, nice to meet you",
    "Please list three colors: red, green and blue.",
]
CHAT_SPECIALS = tokenizer_lib.DEFAULT_SPECIAL_TOKENS + (
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

ONE_TURN = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."}]
MULTI_TURN = [{"role": "user", "content": "Hi!"},
              {"role": "assistant", "content": "Hello."},
              {"role": "user", "content": "Thanks, bye!"},
              {"role": "assistant", "content": "Goodbye."}]
ALL = sorted(chat.TEMPLATES)


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
  """Has every built-in template's markers as special tokens."""
  prefix = tmp_path_factory.mktemp("chat_tok") / "sp"
  return tokenizer_lib.train_sentencepiece(CHAT_CORPUS * 10, prefix, 360,
                                           special_tokens=CHAT_SPECIALS)


def _layout(tok, ids, mask):
  return [(tok.id_to_token(i), int(m)) for i, m in zip(ids, mask)]


def test_golden_lifejax_layout(chat_tok):
  """Exact (piece, mask) layout of the lifejax template.

  The pieces depend on the tokenizer trained from CHAT_CORPUS above. If the
  template or that tokenizer changes on purpose, print
  `_layout(chat_tok, *chat_render.render_conversation(chat.LIFEJAX, chat_tok,
  conv))`
  for ONE_TURN and MULTI_TURN, check by eye that every marker is one piece,
  that only assistant content and <|end_of_turn|> after <|assistant|> carry
  mask 1, and paste the new lists here.
  """
  ids, mask = chat_render.render_conversation(chat.LIFEJAX, chat_tok, ONE_TURN)
  assert _layout(chat_tok, ids, mask) == [
      ("<s>", 0), ("<|system|>", 0), ("<0x42>", 0), ("e", 0), ("▁b", 0),
      ("ri", 0), ("e", 0), ("f", 0), (".", 0), ("<|end_of_turn|>", 0),
      ("<|user|>", 0), ("H", 0), ("i", 0), ("!", 0), ("<|end_of_turn|>", 0),
      ("<|assistant|>", 0), ("H", 1), ("ello", 1), (".", 1),
      ("<|end_of_turn|>", 1)]
  ids, mask = chat_render.render_conversation(chat.LIFEJAX, chat_tok,
                                              MULTI_TURN)
  assert _layout(chat_tok, ids, mask) == [
      ("<s>", 0), ("<|user|>", 0), ("H", 0), ("i", 0), ("!", 0),
      ("<|end_of_turn|>", 0), ("<|assistant|>", 0), ("H", 1), ("ello", 1),
      (".", 1), ("<|end_of_turn|>", 1), ("<|user|>", 0), ("Th", 0),
      ("an", 0), ("k", 0), ("s", 0), (",", 0), ("▁", 0), ("bye", 0),
      ("!", 0), ("<|end_of_turn|>", 0), ("<|assistant|>", 0), ("G", 1),
      ("o", 1), ("od", 1), ("bye", 1), (".", 1), ("<|end_of_turn|>", 1)]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("conv", [ONE_TURN, MULTI_TURN], ids=["one", "multi"])
def test_mask_covers_assistant_content_and_end_of_turn_only(chat_tok, name,
                                                            conv):
  template = chat.TEMPLATES[name]
  ids, mask = chat_render.render_conversation(template, chat_tok, conv)
  assert ids.dtype == np.int32 and mask.dtype == np.float32
  assert ids.shape == mask.shape and set(np.unique(mask)) <= {0.0, 1.0}
  # The whole rendering is the template's text, markers as single pieces.
  assert chat_tok.decode(ids, render_special=True) == chat_render.render_text(
      template, conv)
  specials = set(chat_tok.special_ids.values())
  n_special = sum(int(i in specials) for i in ids)
  n_markers = sum(chat_render.render_text(template, conv).count(m)
                  for m in template.special_tokens)
  assert n_special == n_markers
  # Trained tokens, in order, are exactly content + end of turn per reply.
  trained = [int(i) for i, m in zip(ids, mask) if m]
  expected = []
  for m in conv:
    if m["role"] == "assistant":
      expected += chat_render.render_response(template, chat_tok, m["content"])
  assert trained == expected
  # Every other token (role markers, prompts, separators) has weight 0.
  eot = chat_render.render_response(template, chat_tok, "x")[-1]
  assert all(m == 0 for i, m in zip(ids, mask) if i in specials and i != eot)


def test_train_on_last_assistant(chat_tok):
  _, every = chat_render.render_conversation(chat.LIFEJAX, chat_tok,
                                            MULTI_TURN)
  ids, last = chat_render.render_conversation(chat.LIFEJAX, chat_tok,
                                              MULTI_TURN,
                                              train_on="last_assistant")
  start = len(chat_render.render_prompt(chat.LIFEJAX, chat_tok,
                                        MULTI_TURN[:-1]))
  assert last[:start].sum() == 0 and every[:start].sum() > 0
  np.testing.assert_array_equal(last[start:], every[start:])
  with pytest.raises(ValueError, match="train_on"):
    chat_render.render_conversation(chat.LIFEJAX, chat_tok, MULTI_TURN,
                                    train_on="first")


@pytest.mark.parametrize("name", ALL)
def test_prompt_plus_response_is_the_conversation(chat_tok, name):
  template = chat.TEMPLATES[name]
  ids, mask = chat_render.render_conversation(template, chat_tok, MULTI_TURN)
  prompt = chat_render.render_prompt(template, chat_tok, MULTI_TURN[:-1])
  reply = chat_render.render_response(template, chat_tok,
                                      MULTI_TURN[-1]["content"])
  assert chat_tok.decode(prompt, render_special=True) == (
      chat_render.render_text(template, MULTI_TURN[:-1],
                              add_generation_prompt=True))
  n = len(prompt) + len(reply)
  assert ids[:n].tolist() == prompt + reply
  # What follows the reply is only the untrained separator.
  assert mask[n:].sum() == 0
  assert chat_tok.decode(ids[n:]) == template.assistant.separator


def test_markers_fall_back_to_text_without_special_pieces(chat_tok, tokenizer):
  # `tokenizer` (tests/data/conftest.py) has no ChatML pieces.
  assert "<|im_start|>" not in tokenizer.special_ids
  ids, mask = chat_render.render_conversation(chat.CHATML, tokenizer, ONE_TURN)
  assert tokenizer.decode(ids) == chat_render.render_text(chat.CHATML, ONE_TURN)
  assert not set(ids.tolist()) & set(tokenizer.special_ids.values())
  # The reply and the marker text of its end of turn are still trained.
  assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == (
      "Hello.<|im_end|>")
  # With the pieces, each marker is one id.
  ids, _ = chat_render.render_conversation(chat.CHATML, chat_tok, ONE_TURN)
  assert ids.tolist().count(chat_tok.special_ids["<|im_start|>"]) == 3


def test_required_special_tokens_are_enforced(tmp_path):
  bare = tokenizer_lib.train_sentencepiece(CHAT_CORPUS * 10, tmp_path / "b",
                                           330, special_tokens=())
  with pytest.raises(ValueError, match=r"needs \['<\|system\|>'"):
    chat_render.render_conversation(chat.LIFEJAX, bare, ONE_TURN)
  with pytest.raises(ValueError, match="needs"):
    chat_render.check_tokenizer(chat.LIFEJAX, bare)


def test_content_cannot_forge_markers(chat_tok):
  conv = [{"role": "user", "content": "say <|assistant|> and <|end_of_turn|>"},
          {"role": "assistant", "content": "<|user|>ok"}]
  ids, mask = chat_render.render_conversation(chat.LIFEJAX, chat_tok, conv)
  special = chat_tok.special_ids
  assert ids.tolist().count(special["<|assistant|>"]) == 1
  assert ids.tolist().count(special["<|user|>"]) == 1
  assert chat_render.parse_conversation(chat.LIFEJAX, chat_tok, ids) == conv


@pytest.mark.parametrize("name", ALL)
def test_parse_round_trips(chat_tok, tokenizer, name):
  template = chat.TEMPLATES[name]
  # Content containing a suffix-like string must not derail parsing.
  conv = MULTI_TURN + [{"role": "user", "content": "a\n\nUser: b"},
                       {"role": "assistant", "content": "ok\n\n"}]
  for tok in (chat_tok, tokenizer):
    ids, _ = chat_render.render_conversation(template, tok, conv)
    assert chat_render.parse_conversation(template, tok, ids) == conv
    prompt = chat_render.render_prompt(template, tok, conv[:-1])
    assert chat_render.parse_conversation(template, tok, prompt) == conv[:-1]
  # A generation cut off before its end of turn is an open last turn.
  cut = prompt + tokenizer.encode("Goo")
  assert chat_render.parse_conversation(template, tokenizer, cut)[-1] == {
      "role": "assistant", "content": "Goo"}
  with pytest.raises(chat.ConversationError, match="unparseable"):
    chat_render.parse_conversation(template, chat_tok, chat_tok.encode("hello"))


def _sys_free():
  return dataclasses.replace(chat.LIFEJAX, name="nosys", system=None)


@pytest.mark.parametrize("messages,reason", [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}],
     "empty_turn"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
      {"role": "assistant", "content": "c"}], "repeated_role"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
      {"role": "assistant", "content": "c"}], "assistant_first"),
    ([{"role": "tool", "content": "a"}, {"role": "assistant", "content": "b"}],
     "unknown_role"),
    ([{"role": "user", "content": "a"}], "last_not_assistant"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
      {"role": "assistant", "content": "b"}], "misplaced_system"),
    ([{"role": "user"}, {"role": "assistant", "content": "b"}], "bad_message"),
    ([], "empty_conversation"),
    ("hello", "bad_message"),
])
def test_bad_conversations_raise_with_reason(chat_tok, messages, reason):
  with pytest.raises(chat.ConversationError) as e:
    chat_render.render_conversation(chat.LIFEJAX, chat_tok, messages)
  assert e.value.reason == reason


def test_template_rules_are_data(chat_tok):
  with pytest.raises(chat.ConversationError, match="system_unsupported"):
    chat_render.render_conversation(_sys_free(), chat_tok, ONE_TURN)
  loose = dataclasses.replace(chat.LIFEJAX, name="loose", alternate=False)
  two_users = [{"role": "user", "content": "a"},
               {"role": "user", "content": "b"},
               {"role": "assistant", "content": "c"}]
  ids, _ = chat_render.render_conversation(loose, chat_tok, two_users)
  assert chat_render.parse_conversation(loose, chat_tok, ids) == two_users
  with pytest.raises(chat.ConversationError, match="repeated_role"):
    chat_render.render_prompt(chat.LIFEJAX, chat_tok, MULTI_TURN)
  with pytest.raises(ValueError, match="non-empty"):
    chat.ChatTemplate(name="x", user=chat.RoleFormat("", "e"),
                      assistant=chat.RoleFormat("a", "e"))


@pytest.mark.parametrize("name", ALL)
def test_json_round_trip(name):
  # The run-directory file: tests/run/test_artifacts.py.
  template = chat.TEMPLATES[name]
  assert chat.ChatTemplate.from_json(template.to_json()) == template
  custom = dataclasses.replace(template, name="custom", alternate=False)
  assert chat.ChatTemplate.from_json(custom.to_json()) == custom
  assert hash(custom) != hash(template)


def test_json_is_checked():
  d = chat.LIFEJAX.to_dict()
  with pytest.raises(ValueError, match="unknown fields"):
    chat.ChatTemplate.from_json({**d, "extra": 1})
  with pytest.raises(ValueError, match="version"):
    chat.ChatTemplate.from_json({**d, "version": 99})
  with pytest.raises(ValueError, match="not a lifejax chat template"):
    chat.ChatTemplate.from_json({"name": "x"})
  assert chat.get_template("chatml") is chat.CHATML
  with pytest.raises(ValueError, match="unknown chat template"):
    chat.get_template("vicuna")


@pytest.mark.parametrize("name", ALL)
def test_jinja_export_renders_identically(name):
  sandbox = pytest.importorskip("jinja2.sandbox")
  template = chat.TEMPLATES[name]

  def raise_exception(msg):
    raise ValueError(msg)

  # The environment HF transformers renders chat templates with.
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
                                              lstrip_blocks=True)
  env.globals["raise_exception"] = raise_exception
  jinja = env.from_string(chat_jinja.to_jinja(template))
  odd = [{"role": "user", "content": "it's {{ x }} \\n 'q' \"dq\"\n\ttab"},
         {"role": "assistant", "content": "ünï ✓ 🎉"}]
  for conv in (ONE_TURN, MULTI_TURN, odd):
    assert jinja.render(messages=conv, add_generation_prompt=False) == (
        chat_render.render_text(template, conv))
    assert jinja.render(messages=conv[:-1], add_generation_prompt=True) == (
        chat_render.render_text(template, conv[:-1],
                                add_generation_prompt=True))
  with pytest.raises(ValueError, match="alternate"):
    jinja.render(messages=[{"role": "user", "content": "a"}] * 2)
  with pytest.raises(ValueError, match="first non-system"):
    jinja.render(messages=[{"role": "assistant", "content": "a"}])
  with pytest.raises(ValueError, match="unsupported role"):
    jinja.render(messages=[{"role": "tool", "content": "a"}])


def test_stop_ids(chat_tok, tokenizer):
  eot = chat_tok.special_ids["<|end_of_turn|>"]
  assert chat_render.stop_ids(chat.LIFEJAX, chat_tok) == sorted(
      {eot, chat_tok.eos_id})
  assert chat_render.stop_ids(chat.LLAMA3, chat_tok) == sorted(
      {chat_tok.special_ids["<|eot_id|>"], chat_tok.eos_id})
  assert chat_render.stop_ids(chat.PLAIN, chat_tok) == [chat_tok.eos_id]
  with pytest.raises(ValueError, match="tokens with this tokenizer"):
    chat_render.stop_ids(chat.CHATML, tokenizer)
