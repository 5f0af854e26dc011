"""The train state pytree, created directly into its shardings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from lifejax import sharding

TrainState = dict[str, Any]
"""Keys: step (int32), params, opt_state, rng (uint32[2] raw key),
loss_scale ({"scale": f32, "good_steps": int32} or absent)."""


@dataclasses.dataclass(frozen=True)
class LossScaleConfig:
  """Dynamic loss scaling for fp16: halve on overflow (and skip the update),
  double after `growth_interval` finite steps."""

  initial_scale: float = 2.0 ** 15
  growth_interval: int = 2000
  min_scale: float = 1.0


def opt_state_specs(abstract_opt_state: Any, param_specs: Any) -> Any:
  """Give each optimizer-state leaf the spec of the parameter it mirrors.

  Adam moments (and masked/chained wrappers around them) hold leaves whose
  key path ends with a parameter's key path; those inherit its spec. Others
  (step counts, scalars) are replicated.
  """
  by_path = {}
  for path, spec in jax.tree_util.tree_flatten_with_path(
      param_specs, is_leaf=lambda x: isinstance(x, P))[0]:
    by_path[tuple(_key(k) for k in path)] = spec

  def one(path, leaf):
    keys = tuple(_key(k) for k in path)
    for start in range(len(keys)):
      spec = by_path.get(keys[start:])
      if spec is not None and len(spec) <= len(leaf.shape):
        return spec
    return P()

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def _key(k: Any) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


def base_params_key(state: TrainState) -> str:
  """Where a state (or its shardings / abstract shapes) holds the model's
  params tree: "frozen" when LoRA trains adapters over it, else "params"."""
  return "frozen" if "frozen" in state else "params"


def _specs_at_same_paths(tree: Any, param_specs: Any) -> Any:
  """Each leaf of `tree` gets the spec of the param at the same key path,
  or P() where there is none."""
  by_path = {tuple(_key(k) for k in path): spec
             for path, spec in jax.tree_util.tree_flatten_with_path(
                 param_specs, is_leaf=lambda x: isinstance(x, P))[0]}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: by_path.get(tuple(_key(k) for k in path), P()), tree)


def state_specs(abstract_state: TrainState, param_specs: Any) -> TrainState:
  """Specs for the whole state. With frozen params (LoRA), the frozen base is
  sharded like the model; in the trainable tree the small adapters are
  replicated and leaves trained in full (heads outside the trunks, at the
  same paths as in the base) keep their param specs."""
  specs = {k: jax.tree.map(lambda _: P(), v) for k, v in abstract_state.items()}
  if "frozen" in abstract_state:
    specs["frozen"] = param_specs
    specs["params"] = trainable_specs = _specs_at_same_paths(
        abstract_state["params"], param_specs)
  else:
    specs["params"] = trainable_specs = param_specs
  specs["opt_state"] = opt_state_specs(abstract_state["opt_state"],
                                       trainable_specs)
  return specs


def plan_train_state(
    init_params: Callable[[], Any],
    optimizer: optax.GradientTransformation,
    param_specs: Any,
    mesh: Mesh,
    seed: int,
    loss_scale: LossScaleConfig | None = None,
    make_trainable: Callable[[Any], Any] | None = None,
) -> tuple[Callable[[], TrainState], TrainState, TrainState]:
  """Returns (init, abstract_state, shardings) without allocating anything.

  `init()` creates the state directly into its shardings (a jit with
  `out_shardings`), so full-size params never land on one device.
  `init_params()` must return the params pytree; it is traced, not run.
  `init(params)` instead builds the state around given (already placed)
  params, e.g. those of an earlier stage; they are donated.
  `make_trainable(params)`, if given, returns the trainable params (e.g. LoRA
  adapters); `params` are then kept frozen under state["frozen"] and only the
  trainable ones get gradients and optimizer state.
  """

  def make_state(params) -> TrainState:
    trainable = params if make_trainable is None else make_trainable(params)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": trainable,
        "opt_state": optimizer.init(trainable),
        "rng": jax.random.PRNGKey(seed),
    }
    if make_trainable is not None:
      state["frozen"] = params
    if loss_scale is not None:
      state["loss_scale"] = {
          "scale": jnp.asarray(loss_scale.initial_scale, jnp.float32),
          "good_steps": jnp.zeros((), jnp.int32)}
    return state

  abstract = jax.eval_shape(lambda: make_state(init_params()))
  shardings = sharding.named(mesh, state_specs(abstract, param_specs))
  fresh = jax.jit(lambda: make_state(init_params()), out_shardings=shardings)
  base_shardings = shardings["frozen" if make_trainable else "params"]
  around = jax.jit(make_state, in_shardings=(base_shardings,),
                   out_shardings=shardings, donate_argnums=(0,))

  def init(params: Any = None) -> TrainState:
    if params is None:
      return fresh()
    want = jax.tree.structure(
        abstract["frozen" if make_trainable else "params"])
    if jax.tree.structure(params) != want:
      raise ValueError("initial params do not match the model's parameter "
                       f"tree:\n got  {jax.tree.structure(params)}\n want "
                       f"{want}")
    return around(params)

  return init, abstract, shardings


def create_train_state(
    init_params: Callable[[], Any],
    optimizer: optax.GradientTransformation,
    param_specs: Any,
    mesh: Mesh,
    seed: int,
    loss_scale: LossScaleConfig | None = None,
) -> tuple[TrainState, TrainState]:
  """Initializes the state directly into its shardings; (state, shardings)."""
  init, _, shardings = plan_train_state(init_params, optimizer, param_specs,
                                        mesh, seed, loss_scale)
  with jax.set_mesh(mesh):
    return init(), shardings


def abstract_with_shardings(state_shardings: TrainState,
                            abstract_state: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying shardings (targets for checkpoint restore)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_shardings)
