"""chat_render.render_continuation: the ids a multi-turn rollout appends
after a sampled assistant turn equal a full re-rendering of the longer
conversation (so token-in/token-out and the template agree)."""

import pytest

from lifejax.data import chat, chat_render


@pytest.mark.parametrize("name", ["lifejax", "chatml", "plain", "llama3"])
def test_continuation_extends_the_rendering(tokenizer, name):
  template = chat.TEMPLATES[name]
  try:
    chat_render.check_tokenizer(template, tokenizer)
  except ValueError:
    pytest.skip(f"{name} needs special tokens this tokenizer lacks")
  first = [{"role": "user", "content": "Who heads Research?"}]
  call, obs = "lookup: Research", "Directory: Selma Holley heads Research."
  longer = first + [{"role": "assistant", "content": call},
                    {"role": "user", "content": obs}]
  held = (chat_render.render_prompt(template, tokenizer, first)
          + chat_render.render_response(template, tokenizer, call))
  appended = held + chat_render.render_continuation(template, tokenizer,
                                                    "user", obs)
  assert appended == chat_render.render_prompt(template, tokenizer, longer)


def test_continuation_rejects_bad_turns(tokenizer):
  with pytest.raises(chat_render.ConversationError, match="empty"):
    chat_render.render_continuation(chat.LIFEJAX, tokenizer, "user", "  ")
  with pytest.raises(chat_render.ConversationError, match="no 'tool'"):
    chat_render.render_continuation(chat.LIFEJAX, tokenizer, "tool", "x")
