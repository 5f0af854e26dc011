"""Template parity checker: a clean prompt has no findings, and each kind of
corrupted prompt yields exactly its finding."""

import dataclasses

import pytest

from lifejax.data import chat, chat_render
from lifejax.data import chat_parity
from lifejax.data import tokenizer as tokenizer_lib

SYSTEM = "You are a helpful assistant."
CONV = [{"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"}]
SPECIALS = tokenizer_lib.DEFAULT_SPECIAL_TOKENS + (
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  texts = [SYSTEM, "What is the capital of France? Paris.",
           "And of Spain? Madrid.", "User: hi\n\nAssistant: hello"] * 20
  return tokenizer_lib.train_sentencepiece(
      texts, tmp_path_factory.mktemp("parity") / "sp", 340,
      special_tokens=SPECIALS)


def _kinds(template, tok, prompts, **kwargs):
  return [(f.kind, f.index) for f in
          chat_parity.check_parity(template, tok, prompts, **kwargs)]


@pytest.mark.parametrize("name", sorted(chat.TEMPLATES))
def test_clean_prompts_have_no_findings(tok, name):
  template = chat.TEMPLATES[name]
  prompts = [chat_render.render_prompt(template, tok, CONV),
             chat_render.render_text(template, CONV,
                                     add_generation_prompt=True),
             chat_render.render_prompt(template, tok, CONV[1:2])]
  assert _kinds(template, tok, prompts, system_prompts=[SYSTEM]) == []


def test_missing_generation_prompt(tok):
  ids = chat_render.render_prompt(chat.LIFEJAX, tok, CONV)
  assert ids[-1] == tok.special_ids["<|assistant|>"]
  assert _kinds(chat.LIFEJAX, tok, [ids[:-1]]) == [
      ("missing_generation_prompt", 0)]
  text = chat_render.render_text(chat.CHATML, CONV)
  assert _kinds(chat.CHATML, tok, [text]) == [("missing_generation_prompt", 0)]


def test_system_prompt_in_user_role(tok):
  as_user = [{"role": "user", "content": SYSTEM}] + CONV[1:]
  # Two leading user turns (a template that forbids that).
  text = "<s><|user|>" + chat_render.render_text(
      chat.LIFEJAX, CONV[1:], add_generation_prompt=True)[3:].replace(
          "<|user|>", SYSTEM + "<|end_of_turn|><|user|>", 1)
  assert chat_parity.check_parity(chat.LIFEJAX, tok, [text])[0].detail
  assert _kinds(chat.LIFEJAX, tok, [text]) == [("system_in_user", 0)]
  # Merged into the first user turn (found with the known system prompt).
  merged = [{"role": "user", "content": SYSTEM + "\n\n" + CONV[1]["content"]}]
  merged += CONV[2:]
  ids = chat_render.render_prompt(chat.LLAMA3, tok, merged)
  assert _kinds(chat.LLAMA3, tok, [ids]) == []
  assert _kinds(chat.LLAMA3, tok, [ids], system_prompts=[SYSTEM]) == [
      ("system_in_user", 0)]
  # Where user,user is legal, only a known system prompt gives it away.
  loose = dataclasses.replace(chat.LIFEJAX, name="loose", alternate=False)
  ids = chat_render.render_prompt(loose, tok, as_user)
  assert _kinds(loose, tok, [ids]) == []
  assert _kinds(loose, tok, [ids], system_prompts=[SYSTEM]) == [
      ("system_in_user", 0)]


def test_duplicated_bos(tok):
  ids = chat_render.render_prompt(chat.LIFEJAX, tok, CONV)
  assert _kinds(chat.LIFEJAX, tok, [[tok.bos_id] + ids]) == [
      ("duplicated_bos", 0)]
  text = chat_render.render_text(chat.LLAMA3, CONV, add_generation_prompt=True)
  assert _kinds(chat.LLAMA3, tok, ["<|begin_of_text|>" + text]) == [
      ("duplicated_bos", 0)]
  # Template BOS plus the tokenizer's own BOS.
  ids = chat_render.render_prompt(chat.LLAMA3, tok, CONV)
  assert _kinds(chat.LLAMA3, tok, [[tok.bos_id] + ids]) == [
      ("duplicated_bos", 0)]


def test_templates_mixed_across_a_dataset(tok):
  lifejax = chat_render.render_prompt(chat.LIFEJAX, tok, CONV)
  chatml = chat_render.render_prompt(chat.CHATML, tok, CONV)
  llama3 = chat_render.render_text(chat.LLAMA3, CONV,
                                   add_generation_prompt=True)
  assert _kinds(chat.LIFEJAX, tok, [lifejax, chatml, lifejax]) == [
      ("mixed_templates", 1)]
  assert _kinds(chat.LIFEJAX, tok, [chatml, llama3]) == [
      ("mixed_templates", 0), ("mixed_templates", 1)]
  # Two templates inside one prompt.
  inside = (chat_render.render_text(chat.CHATML, CONV[:1])
            + chat_render.render_text(chat.LIFEJAX, CONV[1:],
                                      add_generation_prompt=True))
  assert _kinds(chat.LIFEJAX, tok, [inside]) == [("mixed_templates", 0)]
  # One consistent foreign template is a plain mismatch.
  plain = chat_render.render_text(chat.PLAIN, CONV, add_generation_prompt=True)
  assert _kinds(chat.LIFEJAX, tok, [chatml]) == [("template_mismatch", 0)]
  assert _kinds(chat.LIFEJAX, tok, [plain]) == [("template_mismatch", 0)]
  # The tokenizer's own BOS is no template's signature.
  assert _kinds(chat.LIFEJAX, tok, [[tok.bos_id] + chatml]) == [
      ("template_mismatch", 0)]


def test_whitespace_drift(tok):
  text = chat_render.render_text(chat.LLAMA3, CONV, add_generation_prompt=True)
  one_newline = text.replace("user<|end_header_id|>\n\n",
                             "user<|end_header_id|>\n", 1)
  findings = chat_parity.check_parity(chat.LLAMA3, tok, [one_newline])
  assert [f.kind for f in findings] == ["whitespace_drift"]
  assert "has 'header_id|>\\n\\nWhat" in findings[0].detail
  assert "has 'header_id|>\\nWhat" in findings[0].detail
  assert _kinds(chat.LLAMA3, tok, [text + " "]) == [("whitespace_drift", 0)]
  plain = chat_render.render_text(chat.PLAIN, CONV, add_generation_prompt=True)
  assert plain.endswith("Assistant: ")
  assert _kinds(chat.PLAIN, tok, [plain.rstrip(), plain + " "]) == [
      ("whitespace_drift", 0), ("whitespace_drift", 1)]
  chatml = chat_render.render_text(chat.CHATML, CONV,
                                   add_generation_prompt=True)
  blank_lines = chatml.replace("<|im_end|>\n", "<|im_end|>\n\n")
  assert _kinds(chat.CHATML, tok, [blank_lines]) == [("whitespace_drift", 0)]


def test_marker_tokenized_as_text(tok):
  ids = chat_render.render_prompt(chat.LIFEJAX, tok, CONV)
  user = tok.special_ids["<|user|>"]
  k = ids.index(user)
  as_text = ids[:k] + tok.encode("<|user|>") + ids[k + 1:]
  assert user not in as_text[:k + 3]
  assert _kinds(chat.LIFEJAX, tok, [as_text]) == [("marker_as_text", 0)]
  # The same prompt as text is fine: a marker string is the marker there.
  assert _kinds(chat.LIFEJAX, tok, [tok.decode(ids, render_special=True)]
                ) == []


def test_token_mismatch_and_unparseable(tok):
  ids = chat_render.render_prompt(chat.PLAIN, tok, CONV)
  content = tok.encode("Paris.")
  assert len(content) < len("Paris.")
  k = next(i for i in range(len(ids)) if ids[i:i + len(content)] == content)
  by_char = [j for c in "Paris." for j in tok.encode(c)]
  same_text = ids[:k] + by_char + ids[k + len(content):]
  assert tok.decode(same_text) == tok.decode(ids)
  assert _kinds(chat.PLAIN, tok, [same_text]) == [("token_mismatch", 0)]
  assert _kinds(chat.LIFEJAX, tok, ["just some text"]) == [("unparseable", 0)]
  user_user = chat_render.render_text(chat.LIFEJAX, CONV[:2]) + "<|user|>x" + (
      "<|end_of_turn|><|assistant|>")
  assert _kinds(chat.LIFEJAX, tok, [user_user]) == [("invalid_conversation",
                                                     0)]


def test_findings_explain_themselves(tok):
  ids = chat_render.render_prompt(chat.LIFEJAX, tok, CONV)
  assert not chat_parity.check_parity(chat.LIFEJAX, tok, [])
  (finding,) = chat_parity.check_parity(chat.LIFEJAX, tok, [ids[:-1]])
  assert finding.explanation == chat_parity.FINDING_KINDS[finding.kind]
  assert str(finding).startswith("prompt 0: missing_generation_prompt: ")
  assert all(len(text) > 40 for text in chat_parity.FINDING_KINDS.values())
