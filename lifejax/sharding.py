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
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
# Context parallelism (lifejax/model/ring_attention.py) splits the sequence
# over this axis; a mesh has it only when MeshConfig.context > 1, so every
# (data, fsdp, model) mesh, spec and memory plan stays as it was.
CONTEXT_AXIS = "context"
# Pipeline parallelism (lifejax/model/pipeline.py) splits the layer stack
# into contiguous stages over this axis; a mesh has it (first, so stages
# are the outermost split) only when MeshConfig.stage > 1.
STAGE_AXIS = "stage"

# Expert parallelism (lifejax/model/moe.py) splits a mixture of experts'
# experts over this axis, which also splits the batch (tokens travel to
# their experts' devices by all-to-all); a mesh has it only when
# MeshConfig.expert > 1.
EXPERT_AXIS = "expert"
OPTIONAL_AXES = (EXPERT_AXIS, CONTEXT_AXIS)

Rules = tuple[tuple[str, Any], ...]

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp", EXPERT_AXIS)),
    # flattened (B*T) activations: B over (data, fsdp, expert), then T over
    # context
    ("activation_tokens", ("data", "fsdp", EXPERT_AXIS, CONTEXT_AXIS)),
    ("length", CONTEXT_AXIS),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("mlp", "model"),
    ("vocab", "model"),
    # the stacked layers' L axis: contiguous stages (absent axis = replicated)
    ("layers", STAGE_AXIS),
    ("norm", None),
    ("experts", EXPERT_AXIS),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; -1 on one axis means "all remaining devices".

  `context` > 1 adds a `context` axis (last, so ring neighbours are
  adjacent devices) that splits the sequence of the activations; `expert`
  > 1 adds an `expert` axis (after `model`) that splits a mixture of
  experts' experts and, with data and fsdp, the batch. `stage` > 1 adds a
  `stage` axis (first) that splits the layer stack into pipeline stages
  (lifejax/model/pipeline.py; the microbatch count and schedule are
  TransformerConfig.pipeline_microbatches / _schedule).
  """

  data: int = 1
  fsdp: int = -1
  model: int = 1
  context: int = 1
  stage: int = 1
  rules: Rules = DEFAULT_RULES
  expert: int = 1

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
      known = (STAGE_AXIS,) + MESH_AXES + OPTIONAL_AXES
      unknown = [a for a in axes if a not in known]
      if unknown:
        raise ValueError(f"MeshConfig.rules: logical axis {name!r} maps to "
                         f"unknown mesh axes {unknown}; mesh axes are "
                         f"{known}")
    for f in ("context", "expert", "stage"):
      v = getattr(self, f)
      if not (isinstance(v, int) and v >= 1):
        raise ValueError(f"MeshConfig.{f}={v!r} must be an integer >= 1")
    if self.stage > 1 and self.context > 1:
      raise ValueError(
          f"MeshConfig.stage={self.stage} with context={self.context}: "
          "pipeline stages and context parallelism do not combine (the ring "
          "attention's shard_map cannot run inside a pipeline stage); set "
          "one of them to 1")
    if self.stage > 1 and self.expert > 1:
      raise ValueError(
          f"MeshConfig.stage={self.stage} with expert={self.expert}: "
          "pipeline stages and expert parallelism do not combine yet (the "
          "experts' all-to-all shard_map cannot run inside a pipeline "
          "stage); set one of them to 1")

  @property
  def axis_names(self) -> tuple[str, ...]:
    return (((STAGE_AXIS,) if self.stage > 1 else ()) + MESH_AXES
            + ((EXPERT_AXIS,) if self.expert > 1 else ())
            + ((CONTEXT_AXIS,) if self.context > 1 else ()))

  def shape(self, num_devices: int) -> tuple[int, ...]:
    """Sizes of `axis_names`."""
    sizes = ([self.stage] if self.stage > 1 else []) + [
        self.data, self.fsdp, self.model] + (
            [self.expert] if self.expert > 1 else []) + (
            [self.context] if self.context > 1 else [])
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    fixed = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    if -1 in sizes:
      if num_devices % fixed:
        raise ValueError(
            f"mesh {dict(zip(self.axis_names, sizes))}: {num_devices} "
            "devices are "
            f"not divisible by the fixed axes' product {fixed}")
      sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
      raise ValueError(
          f"mesh {dict(zip(self.axis_names, sizes))} needs "
          f"{math.prod(sizes)} "
          f"devices but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  """A ([stage,] data, fsdp, model[, expert][, context]) mesh with Auto
  axis types (GSPMD propagation).

  A fully specified mesh (no -1) smaller than the device count uses the
  first devices (e.g. `MeshConfig(1, 1, 1)` is a one-device run).
  """
  devices = list(devices) if devices is not None else jax.devices()
  sizes = (cfg.stage, cfg.data, cfg.fsdp, cfg.model, cfg.expert,
           cfg.context)
  if -1 not in sizes and 0 < math.prod(sizes) < len(devices):
    logging.info("mesh %s uses %d of %d devices", sizes, math.prod(sizes),
                 len(devices))
    devices = devices[:math.prod(sizes)]
  shape = cfg.shape(len(devices))
  return jax.make_mesh(shape, cfg.axis_names,
                       axis_types=(AxisType.Auto,) * len(shape),
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
  return P(tuple(a for a in _axes_of(dict(rules)["batch"])
                 if a in mesh.axis_names) or None)


def check_batch_divisible(batch_size: int, mesh: Mesh, rules: Rules,
                          what: str = "batch size") -> None:
  axes = tuple(a for a in _axes_of(dict(rules)["batch"])
               if a in mesh.axis_names)
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


def active_activation_sharding() -> tuple[Mesh, Rules] | None:
  """The (mesh, rules) of the enclosing `activation_sharding`, or None."""
  return _ACTIVE.get()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Within this context (at trace time), `constrain` pins activations."""
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


@contextlib.contextmanager
def activation_sharding_off() -> Iterator[None]:
  """Within this context `constrain` is a no-op (e.g. inside a shard_map,
  where whole-mesh shardings do not apply)."""
  token = _ACTIVE.set(None)
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


# -- several processes ---------------------------------------------------------
#
# The engine's host data is global: every process holds the same values (the
# same global batch, the same rollout), so a run computes exactly what a
# single-process run on the same mesh does, whatever the number of
# processes. `put` places only the slices a process's own devices hold;
# `fetch` brings global arrays back whole to every process. Both are
# collective in a multi-process run when the values span processes: every
# process calls them in the same order.


def is_main_process() -> bool:
  """Whether this process writes the run's files (metrics, summary,
  lineage, checkpoint manifests): process 0."""
  return jax.process_index() == 0


_SYNC_TIMEOUT_S = 3600
_syncs = itertools.count()


def sync(name: str) -> None:
  """A barrier over every process (no-op in a single-process run): what
  the main process wrote before it is visible to all after it.

  It waits in the coordination service, not in a device collective: the
  others may wait long (the main process training a tokenizer, sealing a
  large checkpoint) and the CPU collectives (gloo) give a new
  communicator only 30 s to assemble. A process that dies is noticed by
  the launcher (or the coordination service), not by this timeout."""
  if jax.process_count() == 1:
    return
  import orbax.checkpoint as ocp  # only multi-process runs need it
  # Barrier ids are single-use; every process counts its syncs alike.
  ocp.multihost.get_barrier_sync_fn()(
      key=f"lifejax:{next(_syncs)}:{name}", timeout_ms=_SYNC_TIMEOUT_S * 1000)


def compiled_together(fn: Any) -> Callable[..., Any]:
  """`fn` for a run of several processes: the first call with each
  argument signature of a `jax.jit` function compiles it, waits until
  every process has (`sync`), then runs it. A process that compiles more
  slowly (say, a persistent-cache miss where the others hit) would
  otherwise reach the program's first collective late, and the CPU
  collectives (gloo) give a new communicator only 30 s to assemble. A
  function that compiles inside (e.g. a sampler around its jitted loop)
  at least starts its first call together. Positional arguments only;
  unhashable non-array ones are not allowed. In a single-process run:
  `fn` itself."""
  if jax.process_count() == 1:
    return fn
  lower = getattr(fn, "lower", None)
  seen: set[Any] = set()

  def call(*args: Any) -> Any:
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((x.shape, x.dtype) if isinstance(
        x, (jax.Array, np.ndarray)) else x for x in leaves))
    if key not in seen:
      if lower is not None:
        lower(*args).compile()  # the call below reuses it
      sync(f"compiled {getattr(fn, '__name__', 'a program')}")
      seen.add(key)
    return fn(*args)

  return call


def put(tree: Any, shardings: Any) -> Any:
  """Places host arrays on the mesh. `tree` holds the global values
  (identical in every process); in a multi-process run each process
  transfers only the slices its own devices hold."""
  def one(x, s):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, s)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


def fetch(tree: Any) -> Any:
  """Host (numpy) copies of the arrays in `tree`, each whole: an array
  sharded over other processes' devices is gathered (so in a
  multi-process run every process must call this with the same tree)."""
  leaves, treedef = jax.tree.flatten(tree)
  spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)
            and not x.is_fully_addressable and not x.is_fully_replicated]
  if spread:
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(
        [leaves[i] for i in spread], tiled=True)
    for i, x in zip(spread, gathered):
      leaves[i] = x
  return jax.device_get(jax.tree.unflatten(treedef, leaves))
