"""Config validation helpers: every error names the option and its value.

Config dataclasses call these from `__post_init__`, so a bad gin binding
fails when the config is built, before any data or model is touched. An
option that cannot take effect raises instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
  """A configuration error: the CLI reports it in one line and exits 2."""


def choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  """ValueError naming `name` unless `value` is one of `choices`."""
  if value not in tuple(choices):
    raise ValueError(f"{name}={value!r}: expected one of "
                     f"{', '.join(repr(c) for c in choices)}")


def at_least(name: str, value: float, low: float) -> None:
  """ValueError naming `name` unless `value >= low`."""
  if not value >= low:
    raise ValueError(f"{name}={value!r}: must be >= {low}")


def in_range(name: str, value: float, low: float, high: float, *,
             low_open: bool = False, high_open: bool = False) -> None:
  """ValueError naming `name` unless `value` lies in the interval."""
  above = value > low if low_open else value >= low
  below = value < high if high_open else value <= high
  if not (above and below):
    interval = (f"{'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")
    raise ValueError(f"{name}={value!r}: must be in {interval}")


def unused(name: str, why: str) -> ValueError:
  """The error for an option that is set but cannot take effect."""
  return ValueError(f"{name} is set but has no effect: {why}")
