"""Train/serve chat-template parity: the prompt bugs the field keeps hitting.

`check_parity(train_template, tokenizer, serving_prompts)` compares prompts
as a serving stack builds them with the template the model was trained on,
and returns one `Finding` per problem, each of a kind in `FINDING_KINDS`.

Text prompts are read the way HF tokenizers read them: a marker string is the
marker. Token-id prompts are read exactly, so they can also show markers that
were tokenized as text and token sequences that differ from the training
rendering although the text agrees. A prompt is compared with the training
template after undoing each bug found, so one corruption gives one finding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from lifejax.data import chat, chat_render
from lifejax.data import chat_match

FINDING_KINDS: dict[str, str] = {
    "missing_generation_prompt":
        "The prompt does not end with the assistant-start marker (the "
        "generation prompt). The model was trained to answer after it; "
        "without it the model tends to continue the user's text or write the "
        "header itself.",
    "system_in_user":
        "The system prompt is sent as (part of) a user turn although the "
        "template has a system role, so the model reads instructions it was "
        "trained to follow as system text as if the user wrote them.",
    "duplicated_bos":
        "The prompt starts with more than one BOS (typically the template "
        "writes BOS and the tokenizer adds another). The model never saw "
        "that at training time.",
    "mixed_templates":
        "The prompts use the markers of more than one chat template (within "
        "a prompt or across the dataset), e.g. datasets rendered by "
        "different tools were merged.",
    "template_mismatch":
        "The prompts follow a different chat template than the one the model "
        "was trained with.",
    "whitespace_drift":
        "Whitespace at the template's markers differs from training (e.g. "
        "'\\n' instead of '\\n\\n' after a header, a trailing space after "
        "the generation prompt): the tokens around every turn boundary are "
        "ones the model never saw.",
    "marker_as_text":
        "A role marker appears as ordinary text tokens instead of its single "
        "special id (the serving tokenizer split the marker string), so the "
        "model does not see a turn boundary.",
    "invalid_conversation":
        "The turns break the template's rules (two user turns in a row, "
        "assistant first, an empty turn, ...).",
    "token_mismatch":
        "The prompt's text follows the template but its token ids differ "
        "from the training rendering (e.g. the whole string was tokenized "
        "at once, merging tokens across a marker/content boundary).",
    "unparseable":
        "The prompt does not follow the training template (nor any known "
        "one) at all.",
}

Prompt = str | Sequence[int]


@dataclasses.dataclass(frozen=True)
class Finding:
  """One problem with serving prompt number `index`."""
  kind: str
  index: int
  detail: str

  @property
  def explanation(self) -> str:
    return FINDING_KINDS[self.kind]

  def __str__(self) -> str:
    return f"prompt {self.index}: {self.kind}: {self.detail}"


def _is_space(atom: chat_match.Atom) -> bool:
  return isinstance(atom, str) and len(atom) == 1 and atom.isspace()


def _is_marker(atom: chat_match.Atom) -> bool:
  return isinstance(atom, str) and len(atom) > 1


class _Ctx:
  """Per-call state: templates, marker strings, the tokenizer's pieces."""

  def __init__(self, train: chat.ChatTemplate, tokenizer: chat_render.Tokenizer,
               known: Sequence[chat.ChatTemplate]):
    self.train = train
    self.tokenizer = tokenizer
    self.known = {t.name: t for t in known if t.name != train.name}
    self.piece_of = {i: p for p, i in tokenizer.special_ids.items()}
    self.generic = {self.piece_of.get(i) for i in (
        tokenizer.bos_id, tokenizer.eos_id, getattr(tokenizer, "pad_id", -1))}
    markers = set(train.special_tokens) | set(tokenizer.special_ids)
    for t in self.known.values():
      markers |= set(t.special_tokens)
    self.markers = sorted(markers)

  def atoms(self, text: str) -> list[str]:
    out: list[str] = []
    for part, is_marker in chat_match.split_markers(text, self.markers):
      out.extend([part] if is_marker else part)
    return out

  def parse(self, template: chat.ChatTemplate, atoms: list[str],
            lenient: bool) -> chat_match.Parsed | None:
    formats = {}
    for role in chat.ROLES:
      fmt = getattr(template, role)
      if fmt is not None:
        formats[role] = (self.atoms(fmt.prefix), self.atoms(fmt.suffix),
                         self.atoms(fmt.separator))
    return chat_match.parse_turns(atoms, self.atoms(template.bos), formats,
                                  space=_is_space if lenient else None,
                                  marker=_is_marker)


def _to_text(ctx: _Ctx, prompt: Prompt) -> tuple[str, list[str]]:
  """A prompt as text with markers written out, and the training markers
  that appear in it as ordinary tokens (id prompts only)."""
  if isinstance(prompt, str):
    return prompt, []
  specials = ctx.tokenizer.special_ids
  wanted = [m for m in ctx.train.special_tokens if m in specials]
  parts, as_text, run = [], [], []

  def flush() -> None:
    text = ctx.tokenizer.decode(run) if run else ""
    as_text.extend(m for m in wanted if m in text)
    parts.append(text)
    run.clear()

  for i in prompt:
    i = int(i)
    if i in ctx.piece_of:
      flush()
      parts.append(ctx.piece_of[i])
    else:
      run.append(i)
  flush()
  return "".join(parts), sorted(set(as_text))


def _render(template: chat.ChatTemplate,
            messages: Sequence[chat_render.Message],
            generation_prompt: bool) -> str:
  """render_text without the rule checks (the messages may break them)."""
  parts = [template.bos]
  for m in messages:
    fmt = template.role_format(m["role"])
    parts += [fmt.prefix, m["content"], fmt.suffix, fmt.separator]
  if generation_prompt:
    parts.append(template.generation_prompt)
  return "".join(parts)


def _first_diff(expected: str, got: str) -> str:
  i = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b),
           min(len(expected), len(got)))
  lo = max(i - 12, 0)
  return (f"at character {i} the training template has "
          f"{expected[lo:i + 12]!r}, the prompt has {got[lo:i + 12]!r}")


def _family(ctx: _Ctx, text: str) -> set[str]:
  """Names of the templates whose markers the prompt uses (train if none
  foreign). The tokenizer's own BOS/EOS/pad pieces belong to no template."""
  own = set(ctx.train.special_tokens) - ctx.generic
  foreign = {name for name, t in ctx.known.items()
             if any(m in text for m in set(t.special_tokens) - own
                    - ctx.generic)}
  if not foreign:
    return {ctx.train.name}
  theirs = set().union(*(ctx.known[n].special_tokens for n in foreign))
  if any(m in text for m in own - theirs):
    foreign.add(ctx.train.name)
  return foreign


def _system_fix(ctx: _Ctx, messages: list[chat_render.Message],
                system_prompts: Sequence[str]) -> tuple[list, str] | None:
  """Messages with the system prompt moved out of the user role, and what
  was wrong; None if it is not there."""
  if not ctx.train.supports_system or not messages:
    return None
  first = messages[0]
  if first["role"] != "user":
    return None
  known = [s.strip() for s in system_prompts if s.strip()]
  second_user = len(messages) > 1 and messages[1]["role"] == "user"
  if second_user and (ctx.train.alternate or first["content"].strip() in known):
    return ([{"role": "system", "content": first["content"]}] + messages[1:],
            "the first of two leading user turns holds the system prompt")
  for s in known:
    rest = first["content"][len(s):]
    if first["content"].startswith(s) and rest.strip() and rest[:1].isspace():
      return ([{"role": "system", "content": s},
               {"role": "user", "content": rest.strip()}] + messages[1:],
              f"the user turn starts with the system prompt {s[:40]!r}")
  return None


def _check_one(ctx: _Ctx, prompt: Prompt, system_prompts: Sequence[str]
               ) -> tuple[set[str], list[tuple[str, str]]]:
  """(template family, [(kind, detail)]) of one prompt."""
  text, as_text = _to_text(ctx, prompt)
  family = _family(ctx, text)
  if family != {ctx.train.name}:
    return family, []
  train = ctx.train
  found = []
  if as_text:
    found.append(("marker_as_text", f"{as_text} appear as text tokens, not "
                  "as their special ids"))
  atoms = ctx.atoms(text)
  bos_like = {train.bos, ctx.piece_of.get(ctx.tokenizer.bos_id, "")} - {""}
  n_bos = next((k for k, a in enumerate(atoms) if a not in bos_like),
               len(atoms))
  if train.bos and n_bos > 1:
    found.append(("duplicated_bos", f"starts with {n_bos} BOS markers "
                  f"{''.join(atoms[:n_bos])!r}; the template writes one"))
    atoms = ctx.atoms(train.bos) + atoms[n_bos:]
  parsed = ctx.parse(train, atoms, lenient=False)
  if parsed is None:
    parsed = ctx.parse(train, atoms, lenient=True)
    if parsed is None:
      for name, other in ctx.known.items():
        if (ctx.parse(other, atoms, lenient=False)
            or ctx.parse(other, atoms, lenient=True)):
          return {name}, []
      return family, found + [("unparseable", "does not follow template "
                               f"{train.name!r}: {text[:60]!r}...")]
  messages = [{"role": t.role, "content": "".join(atoms[t.start:t.end])}
              for t in parsed.turns]
  canonical = _render(train, messages, parsed.generation_prompt)
  if canonical != "".join(atoms):
    found.append(("whitespace_drift", _first_diff(canonical,
                                                  "".join(atoms))))
  fixed = _system_fix(ctx, messages, system_prompts)
  if fixed is not None:
    messages, why = fixed
    found.append(("system_in_user", why))
  try:
    chat_render.validate_conversation(
        train, messages, mode="prompt" if parsed.generation_prompt else "any")
  except chat.ConversationError as e:
    found.append(("invalid_conversation", f"{e.reason}: {e.detail}"))
  if not parsed.generation_prompt:
    found.append(("missing_generation_prompt", f"ends with {text[-24:]!r}, "
                  f"not with {train.generation_prompt!r}"))
  if not found and not isinstance(prompt, str):
    expected = chat_render.render_prompt(train, ctx.tokenizer, messages)
    got = [int(i) for i in prompt]
    if got != expected:
      k = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b),
               min(len(expected), len(got)))
      found.append(("token_mismatch", f"from token {k}: training renders "
                    f"{expected[k:k + 6]}, the prompt has {got[k:k + 6]}"))
  return family, found


def check_parity(
    train_template: chat.ChatTemplate,
    tokenizer: chat_render.Tokenizer,
    serving_prompts: Sequence[Prompt],
    *,
    system_prompts: Sequence[str] = (),
    known_templates: Sequence[chat.ChatTemplate] | None = None,
) -> list[Finding]:
  """Findings for serving prompts against the template the model was
  trained with; an empty list means every prompt matches.

  Args:
    train_template: the template saved with the SFT run.
    tokenizer: the model's tokenizer (reads id prompts, names markers).
    serving_prompts: rendered prompts as text or as token ids.
    system_prompts: system prompts used in training; lets the checker see a
      system prompt merged into the first user turn.
    known_templates: templates whose markers identify foreign or mixed
      prompts (default: all of chat.TEMPLATES).

  Raises:
    ValueError: the tokenizer lacks special tokens the template requires.
  """
  if isinstance(serving_prompts, (str, Mapping)):
    raise TypeError("serving_prompts must be a list of prompts")
  chat_render.check_tokenizer(train_template, tokenizer)
  known = list(chat.TEMPLATES.values()) if known_templates is None else list(
      known_templates)
  ctx = _Ctx(train_template, tokenizer, known)
  results = [_check_one(ctx, p, system_prompts) for p in serving_prompts]
  families = {frozenset(f) for f, _ in results}
  train = frozenset({train_template.name})
  findings = []
  for index, (family, found) in enumerate(results):
    if family == train:
      findings += [Finding(kind, index, detail) for kind, detail in found]
    elif len(family) > 1:
      findings.append(Finding("mixed_templates", index, "uses the markers of "
                              f"{sorted(family)} in one prompt"))
    elif len(families) > 1:
      others = sorted({n for f in families - {frozenset(family)} for n in f})
      findings.append(Finding("mixed_templates", index, f"follows "
                              f"{sorted(family)[0]!r} while other prompts "
                              f"follow {others}"))
    else:
      findings.append(Finding("template_mismatch", index, f"follows "
                              f"{sorted(family)[0]!r}; the model was trained "
                              f"with {train_template.name!r}"))
  return findings
