"""Chat templates as data: role formats, markers, role order rules.

A `ChatTemplate` is data: per-role prefix / suffix / separator strings, a BOS
marker, the marker strings that should be single special ids, and the role
order rules. One renderer (`chat_render.py`) interprets every template;
`TEMPLATES` holds the built-in ones (lifejax, chatml, llama3, plain). The exact
template travels with every SFT run as JSON
(`lifejax.run.artifacts.save_template` / `load_template`) and exports to an
HF-style Jinja string (`chat_jinja.to_jinja`).

A rendered turn is `prefix + content + suffix + separator`. On assistant turns
the loss covers content and suffix (the end-of-turn marker the model must learn
to emit) and nothing else: BOS, role markers, separators and every
system/user token have weight 0. The generation prompt is the assistant prefix.

Related: chat_render.py (conversations -> ids and loss masks, and back),
sft.py (SFT batches, preference/rollout renders), chat_parity.py (train/serve
template checks), chat_jinja.py (HF export), chat_match.py (finding turns
again).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from lifejax.data import validation

ROLES = ("system", "user", "assistant")
_FORMAT = "lifejax.chat_template"
_VERSION = 1


class ConversationError(validation.RecordError):
  """A conversation a template cannot render: `reason`, `detail`, `where`
  (a `validation.RecordError`, so loaders count and skip it like any bad
  record)."""

  def __init__(self, reason: str, detail: str, where: str = "", *,
               path: str | None = None):
    super().__init__(where, reason, detail, path=path)

  def at(self, where: str, path: str | None = None) -> ConversationError:
    """The same error located at `where` (e.g. `path:line` or a record id)."""
    return ConversationError(self.reason, self.detail, where, path=path)

  def __reduce__(self):
    return (ConversationError, (self.reason, self.detail, self.where),
            {"path": self.path})


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
      raise ConversationError("unknown_role", f"unknown role {role!r} "
                              f"(expected {'/'.join(ROLES)})")
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
    """Stable, human-readable JSON (what run.artifacts.save_template
    writes)."""
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
