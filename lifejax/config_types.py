"""Static type checks of gin bindings, run right after parsing.

`check_bindings()` compares every literal value bound in gin (references
such as `@LoopConfig()` are skipped: their own bindings are checked) with
the annotation of the parameter it binds, so `pretrain.batch_size =
'sixteen'` or `LoopConfig.num_steps = 1.5` fails in one line naming the
binding, before any world generation, curation or tokenizer training.
Annotations it cannot judge (callables, unresolved names) pass.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import types
import typing
from typing import Any

import gin.config as gin_config

from lifejax.checks import ConfigError


def _hints(fn: Any) -> dict[str, Any]:
  if isinstance(fn, functools.partial):
    fn = fn.func
  fn = inspect.unwrap(fn)
  try:
    if isinstance(fn, type):
      if dataclasses.is_dataclass(fn):
        return typing.get_type_hints(fn)
      fn = fn.__init__
    return typing.get_type_hints(fn)
  except Exception:  # pylint: disable=broad-except  (unresolvable: no check)
    return {}


def _describe(hint: Any) -> str:
  return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def matches(value: Any, hint: Any) -> bool:
  """Whether `value` fits the annotation `hint` (unknown forms: True)."""
  if hint is Any or hint is None:
    return True
  if hint is type(None):
    return value is None
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    return any(matches(value, h) for h in typing.get_args(hint))
  if origin is typing.Literal:
    return value in typing.get_args(hint)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint in (str, bool):
    return isinstance(value, hint)
  if origin in (collections.abc.Sequence, list, tuple):
    if isinstance(value, (str, bytes)) or not isinstance(value,
                                                          (list, tuple)):
      return False
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    return len(args) != 1 or all(matches(v, args[0]) for v in value)
  if origin in (collections.abc.Mapping, dict):
    return isinstance(value, collections.abc.Mapping)
  if isinstance(hint, type) and dataclasses.is_dataclass(hint):
    return isinstance(value, hint)
  return True


def _is_reference(value: Any) -> bool:
  """A `@configurable()` or `%MACRO` (macros are references too)."""
  if isinstance(value, (list, tuple)):
    return any(_is_reference(v) for v in value)
  if isinstance(value, dict):
    return any(_is_reference(v) for v in value.values())
  return isinstance(value, gin_config.ConfigurableReference)


def check_bindings() -> None:
  """ConfigError for the first bound literal whose type does not fit."""
  for (scope, selector), params in list(gin_config._CONFIG.items()):  # pylint: disable=protected-access
    match = gin_config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
    if match is None:
      continue
    hints = _hints(match.wrapped)
    for name, value in params.items():
      if name not in hints or _is_reference(value):
        continue
      if not matches(value, hints[name]):
        where = f"{scope}/" if scope else ""
        raise ConfigError(
            f"{where}{match.name}.{name} = {value!r}: expected "
            f"{_describe(hints[name])}, got {type(value).__name__}")
