"""Step 1, text normalization: Unicode NFC, whitespace repair, control chars."""

from __future__ import annotations

import dataclasses
import re
import unicodedata

# Horizontal spaces other than ' ' that editors and scrapers leave behind.
_ODD_SPACES = re.compile(
    "[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# Invisible characters with no business in training text: zero-width space,
# word joiner, BOM, soft hyphen. (ZWJ/ZWNJ stay: emoji and some scripts
# need them.)
_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad]")
# C0/C1 control characters except newline (tabs were made spaces already).
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("\r\n|\r|[\u0085\u2028\u2029\x0b\x0c]")
_SPACE_RUNS = re.compile(" {2,}")
_AROUND_BREAK = re.compile(" *\n *")
_BLANK_RUNS = re.compile("\n{3,}")


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
  """Each rule can be switched off on its own."""
  enabled: bool = True
  nfc: bool = True
  # \r\n, \r, U+2028... -> \n; odd spaces and tabs -> ' '; runs of spaces
  # collapsed; spaces around line breaks dropped.
  fix_whitespace: bool = True
  # More than one blank line in a row -> one blank line (paragraph break).
  collapse_blank_lines: bool = True
  strip_control: bool = True
  strip_invisible: bool = True


def normalize_text(text: str, config: NormalizeConfig) -> str:
  """Returns `text` normalized by the enabled rules (idempotent)."""
  if not config.enabled:
    return text
  if config.fix_whitespace:
    # Line breaks first: \r and friends are control characters too.
    text = _LINE_BREAKS.sub("\n", text)
    text = _ODD_SPACES.sub(" ", text)
  if config.strip_control:
    text = _CONTROL.sub("", text)
  if config.strip_invisible:
    text = _INVISIBLE.sub("", text)
  if config.nfc:
    text = unicodedata.normalize("NFC", text)
  if config.fix_whitespace:
    text = _SPACE_RUNS.sub(" ", text)
    text = _AROUND_BREAK.sub("\n", text)
    text = text.strip()
  if config.collapse_blank_lines:
    text = _BLANK_RUNS.sub("\n\n", text)
  return text
