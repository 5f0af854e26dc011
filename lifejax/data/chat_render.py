"""Rendering conversations with a chat template: ids, loss masks, text.

Messages are checked against the template's role rules first
(`validate_conversation`); the rendering rule itself (turn = prefix + content +
suffix + separator, loss on assistant content and suffix only) is described in
chat.py.

Ids come from encoding in pieces: every marker string that the tokenizer has as
a special (control) id becomes that id, every other template string and every
message content is encoded on its own. So a prompt's ids are an exact prefix of
the full conversation's ids, and mask boundaries are token boundaries. Content
can never produce a marker id (SentencePiece `encode` never emits control ids;
a tokenizer that does is rejected at render time).

Mask convention: `loss_mask[i]` weighs token `ids[i]` as a prediction target,
so an LM row uses `tokens = ids[:-1]`, `targets = ids[1:]`,
`loss_mask = loss_mask[1:]`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from lifejax.data import chat_match, validation
from lifejax.data.chat import ROLES, ChatTemplate, ConversationError

TRAIN_ON = ("all_assistant", "last_assistant")
MODES = ("training", "prompt", "any")

Message = dict[str, str]


class Tokenizer(Protocol):
  """What the renderer needs from a tokenizer (SentencePiece or HF)."""

  @property
  def bos_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def special_ids(self) -> dict[str, int]: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


# ---------------------------------------------------------------- validation


def _turns(messages: Any) -> list[tuple[str, str]]:
  """(role, content) pairs; ConversationError on malformed messages."""
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
    raise ConversationError("bad_message", "messages must be a list of "
                            f"{{role, content}} dicts, got "
                            f"{type(messages).__name__}")
  if not messages:
    raise ConversationError("empty_conversation", "no messages")
  out = []
  for i, m in enumerate(messages):
    if (not isinstance(m, Mapping) or not isinstance(m.get("role"), str)
        or not isinstance(m.get("content"), str)):
      raise ConversationError("bad_message", f"message {i} is not a {{role: "
                              f"str, content: str}} dict: {str(m)[:80]}")
    if not validation.is_text(m["content"]):
      raise ConversationError("invalid_utf8", f"message {i} holds a lone "
                              "surrogate (not text)")
    out.append((m["role"], m["content"]))
  return out


def validate_conversation(template: ChatTemplate, messages: Any, *,
                          mode: str = "training") -> None:
  """Raises ConversationError unless `template` can render `messages`.

  Modes: "training" (the last turn must be the assistant's), "prompt" (an
  assistant turn must be allowed next), "any" (only order rules).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  turns = _turns(messages)
  prev = None
  for i, (role, content) in enumerate(turns):
    template.role_format(role)
    if not content.strip():
      raise ConversationError("empty_turn", f"message {i} ({role}) is empty")
    if role == "system":
      if i != 0:
        raise ConversationError("misplaced_system", f"message {i} is a "
                                "system turn; only the first may be")
      continue
    if prev is None and role != "user" and template.start_with_user:
      raise ConversationError("assistant_first", f"message {i} is the first "
                              "non-system turn and is not a user turn")
    if template.alternate and role == prev:
      raise ConversationError("repeated_role", f"messages {i - 1} and {i} are "
                              f"both {role!r} turns; template "
                              f"{template.name!r} requires alternation")
    prev = role
  if mode == "training" and turns[-1][0] != "assistant":
    raise ConversationError("last_not_assistant", f"the last turn is "
                            f"{turns[-1][0]!r}; training needs an assistant "
                            "turn to learn from")
  if mode == "prompt":
    if prev is None and template.start_with_user:
      raise ConversationError("no_user_turn", "a prompt needs a user turn")
    if template.alternate and prev == "assistant":
      raise ConversationError("repeated_role", "the last turn is the "
                              "assistant's; the next one cannot be too")


# ----------------------------------------------------------------- rendering


class _Bound(NamedTuple):
  """A template's strings resolved to ids for one tokenizer."""
  bos: tuple[int, ...]
  formats: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
  special: frozenset[int]


def _encode_template_text(template: ChatTemplate, tokenizer: Tokenizer,
                          text: str) -> tuple[int, ...]:
  specials = tokenizer.special_ids
  out: list[int] = []
  markers = template.special_tokens
  for part, is_marker in chat_match.split_markers(text, markers):
    if is_marker and part in specials:
      out.append(specials[part])
    else:
      out.extend(tokenizer.encode(part))
  return tuple(out)


def _bind_uncached(template: ChatTemplate, tokenizer: Tokenizer) -> _Bound:
  specials = tokenizer.special_ids
  if template.require_special:
    missing = [t for t in template.special_tokens if t not in specials]
    if missing:
      raise ValueError(
          f"template {template.name!r} needs {missing} as special tokens, "
          f"which this tokenizer lacks (it has {sorted(specials)}); train the "
          "tokenizer with them as special_tokens or pick another template")
  enc = functools.partial(_encode_template_text, template, tokenizer)
  formats = {}
  for role in ROLES:
    fmt = getattr(template, role)
    if fmt is not None:
      formats[role] = (enc(fmt.prefix), enc(fmt.suffix), enc(fmt.separator))
  return _Bound(enc(template.bos), formats, frozenset(specials.values()))


@functools.lru_cache(maxsize=32)
def _bind_cached(template: ChatTemplate, tokenizer: Tokenizer) -> _Bound:
  return _bind_uncached(template, tokenizer)


def _bind(template: ChatTemplate, tokenizer: Tokenizer) -> _Bound:
  try:
    return _bind_cached(template, tokenizer)
  except TypeError:  # An unhashable tokenizer: resolve every time.
    return _bind_uncached(template, tokenizer)


def check_tokenizer(template: ChatTemplate, tokenizer: Tokenizer) -> None:
  """ValueError if `tokenizer` lacks special tokens `template` requires."""
  _bind(template, tokenizer)


def _encode_content(tokenizer: Tokenizer, bound: _Bound, content: str,
                    what: str) -> list[int]:
  ids = tokenizer.encode(content)
  forged = sorted(set(ids) & bound.special)
  if forged:
    raise ConversationError(
        "special_token_in_content", f"{what}: the tokenizer turned "
        f"content text into special ids {forged}; content must never forge "
        "markers (disable special-token parsing in the tokenizer)")
  return ids


def _segments(template: ChatTemplate, tokenizer: Tokenizer,
              messages: Any, mode: str, train_on: str
              ) -> list[tuple[Sequence[int], float]]:
  """The rendering as (ids, weight) pieces, validated for `mode`."""
  if train_on not in TRAIN_ON:
    raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
  validate_conversation(template, messages, mode=mode)
  bound = _bind(template, tokenizer)
  turns = _turns(messages)
  last_assistant = max(
      (i for i, (r, _) in enumerate(turns) if r == "assistant"), default=-1)
  out: list[tuple[Sequence[int], float]] = [(bound.bos, 0.0)]
  for i, (role, content) in enumerate(turns):
    prefix, suffix, separator = bound.formats[role]
    trained = role == "assistant" and (
        train_on == "all_assistant" or i == last_assistant)
    weight = 1.0 if trained and mode == "training" else 0.0
    out.append((prefix, 0.0))
    content_ids = _encode_content(tokenizer, bound, content, f"message {i}")
    out.append((content_ids, weight))
    out.append((suffix, weight))
    out.append((separator, 0.0))
  if mode == "prompt":
    out.append((bound.formats["assistant"][0], 0.0))
  return out


def _flatten(segments: list[tuple[Sequence[int], float]]
             ) -> tuple[np.ndarray, np.ndarray]:
  ids = np.asarray([i for seg, _ in segments for i in seg], np.int32)
  mask = np.asarray([w for seg, w in segments for _ in seg], np.float32)
  return ids, mask


def render_conversation(template: ChatTemplate, tokenizer: Tokenizer,
                        messages: Any, *, train_on: str = "all_assistant"
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Training ids (N,) int32 and loss mask (N,) float32 of a conversation.

  The mask is 1.0 on the content and end-of-turn marker of the trained
  assistant turns (every one, or only the last with
  `train_on="last_assistant"`), 0.0 elsewhere. ConversationError if the
  conversation breaks the template's rules or does not end with an assistant
  turn.
  """
  return _flatten(_segments(template, tokenizer, messages, "training",
                            train_on))


def render_prompt(template: ChatTemplate, tokenizer: Tokenizer,
                  messages: Any) -> list[int]:
  """Ids of `messages` followed by the assistant prefix (generation prompt).

  Equals the first ids of `render_conversation(messages + [reply])`.
  """
  ids, _ = _flatten(_segments(template, tokenizer, messages, "prompt",
                              "all_assistant"))
  return ids.tolist()


def render_response(template: ChatTemplate, tokenizer: Tokenizer,
                    text: str) -> list[int]:
  """Ids of an assistant reply as the model should generate it: content +
  end-of-turn marker (the trained part of an assistant turn)."""
  if not isinstance(text, str) or not text.strip():
    raise ConversationError("empty_turn", "the assistant reply is empty")
  if not validation.is_text(text):
    raise ConversationError("invalid_utf8", "the assistant reply holds a "
                            "lone surrogate (not text)")
  bound = _bind(template, tokenizer)
  return (_encode_content(tokenizer, bound, text, "the reply")
          + list(bound.formats["assistant"][1]))


def render_continuation(template: ChatTemplate, tokenizer: Tokenizer,
                        role: str, content: str) -> list[int]:
  """Ids that follow a generated assistant turn (its content and
  end-of-turn marker) to add one `role` turn and ask for the next assistant
  turn: the assistant separator, the turn, the assistant prefix.

  A multi-turn rollout appends these to the ids it already holds (token-in,
  token-out: earlier turns are never re-tokenized), and
  render_prompt(m + [assistant a, role c]) == render_prompt(m) +
  render_response(a) + render_continuation(role, c) whenever the sampled
  ids of the reply are render_response(a)'s.
  """
  bound = _bind(template, tokenizer)
  if role not in bound.formats:
    raise ConversationError("unknown_role", f"template {template.name!r} "
                            f"has no {role!r} turns")
  if not isinstance(content, str) or not content.strip():
    raise ConversationError("empty_turn", f"the {role} turn is empty")
  prefix, suffix, separator = bound.formats[role]
  return (list(bound.formats["assistant"][2]) + list(prefix)
          + _encode_content(tokenizer, bound, content, f"the {role} turn")
          + list(suffix) + list(separator)
          + list(bound.formats["assistant"][0]))


def render_text(template: ChatTemplate, messages: Any, *,
                add_generation_prompt: bool = False) -> str:
  """The rendering as text, markers written out (as HF `apply_chat_template`
  with `tokenize=False` gives it; `to_jinja` renders exactly this)."""
  validate_conversation(
      template, messages, mode="prompt" if add_generation_prompt else "any")
  parts = [template.bos]
  for role, content in _turns(messages):
    fmt = template.role_format(role)
    parts += [fmt.prefix, content, fmt.suffix, fmt.separator]
  if add_generation_prompt:
    parts.append(template.generation_prompt)
  return "".join(parts)


def parse_conversation(template: ChatTemplate, tokenizer: Tokenizer,
                       ids: Sequence[int]) -> list[Message]:
  """Messages of ids rendered with `template` (inverse of the renderers).

  A trailing generation prompt is dropped; an unterminated last assistant
  turn (a generation cut off before its end-of-turn) is returned as it is.
  ConversationError("unparseable") if `ids` do not follow the template.
  """
  bound = _bind(template, tokenizer)
  ids = [int(i) for i in ids]
  parsed = chat_match.parse_turns(ids, bound.bos, bound.formats,
                                  allow_open=True,
                                  marker=bound.special.__contains__)
  if parsed is None:
    raise ConversationError("unparseable", f"{len(ids)} ids do not follow "
                            f"chat template {template.name!r}")
  return [{"role": t.role, "content": tokenizer.decode(ids[t.start:t.end])}
          for t in parsed.turns]


def stop_ids(template: ChatTemplate, tokenizer: Tokenizer) -> list[int]:
  """Ids that end generation: the assistant end-of-turn id and EOS, sorted.

  ValueError if the end-of-turn marker is not a single id for this tokenizer
  (then no id can stop generation at the end of a turn).
  """
  suffix = _bind(template, tokenizer).formats["assistant"][1]
  if len(suffix) != 1:
    raise ValueError(
        f"template {template.name!r}: end of turn "
        f"{template.assistant.suffix!r} is {len(suffix)} tokens with this "
        "tokenizer; generation needs it as one special id (train the "
        "tokenizer with it as a special token)")
  return sorted({suffix[0], tokenizer.eos_id})
