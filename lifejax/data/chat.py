"""Chat templates: conversations -> token ids + assistant-only loss masks.

A `ChatTemplate` is data: per-role prefix / suffix / separator strings, a BOS
marker, the marker strings that should be single special ids, and the role
order rules. One renderer interprets every template; `TEMPLATES` holds the
built-in ones (lifejax, chatml, llama3, plain). The exact template travels with
every SFT run as JSON (`save_template` / `load_template`) and exports to an
HF-style Jinja string (`chat_jinja.to_jinja`).

A rendered turn is `prefix + content + suffix + separator`. On assistant turns
the loss covers content and suffix (the end-of-turn marker the model must learn
to emit) and nothing else: BOS, role markers, separators and every
system/user token have weight 0. The generation prompt is the assistant prefix.

Ids come from encoding in pieces: every marker string that the tokenizer has as
a special (control) id becomes that id, every other template string and every
message content is encoded on its own. So a prompt's ids are an exact prefix of
the full conversation's ids, and mask boundaries are token boundaries. Content
can never produce a marker id (SentencePiece `encode` never emits control ids;
a tokenizer that does is rejected at render time).

Mask convention: `loss_mask[i]` weighs token `ids[i]` as a prediction target,
so an LM row uses `tokens = ids[:-1]`, `targets = ids[1:]`,
`loss_mask = loss_mask[1:]`.

Related: sft.py (SFT batches, preference/rollout renders), chat_parity.py
(train/serve template checks), chat_jinja.py (HF export), chat_match.py
(finding turns again).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from lifejax.data import chat_match

ROLES = ("system", "user", "assistant")
TRAIN_ON = ("all_assistant", "last_assistant")
MODES = ("training", "prompt", "any")
TEMPLATE_FILE = "chat_template.json"
_FORMAT = "lifejax.chat_template"
_VERSION = 1

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


class ConversationError(ValueError):
  """A conversation a template cannot render: `reason`, `detail`, `where`."""

  def __init__(self, reason: str, detail: str, where: str = ""):
    super().__init__(f"{where}: {reason}: {detail}" if where
                     else f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail
    self.where = where

  def at(self, where: str) -> ConversationError:
    """The same error located at `where` (e.g. a record id)."""
    return ConversationError(self.reason, self.detail, where)


@dataclasses.dataclass(frozen=True)
class RoleFormat:
  """How one role's turn is written: prefix + content + suffix + separator.

  On assistant turns `suffix` is the trained end-of-turn marker; `separator`
  follows it untrained (e.g. ChatML's newline after <|im_end|>).
  """
  prefix: str
  suffix: str
  separator: str = ""


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A chat format as data; see the module docstring for the rendering rule.

  Attributes:
    name: registry / model-card name.
    user, assistant: turn formats (prefix and suffix non-empty).
    system: system turn format; None if the format has no system role.
    bos: marker written once at the start ("" for none).
    special_tokens: marker strings rendered as one special id when the
      tokenizer has them (else encoded as text, unless `require_special`).
    require_special: every special token must be a single special id.
    alternate: user and assistant turns must strictly alternate.
    start_with_user: the first non-system turn must be a user turn.
  """
  name: str
  user: RoleFormat
  assistant: RoleFormat
  system: RoleFormat | None = None
  bos: str = ""
  special_tokens: tuple[str, ...] = ()
  require_special: bool = False
  alternate: bool = True
  start_with_user: bool = True

  def __post_init__(self):
    if not self.name or not isinstance(self.name, str):
      raise ValueError("a chat template needs a name")
    object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
    formats = {r: getattr(self, r) for r in ROLES}
    if any(not isinstance(f, RoleFormat) for r, f in formats.items()
           if f is not None or r != "system"):
      raise TypeError(f"template {self.name!r}: user and assistant (and "
                      "system, unless None) must be RoleFormats")
    strings = [self.bos, *self.special_tokens] + [
        x for f in formats.values() if f for x in dataclasses.astuple(f)]
    if not all(isinstance(x, str) for x in strings):
      raise TypeError(f"template {self.name!r}: markers must be strings")
    # Empty markers would make turns impossible to find again (parsing,
    # parity checks), and an empty assistant suffix leaves nothing to stop on.
    if any(not f.prefix or not f.suffix for f in formats.values() if f):
      raise ValueError(f"template {self.name!r}: role prefixes and suffixes "
                       "must be non-empty")
    if any(not t or t.isspace() for t in self.special_tokens):
      raise ValueError(f"template {self.name!r}: blank special token in "
                       f"{self.special_tokens}")

  @property
  def supports_system(self) -> bool:
    return self.system is not None

  @property
  def generation_prompt(self) -> str:
    """What a serving prompt ends with: the assistant prefix.

    Derived, not stored: a separate field could disagree with the prefix the
    model was trained on, which is exactly the bug check_parity looks for.
    """
    return self.assistant.prefix

  def role_format(self, role: str) -> RoleFormat:
    """The format of `role`; ConversationError if the template lacks it."""
    if role not in ROLES:
      raise ConversationError("unknown_role", f"role {role!r} is not one of "
                              f"{list(ROLES)}")
    fmt = getattr(self, role)
    if fmt is None:
      raise ConversationError("system_unsupported", f"template {self.name!r} "
                              "has no system role")
    return fmt

  def to_dict(self) -> dict[str, Any]:
    d = {"format": _FORMAT, "version": _VERSION}
    d.update(dataclasses.asdict(self))
    d["special_tokens"] = list(self.special_tokens)
    return d

  def to_json(self) -> str:
    """Stable, human-readable JSON (what `save_template` writes)."""
    return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

  @classmethod
  def from_json(cls, data: str | Mapping[str, Any]) -> ChatTemplate:
    """Inverse of `to_json` (accepts the JSON text or the parsed dict)."""
    d = dict(json.loads(data) if isinstance(data, str) else data)
    if d.pop("format", None) != _FORMAT:
      raise ValueError(f"not a lifejax chat template (format should be "
                       f"{_FORMAT!r})")
    version = d.pop("version", None)
    if version != _VERSION:
      raise ValueError(f"chat template version {version!r} is not supported "
                       f"(expected {_VERSION})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    missing = sorted(names - set(d))
    if unknown or missing:
      raise ValueError(f"chat template JSON: unknown fields {unknown}, "
                       f"missing fields {missing}")
    for role in ROLES:
      if d[role] is not None:
        try:
          d[role] = RoleFormat(**d[role])
        except TypeError as e:
          raise ValueError(f"chat template JSON: bad {role} format "
                           f"{d[role]!r}: {e}") from None
    return cls(**d)


LIFEJAX = ChatTemplate(
    name="lifejax", bos="<s>",
    system=RoleFormat("<|system|>", "<|end_of_turn|>"),
    user=RoleFormat("<|user|>", "<|end_of_turn|>"),
    assistant=RoleFormat("<|assistant|>", "<|end_of_turn|>"),
    special_tokens=("<s>", "<|system|>", "<|user|>", "<|assistant|>",
                    "<|end_of_turn|>"),
    require_special=True)

CHATML = ChatTemplate(
    name="chatml",
    system=RoleFormat("<|im_start|>system\n", "<|im_end|>", "\n"),
    user=RoleFormat("<|im_start|>user\n", "<|im_end|>", "\n"),
    assistant=RoleFormat("<|im_start|>assistant\n", "<|im_end|>", "\n"),
    special_tokens=("<|im_start|>", "<|im_end|>"))

LLAMA3 = ChatTemplate(
    name="llama3", bos="<|begin_of_text|>",
    system=RoleFormat("<|start_header_id|>system<|end_header_id|>\n\n",
                      "<|eot_id|>"),
    user=RoleFormat("<|start_header_id|>user<|end_header_id|>\n\n",
                    "<|eot_id|>"),
    assistant=RoleFormat(
        "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    special_tokens=("<|begin_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"))

# Uses the SentencePiece <s> / </s> pieces: </s> ends an assistant turn so
# generation has a single stop id.
PLAIN = ChatTemplate(
    name="plain", bos="<s>",
    system=RoleFormat("System: ", "\n\n"),
    user=RoleFormat("User: ", "\n\n"),
    assistant=RoleFormat("Assistant: ", "</s>", "\n\n"),
    special_tokens=("<s>", "</s>"))

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t for t in (LIFEJAX, CHATML, LLAMA3, PLAIN)}


def get_template(name_or_template: str | ChatTemplate) -> ChatTemplate:
  """A registered template by name (or the template itself)."""
  if isinstance(name_or_template, ChatTemplate):
    return name_or_template
  try:
    return TEMPLATES[name_or_template]
  except KeyError:
    raise ValueError(f"unknown chat template {name_or_template!r}; known: "
                     f"{sorted(TEMPLATES)}") from None


def save_template(run_dir: str | os.PathLike[str],
                  template: ChatTemplate) -> str:
  """Writes `{run_dir}/chat_template.json`; returns its path."""
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, TEMPLATE_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(template.to_json())
  os.replace(tmp, path)
  return path


def load_template(run_dir: str | os.PathLike[str]) -> ChatTemplate:
  """The template saved in `run_dir` by `save_template`."""
  path = os.path.join(run_dir, TEMPLATE_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {TEMPLATE_FILE} in {os.fspath(run_dir)}")
  with open(path, encoding="utf-8") as f:
    return ChatTemplate.from_json(f.read())


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
  bound = _bind(template, tokenizer)
  return (_encode_content(tokenizer, bound, text, "the reply")
          + list(bound.formats["assistant"][1]))


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
