"""Export of chat templates as HF-style Jinja chat templates.

`to_jinja(template)` gives the string that goes into an HF tokenizer's
`chat_template`; rendered by `transformers` (or plain jinja2 with a
`raise_exception` global) it produces exactly `chat_render.render_text`.
"""

from __future__ import annotations

from lifejax.data import chat


def _jinja_str(s: str) -> str:
  """A Jinja string literal of `s` (Jinja unescapes like Python)."""
  for a, b in (("\\", "\\\\"), ("'", "\\'"), ("\n", "\\n"),
               ("\r", "\\r"), ("\t", "\\t")):
    s = s.replace(a, b)
  return f"'{s}'"


def _jinja_turn(fmt: chat.RoleFormat) -> str:
  return ("{{- " + _jinja_str(fmt.prefix) + " + message['content'] + "
          + _jinja_str(fmt.suffix + fmt.separator) + " -}}")


def to_jinja(template: chat.ChatTemplate) -> str:
  """An HF-style Jinja chat template rendering exactly `render_text`.

  Inputs as in `transformers` `apply_chat_template`: `messages`,
  `add_generation_prompt`, and a `raise_exception` global for role-order
  violations. Content is not trimmed (unlike some published templates).
  """
  def fail(msg: str) -> str:
    return "{{- raise_exception(" + msg + ") -}}"

  lines = [f"{{#- lifejax chat template {template.name!r} "
           "(lifejax.data.chat_jinja.to_jinja) -#}",
           "{{- " + _jinja_str(template.bos) + " -}}",
           "{%- set ns = namespace(prev=none) -%}",
           "{%- for message in messages -%}",
           "{%- set role = message['role'] -%}"]
  if template.system is not None:
    lines += ["{%- if role == 'system' -%}",
              "{%- if not loop.first -%}" + fail(
                  "'only the first message may be a system message'")
              + "{%- endif -%}",
              _jinja_turn(template.system),
              "{%- elif role == 'user' or role == 'assistant' -%}"]
  else:
    lines += ["{%- if role == 'user' or role == 'assistant' -%}"]
  if template.start_with_user:
    lines += ["{%- if ns.prev is none and role != 'user' -%}" + fail(
        "'the first non-system message must be a user message'")
              + "{%- endif -%}"]
  if template.alternate:
    lines += ["{%- if role == ns.prev -%}" + fail(
        "'user and assistant messages must alternate'") + "{%- endif -%}"]
  lines += ["{%- if role == 'user' -%}", _jinja_turn(template.user),
            "{%- else -%}", _jinja_turn(template.assistant), "{%- endif -%}",
            "{%- set ns.prev = role -%}",
            "{%- else -%}" + fail("'unsupported role: ' + role"),
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}{{- "
            + _jinja_str(template.generation_prompt) + " -}}{%- endif -%}"]
  return "\n".join(lines) + "\n"
