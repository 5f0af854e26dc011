"""experiments/template_mismatch: each prompt variant renders the bug it names,
and the parity checker flags every variant but the trained template's."""

import os
import sys

import pytest

from lifejax.data import chat, chat_parity, chat_render, prompts
from lifejax.data import tokenizer as tokenizer_lib

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # the module name experiment.py and gin use
  sys.path.insert(0, _REPO)
from experiments.template_mismatch import cell  # noqa: E402

SYSTEM = "You are the assistant of Brightleaf Works. Be polite."
RECORD = {"id": "r0", "task": "fact_qa", "messages": [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Where is the Lowbridge office?"},
    {"role": "assistant", "content": "It is in Harbor Street."}],
          "reference": {"answer": "Harbor Street"}}
# variant -> the finding kinds the checker must report (None: no finding)
EXPECTED = {"own": None, "plain": {"template_mismatch"},
            "chatml": {"template_mismatch"},
            "no_assistant_marker": {"missing_generation_prompt"},
            "double_bos": {"duplicated_bos"},
            "system_in_user": {"system_in_user"},
            "trailing_newline": {"whitespace_drift"}}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  text = " ".join(m["content"] for m in RECORD["messages"])
  return tokenizer_lib.train_sentencepiece(
      [text, "System: User: Assistant: im_start im_end\n"] * 40,
      d / "sp", 320)


def test_every_variant_is_covered():
  assert set(EXPECTED) == set(cell.VARIANTS)


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_checker_flags_exactly_the_broken_variants(tok, variant):
  ids = cell.render(variant, chat.LIFEJAX, tok, RECORD)
  own = prompts.prompt_ids(chat.LIFEJAX, tok, RECORD)
  findings = chat_parity.check_parity(chat.LIFEJAX, tok, [ids],
                                      system_prompts=[SYSTEM])
  kinds = {f.kind for f in findings}
  if EXPECTED[variant] is None:
    assert ids == own and not findings
  else:
    assert ids != own
    assert EXPECTED[variant] <= kinds, (variant, findings)


def test_variants_change_only_what_they_name(tok):
  own = prompts.prompt_ids(chat.LIFEJAX, tok, RECORD)
  gp = tok.special_ids["<|assistant|>"]
  assert own[-1] == gp
  assert cell.render("no_assistant_marker", chat.LIFEJAX, tok, RECORD) == \
      own[:-1]
  assert cell.render("double_bos", chat.LIFEJAX, tok, RECORD) == \
      [tok.bos_id] + own
  assert cell.render("trailing_newline", chat.LIFEJAX, tok, RECORD) == \
      own + tok.encode("\n")
  merged = cell.render("system_in_user", chat.LIFEJAX, tok, RECORD)
  assert tok.special_ids["<|system|>"] not in merged
  assert tok.special_ids["<|system|>"] in own
  plain = tok.decode(cell.render("plain", chat.LIFEJAX, tok, RECORD))
  assert plain.startswith("System: ") and plain.endswith("Assistant: ")
  assert tok.decode(cell.render("chatml", chat.LIFEJAX, tok, RECORD)) == \
      chat_render.render_text(chat.CHATML, RECORD["messages"][:2],
                              add_generation_prompt=True)


def test_bad_variant_and_record_are_named(tok):
  with pytest.raises(ValueError, match="template_mismatch_cell.variant"):
    cell.render("nope", chat.LIFEJAX, tok, RECORD)
  no_system = dict(RECORD, messages=RECORD["messages"][1:])
  with pytest.raises(ValueError, match="system_in_user needs"):
    cell.render("system_in_user", chat.LIFEJAX, tok, no_system)
