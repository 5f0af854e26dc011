"""Step 7, PII redaction: e-mail addresses, phone numbers, IP addresses.

Matches are replaced by typed placeholders (`<EMAIL>`, `<PHONE>`,
`<IP_ADDRESS>`) and counted per kind. The patterns are deliberately narrow so
that ordinary numbers survive: a phone needs a leading `+` (8-15 digits) or
the North American 3-3-4 grouping with separators; dates, prices, times,
ISBNs and version strings do not fit either. An e-mail may sit inside a URL
(`mailto:`, `?email=`, `%40`); `logo@2x.png` is a file name, not an address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

_FILE_EXTENSIONS = frozenset(
    "png jpg jpeg gif svg webp bmp ico tif tiff pdf js css map json txt "
    "html htm xml zip gz mp3 mp4 wav".split())

_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"(?P<local>[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?)"
    r"(?:@|%40)"
    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?P<tld>[A-Za-z]{2,24}))"
    r"(?![\w-]|\.[A-Za-z0-9])")

_PHONE = re.compile(
    r"(?<![\w+.\-/,])(?:"
    # International: +CC then groups of digits, optional (area) group.
    r"\+\d{1,3}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,4}){2,6}"
    r"|"
    # North American: optional 1, (AAA) or AAA, then 3-4 with separators.
    r"(?:1[ .\-])?(?:\(\d{3}\)[ ]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}"
    r")(?![\w\-/]|[.,]\d)")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                   r"(?![\w:])")
# "version 1.2.3.4", "v1.2.3.4", "build 10.0.0.1" are versions, not hosts.
_VERSION_CONTEXT = re.compile(r"(?:\bversions?|\bver\.?|\bv|\brelease|\bbuild)"
                              r"\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PiiConfig:
  enabled: bool = True
  emails: bool = True
  phones: bool = True
  ips: bool = True
  email_placeholder: str = "<EMAIL>"
  phone_placeholder: str = "<PHONE>"
  ip_placeholder: str = "<IP_ADDRESS>"
  exempt_sources: tuple[str, ...] = ()


def _email_ok(match: re.Match) -> bool:
  return match.group("tld").lower() not in _FILE_EXTENSIONS


def _phone_ok(match: re.Match) -> bool:
  digits = sum(c.isdigit() for c in match.group(0))
  if match.group(0).startswith("+"):
    return 8 <= digits <= 15
  return digits in (10, 11)


def _ipv4_ok(match: re.Match) -> bool:
  before = match.string[max(0, match.start() - 12):match.start()]
  return _VERSION_CONTEXT.search(before) is None


def _ipv6_ok(match: re.Match) -> bool:
  value = match.group(0)
  groups = [g for g in value.split(":") if g]
  if "::" not in value and len(groups) != 8:
    return False
  if len(groups) < 3:
    return False
  try:
    ipaddress.IPv6Address(value)
  except ValueError:
    return False
  return True


def _redact(text: str, pattern: re.Pattern, accept, placeholder: str
            ) -> tuple[str, list[str]]:
  found: list[str] = []

  def replace(match: re.Match) -> str:
    if not accept(match):
      return match.group(0)
    found.append(match.group(0))
    return placeholder

  return pattern.sub(replace, text), found


def redact_pii(text: str, config: PiiConfig
               ) -> tuple[str, dict[str, list[str]]]:
  """Replaces PII by placeholders.

  Returns:
    (redacted text, {kind: [original values in order]}) for the kinds
    "email", "ip", "phone" (only enabled kinds appear).
  """
  found: dict[str, list[str]] = {}
  # E-mails first (their digits must not look like phones), then IPs
  # (dotted quads must not look like phones), then phones.
  if config.emails:
    text, found["email"] = _redact(text, _EMAIL, _email_ok,
                                   config.email_placeholder)
  if config.ips:
    text, v4 = _redact(text, _IPV4, _ipv4_ok, config.ip_placeholder)
    text, v6 = _redact(text, _IPV6, _ipv6_ok, config.ip_placeholder)
    found["ip"] = v4 + v6
  if config.phones:
    text, found["phone"] = _redact(text, _PHONE, _phone_ok,
                                   config.phone_placeholder)
  return text, found
