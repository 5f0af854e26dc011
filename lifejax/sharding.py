"""Mesh creation, the logical-axis rules table and sharding helpers.

Parameters and main activations carry logical axis names; one rules table maps
each logical name to zero or more mesh axes (`data`, `fsdp`, `model`).
Changing parallelism is a config change: edit the mesh shape or the rules.

A dimension whose size is not divisible by the product of its mesh axes is
replicated instead (logged once per name), so tiny test models and odd vocab
sizes run on any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")

Rules = tuple[tuple[str, Any], ...]

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("activation_tokens", ("data", "fsdp")),  # flattened (B*T) activations
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("mlp", "model"),
    ("vocab", "model"),
    ("layers", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; -1 on one axis means "all remaining devices"."""

  data: int = 1
  fsdp: int = -1
  model: int = 1
  rules: Rules = DEFAULT_RULES

  def __post_init__(self):
    # A rule naming an axis the mesh does not have would be dropped as if
    # it were a size-1 axis: the dimension silently stays replicated.
    seen: set[str] = set()
    for entry in self.rules:
      if not (isinstance(entry, (tuple, list)) and len(entry) == 2
              and isinstance(entry[0], str)):
        raise ValueError(f"MeshConfig.rules: entry {entry!r} is not a "
                         "(logical name, mesh axes) pair")
      name, rule = entry
      if name in seen:
        raise ValueError(f"MeshConfig.rules: logical axis {name!r} has more "
                         "than one entry (only the last would apply)")
      seen.add(name)
      axes = (() if rule is None else (rule,) if isinstance(rule, str)
              else tuple(rule))
      unknown = [a for a in axes if a not in MESH_AXES]
      if unknown:
        raise ValueError(f"MeshConfig.rules: logical axis {name!r} maps to "
                         f"unknown mesh axes {unknown}; mesh axes are "
                         f"{MESH_AXES}")

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.model]
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    fixed = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    if -1 in sizes:
      if num_devices % fixed:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are "
            f"not divisible by the fixed axes' product {fixed}")
      sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
      raise ValueError(
          f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
          f"devices but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, model) mesh with Auto axis types (GSPMD propagation).

  A fully specified mesh (no -1) smaller than the device count uses the
  first devices (e.g. `MeshConfig(1, 1, 1)` is a one-device run).
  """
  devices = list(devices) if devices is not None else jax.devices()
  sizes = (cfg.data, cfg.fsdp, cfg.model)
  if -1 not in sizes and 0 < math.prod(sizes) < len(devices):
    logging.info("mesh %s uses %d of %d devices", sizes, math.prod(sizes),
                 len(devices))
    devices = devices[:math.prod(sizes)]
  shape = cfg.shape(len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def _axes_of(rule: Any) -> tuple[str, ...]:
  if rule is None:
    return ()
  return (rule,) if isinstance(rule, str) else tuple(rule)


_warned: set[tuple[str, int]] = set()


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, rules: Rules) -> P:
  """Maps logical axis names of an array of `shape` to a PartitionSpec."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no entry in the sharding "
                     f"rules (known: {sorted(table)})")
    axes = tuple(a for a in _axes_of(table[name])
                 if a not in used and mesh.shape.get(a, 1) > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if axes and dim % size:
      if (name, dim) not in _warned:
        _warned.add((name, dim))
        logging.info("replicating logical axis %r (size %d): not divisible "
                     "by mesh axes %s (size %d)", name, dim, axes, size)
      axes = ()
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def param_specs(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
  """PartitionSpecs for an nnx.State (or pytree of Variables) of params."""
  logical = nnx.get_partition_spec(abstract_state)

  def to_spec(var, logical_var):
    names = tuple(logical_var.get_value()) if logical_var is not None else ()
    value = var.get_value() if isinstance(var, nnx.Variable) else var
    names = names + (None,) * (len(value.shape) - len(names))
    return logical_to_spec(names, value.shape, mesh, rules)

  return jax.tree.map(to_spec, abstract_state, logical,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def named(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_spec(mesh: Mesh, rules: Rules) -> P:
  return P(tuple(a for a in _axes_of(dict(rules)["batch"])) or None)


def check_batch_divisible(batch_size: int, mesh: Mesh, rules: Rules,
                          what: str = "batch size") -> None:
  axes = _axes_of(dict(rules)["batch"])
  n = math.prod(mesh.shape[a] for a in axes)
  if batch_size % n:
    raise ValueError(
        f"{what} {batch_size} is not divisible by the data-parallel mesh axes "
        f"{axes} = {n} devices; choose a {what} that is a multiple of {n}")


def batch_shardings(batch: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a batch pytree whose leaves have a leading B axis."""
  spec = batch_spec(mesh, rules)

  def one(x):
    check_batch_divisible(x.shape[0], mesh, rules)
    return NamedSharding(mesh, P(*spec, *([None] * (len(x.shape) - 1))))

  return jax.tree.map(one, batch)


# -- activation constraints ---------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = (
    contextvars.ContextVar("lifejax_activation_sharding", default=None))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Within this context (at trace time), `constrain` pins activations."""
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside a context."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(names, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def put(tree: Any, shardings: Any) -> Any:
  """Places host arrays on the mesh (works for multi-process meshes too)."""
  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(s, x) if (
        jax.process_count() > 1) else jax.device_put(x, s)
  return jax.tree.map(one, tree, shardings)
