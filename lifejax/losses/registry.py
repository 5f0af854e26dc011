"""Losses by name: `get_loss("dpo")(graphdef, beta=0.1) -> loss_fn`.

Each registered entry is a *factory* that builds one pure
`loss_fn(params, batch, rng) -> (loss, metrics)` (see `lifejax/losses/lm.py`
for the contract). One algorithm = one registered factory, so a stage picks an
algorithm by name from its config and no loss body branches on the algorithm.
The registry is the one way stages and RL algorithms get a loss: none of them
imports a factory function.

A factory may be registered with a `kind`: the batch and model contract its
loss follows ("lm", "reward", "preference", "ppo", "grpo"). A stage asks for
the kind it feeds (`get_loss(name, kind="preference")`), so a name of another
kind fails at lookup, listing the names of the right kind.

The built-in losses live in modules that register themselves on import; they
are imported the first time the registry is queried, so `get_loss` works
without the caller importing `lifejax.losses.dpo` etc. first.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lifejax.losses import lm
from lifejax.losses.lm import LossFn

LossFactory = Callable[..., LossFn]

# Modules whose import registers the built-in losses.
_BUILTIN_MODULES = ("lifejax.losses.reward", "lifejax.losses.dpo",
                    "lifejax.losses.kto", "lifejax.losses.ppo",
                    "lifejax.losses.grpo", "lifejax.losses.distill")

_REGISTRY: dict[str, LossFactory] = {}
_KINDS: dict[str, str] = {}  # name -> kind, for factories registered with one
_builtins_loaded = False


def register_loss(name: str, kind: str | None = None
                  ) -> Callable[[LossFactory], LossFactory]:
  """Decorator: registers a loss-function factory under `name` (of `kind`).

  Registering a second, different factory under a taken name is an error
  (re-registering the same object with the same kind, e.g. on a module
  reload, is allowed).
  """
  if not name or not isinstance(name, str):
    raise ValueError(f"loss name must be a non-empty string, got {name!r}")
  if kind is not None and (not kind or not isinstance(kind, str)):
    raise ValueError(f"loss kind must be a non-empty string, got {kind!r}")

  def decorate(factory: LossFactory) -> LossFactory:
    old = _REGISTRY.get(name)
    if old is not None and (_identity(old) != _identity(factory)
                            or _KINDS.get(name) != kind):
      raise ValueError(f"loss {name!r} is already registered ({old!r}, "
                       f"kind {_KINDS.get(name)!r})")
    _REGISTRY[name] = factory
    if kind is not None:
      _KINDS[name] = kind
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


def get_loss(name: str, kind: str | None = None,
             option: str | None = None) -> LossFactory:
  """The factory registered under `name`; KeyError listing the known ones.

  kind: the factory must have been registered with this kind (KeyError
    listing the losses of that kind otherwise). option: the config option
    that holds `name` (e.g. "dpo.loss"), named first in the error.
  """
  _load_builtins()
  where = f"{option}: " if option else ""
  if name not in _REGISTRY:
    raise KeyError(f"{where}unknown loss {name!r}; registered losses: "
                   f"{', '.join(available_losses())}")
  if kind is not None and _KINDS.get(name) != kind:
    raise KeyError(f"{where}{name!r} is not a {kind} loss (its kind: "
                   f"{_KINDS.get(name)!r}); {kind} losses: "
                   f"{', '.join(available_losses(kind))}")
  return _REGISTRY[name]


def check_hparams(factory: LossFactory, hparams: Mapping[str, Any],
                  option: str, *, supplied: int = 1,
                  reserved: Sequence[str] = ()) -> None:
  """ValueError naming `option` for a key of `hparams` that `factory` does
  not take (it would fail as a TypeError deep in the trainer) or that the
  caller sets itself (`reserved`). The first `supplied` parameters (the
  graphdefs) come from the caller too. A factory with **kwargs takes any."""
  params = list(inspect.signature(factory).parameters.values())[supplied:]
  if any(p.kind is p.VAR_KEYWORD for p in params):
    accepted = None
  else:
    accepted = [p.name for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in reserved]
  for key in hparams:
    if key in reserved or (accepted is not None and key not in accepted):
      raise ValueError(
          f"{option}: {key!r} is not a hyperparameter of "
          f"{getattr(factory, '__name__', factory)!r}; it takes "
          f"{accepted if accepted is not None else 'any key'}"
          + (f" ({', '.join(reserved)} are set by the stage)"
             if reserved else ""))


def available_losses(kind: str | None = None) -> list[str]:
  """Sorted names of all registered losses (of `kind`, if given)."""
  _load_builtins()
  return sorted(n for n in _REGISTRY
                if kind is None or _KINDS.get(n) == kind)


register_loss("lm", kind="lm")(lm.make_lm_loss_fn)
