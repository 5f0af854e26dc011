"""Losses by name: `get_loss("dpo")(graphdef, beta=0.1) -> loss_fn`.

Each registered entry is a *factory* that builds one pure
`loss_fn(params, batch, rng) -> (loss, metrics)` (see `lifejax/losses/lm.py`
for the contract). One algorithm = one registered factory, so a stage picks an
algorithm by name from its config and no loss body branches on the algorithm.

The built-in losses live in modules that register themselves on import; they
are imported the first time the registry is queried, so `get_loss` works
without the caller importing `lifejax.losses.dpo` etc. first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from lifejax.losses import lm
from lifejax.losses.lm import LossFn

LossFactory = Callable[..., LossFn]

# Modules whose import registers the built-in losses.
_BUILTIN_MODULES = ("lifejax.losses.reward", "lifejax.losses.dpo",
                    "lifejax.losses.ppo", "lifejax.losses.grpo")

_REGISTRY: dict[str, LossFactory] = {}
_builtins_loaded = False


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
  """Decorator: registers a loss-function factory under `name`.

  Registering a second, different factory under a taken name is an error
  (re-registering the same object, e.g. on a module reload, is allowed).
  """
  if not name or not isinstance(name, str):
    raise ValueError(f"loss name must be a non-empty string, got {name!r}")

  def decorate(factory: LossFactory) -> LossFactory:
    old = _REGISTRY.get(name)
    if old is not None and _identity(old) != _identity(factory):
      raise ValueError(f"loss {name!r} is already registered ({old!r})")
    _REGISTRY[name] = factory
    return factory

  return decorate


def _identity(factory: LossFactory) -> tuple[object, ...]:
  qualname = getattr(factory, "__qualname__", None)
  if qualname is None:  # e.g. a functools.partial: only itself is itself
    return (id(factory),)
  return (factory.__module__, qualname)


def _load_builtins() -> None:
  global _builtins_loaded
  if not _builtins_loaded:
    for module in _BUILTIN_MODULES:
      importlib.import_module(module)
    _builtins_loaded = True


def get_loss(name: str) -> LossFactory:
  """The factory registered under `name`; KeyError listing the known ones."""
  _load_builtins()
  if name not in _REGISTRY:
    raise KeyError(f"unknown loss {name!r}; registered losses: "
                   f"{', '.join(available_losses())}")
  return _REGISTRY[name]


def available_losses() -> list[str]:
  """Sorted names of all registered losses."""
  _load_builtins()
  return sorted(_REGISTRY)


register_loss("lm")(lm.make_lm_loss_fn)
