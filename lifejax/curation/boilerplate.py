"""Step 3, boilerplate removal with C4's line rules (Raffel et al., 2020).

A line is dropped if it has a word over 1000 characters, does not end in
terminal punctuation (or ends in an ellipsis), has fewer than 3 words,
mentions javascript, or carries cookie/terms/privacy-policy phrases. One
rule beyond C4, also switchable: copyright footers ("(c) 2024 ...", "All
rights reserved."), which end in a period and so pass C4's rules. The
page-level C4 rules (lorem ipsum, curly bracket, minimum sentence count)
judge the whole document and live with the quality filters.
"""

from __future__ import annotations

import dataclasses
import re

C4_TERMINAL_PUNCTUATION = (".", "?", "!", '"', "'")
C4_POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy",
                        "uses cookies", "use of cookies", "use cookies")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_COPYRIGHT = re.compile(r"©|\(c\)\s*\d{4}|\bcopyright\s+(?:©\s*)?\d{4}"
                        r"|\ball rights reserved\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class BoilerplateConfig:
  """Each line rule can be switched off (False or None) on its own."""
  enabled: bool = True
  remove_citations: bool = True
  max_word_length: int | None = 1000
  require_terminal_punct: bool = True
  terminal_punctuation: tuple[str, ...] = C4_TERMINAL_PUNCTUATION
  min_words_per_line: int | None = 3
  javascript: bool = True
  policy: bool = True
  policy_substrings: tuple[str, ...] = C4_POLICY_SUBSTRINGS
  copyright: bool = True
  exempt_sources: tuple[str, ...] = ()


def line_verdict(line: str, config: BoilerplateConfig) -> str | None:
  """Name of the first C4 rule that drops `line` (stripped), else None."""
  words = line.split()
  if (config.max_word_length is not None
      and any(len(w) > config.max_word_length for w in words)):
    return "too_long_word"
  if config.require_terminal_punct and (
      not line.endswith(config.terminal_punctuation)
      or line.endswith("...")):
    return "no_terminal_punct"
  if (config.min_words_per_line is not None
      and len(words) < config.min_words_per_line):
    return "too_few_words"
  lower = line.lower()
  if config.javascript and "javascript" in lower:
    return "javascript"
  if config.policy and any(p in lower for p in config.policy_substrings):
    return "policy"
  if config.copyright and _COPYRIGHT.search(line):
    return "copyright"
  return None


def remove_boilerplate(text: str, config: BoilerplateConfig
                       ) -> tuple[str, list[tuple[str, str]]]:
  """Drops boilerplate lines.

  Blank lines are kept as paragraph breaks (runs collapse to one), so the
  paragraph structure that the repetition filters look at survives.

  Returns:
    (cleaned text, [(rule, removed line), ...] in document order).
  """
  kept: list[str] = []
  removed: list[tuple[str, str]] = []
  for raw in text.split("\n"):
    line = raw.strip()
    if not line:
      if kept and kept[-1]:
        kept.append("")
      continue
    if config.remove_citations:
      line = _CITATION.sub("", line).strip()
    reason = line_verdict(line, config)
    if reason is None:
      kept.append(line)
    else:
      removed.append((reason, raw.strip()))
  return "\n".join(kept).strip(), removed
