"""Mesh shapes, the logical-axis rules, and sharded == unsharded training."""

from __future__ import annotations

import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lifejax import sharding
from lifejax.data import batching
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.train import optim
from lifejax.train import trainer as trainer_lib
from lifejax.train.checkpoint import CheckpointConfig

CFG = TransformerConfig(vocab_size=128, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)
MESH_222 = sharding.MeshConfig(data=2, fsdp=2, model=2)

# What DEFAULT_RULES must give every parameter of CFG on a 2x2x2 mesh.
EXPECTED_SPECS = {
    "embed": P("model", "fsdp"),
    "lm_head": P("fsdp", "model"),
    "final_norm": {"scale": P(None)},
    "layers": {
        "attn": {"wq": P(None, "fsdp", "model", None),
                 "wk": P(None, "fsdp", "model", None),
                 "wv": P(None, "fsdp", "model", None),
                 "wo": P(None, "model", None, "fsdp")},
        "attn_norm": {"scale": P(None, None)},
        "mlp": {"w_gate": P(None, "fsdp", "model"),
                "w_up": P(None, "fsdp", "model"),
                "w_down": P(None, "model", "fsdp")},
        "mlp_norm": {"scale": P(None, None)},
    },
}


def _is_spec(x) -> bool:
  return isinstance(x, P)


# -- mesh and rules ------------------------------------------------------------


def test_mesh_shape_fills_minus_one(devices):
  assert sharding.MeshConfig(data=2, fsdp=-1, model=2).shape(8) == (2, 2, 2)
  assert sharding.MeshConfig(data=-1, fsdp=1, model=4).shape(8) == (2, 1, 4)
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1, model=1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "model": 1}
  one = sharding.make_mesh(sharding.MeshConfig(fsdp=-1), devices[:1])
  assert dict(one.shape) == {"data": 1, "fsdp": 1, "model": 1}


@pytest.mark.parametrize("cfg, match", [
    (sharding.MeshConfig(data=-1, fsdp=-1), "at most one"),
    (sharding.MeshConfig(data=3, fsdp=-1), "not divisible"),
    (sharding.MeshConfig(data=2, fsdp=2, model=1), "needs 4 devices but 8"),
    (sharding.MeshConfig(data=0, fsdp=-1), "positive"),
])
def test_mesh_shape_errors(cfg, match):
  with pytest.raises(ValueError, match=match):
    cfg.shape(8)


def test_logical_to_spec_rules(devices):
  mesh = sharding.make_mesh(MESH_222)
  rules = sharding.DEFAULT_RULES
  spec = lambda names, shape: sharding.logical_to_spec(  # noqa: E731
      names, shape, mesh, rules)
  assert spec(("embed", "mlp"), (32, 64)) == P("fsdp", "model")
  assert spec(("batch", "length", "embed"), (8, 16, 32)) == P(
      ("data", "fsdp"), None, None)  # fsdp is taken by batch already
  assert spec(("vocab", "embed"), (127, 32)) == P(None, "fsdp")  # 127 % 2
  assert spec((None, "mlp"), (3, 64)) == P(None, "model")
  with pytest.raises(KeyError, match="no entry"):
    spec(("nonsense",), (4,))
  # Mesh axes of size 1 are dropped, so a 1-device mesh replicates all.
  one = sharding.make_mesh(sharding.MeshConfig(), devices[:1])
  assert sharding.logical_to_spec(("batch", "embed"), (8, 32), one,
                                  rules) == P(None, None)


def test_param_specs_of_the_model(devices):
  mesh = sharding.make_mesh(MESH_222)
  _, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh,
                                                sharding.DEFAULT_RULES))
  assert specs == EXPECTED_SPECS


def test_batch_not_divisible_by_mesh_names_both_numbers(devices, tmp_path):
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, model=2))
  batch = batching.example_lm_batch(6, 16)
  with pytest.raises(ValueError) as e:
    sharding.batch_shardings(batch, mesh, sharding.DEFAULT_RULES)
  msg = str(e.value)
  assert re.search(r"\b6\b", msg) and re.search(r"\b4\b", msg), msg
  assert "data" in msg and "fsdp" in msg, msg
  # The trainer refuses such a batch before building anything.
  common = dict(run_dir=str(tmp_path), model_cfg=CFG,
                make_loss=make_lm_loss_fn,
                optimizer_cfg=optim.OptimizerConfig(), mesh=mesh,
                rules=sharding.DEFAULT_RULES,
                checkpoint_cfg=CheckpointConfig())
  with pytest.raises(ValueError, match=r"batch size 6 .* = 4 devices"):
    trainer_lib.build_trainer(example_batch=batch, **common)
  with pytest.raises(ValueError, match=r"microbatch size 2 .* = 4 devices"):
    trainer_lib.build_trainer(example_batch=batching.example_lm_batch(8, 16),
                              num_microbatches=4, **common)
  assert not (tmp_path / "checkpoints").exists()


def test_constrain_pins_activations_only_inside_context(devices):
  mesh = sharding.make_mesh(MESH_222)
  x = np.zeros((8, 32), np.float32)
  names = ("activation_tokens", "mlp")
  assert sharding.constrain(x, names) is x  # outside a context: a no-op

  def f(y):
    with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
      return sharding.constrain(y * 2, names)

  with jax.set_mesh(mesh):
    out = jax.jit(f)(x)
  assert out.sharding.spec == P(("data", "fsdp"), "model")


# -- sharded training == single-device training --------------------------------


def _batches(n: int, b: int = 8, t: int = 16) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    toks = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    mask = (rng.random((b, t)) < 0.8).astype(np.float32)
    out.append({"tokens": toks[:, :-1], "targets": toks[:, 1:],
                "loss_mask": mask, "segment_ids": np.ones((b, t), np.int32),
                "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))})
  return out


def _host_params() -> dict:
  """N(0, 0.02) params (unit norm gains) made on the host: compiling the
  model's RNG init twice would cost as much as the two train steps."""
  _, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (np.ones(x.shape, x.dtype) if path[-1].key == "scale"
                       else (0.02 * rng.standard_normal(x.shape)).astype(
                           x.dtype)),
      nnx.to_pure_dict(abstract))


def _train(mesh, run_dir: str, batches, host_params, num_microbatches: int):
  tr = trainer_lib.build_trainer(
      run_dir=run_dir, model_cfg=CFG, make_loss=make_lm_loss_fn,
      optimizer_cfg=optim.OptimizerConfig(learning_rate=1e-2,
                                          schedule="constant", warmup_steps=0),
      mesh=mesh, rules=sharding.DEFAULT_RULES,
      example_batch=batching.example_lm_batch(8, 16),
      checkpoint_cfg=CheckpointConfig(async_save=False), resume=False,
      init_params=lambda: host_params, num_microbatches=num_microbatches)
  state = tr.state
  init_params = jax.device_get(state["params"])
  metrics = []
  for batch in batches:
    state, m = tr.train_step(state, sharding.put(batch, tr.batch_shardings))
    metrics.append(m)
  tr.checkpointer.close()
  metrics = {k: np.array([float(m[k]) for m in metrics]) for k in metrics[0]}
  return {"trainer": tr, "state": state, "metrics": metrics,
          "init_params": init_params}


@pytest.fixture(scope="module")
def trained(devices, tmp_path_factory):
  batches, host_params = _batches(3), _host_params()
  # The sharded run also accumulates 2 microbatches of 4 rows (each spread
  # over the 4 data-parallel devices); the reference takes the batch of 8.
  sharded = _train(sharding.make_mesh(MESH_222),
                   str(tmp_path_factory.mktemp("sharded")), batches,
                   host_params, num_microbatches=2)
  single = _train(sharding.make_mesh(sharding.MeshConfig(), devices[:1]),
                  str(tmp_path_factory.mktemp("single")), batches,
                  host_params, num_microbatches=1)
  return sharded, single


def test_sharded_training_matches_single_device(trained):
  sharded, single = trained
  assert len(sharded["state"]["params"]["embed"].sharding.device_set) == 8
  assert len(single["state"]["params"]["embed"].sharding.device_set) == 1
  jax.tree.map(np.testing.assert_array_equal, sharded["init_params"],
               single["init_params"])  # placed, not changed, by sharding
  assert set(sharded["metrics"]) >= {"loss", "grad_norm", "accuracy", "weight"}
  for k, v in single["metrics"].items():
    np.testing.assert_allclose(sharded["metrics"][k], v, rtol=1e-5, err_msg=k)
  got, want = jax.device_get((sharded["state"], single["state"]))
  assert int(got["step"]) == int(want["step"]) == 3
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), want["params"],
                       single["init_params"])
  assert min(jax.tree.leaves(moved)) > 1e-3  # every param was updated
  # Adam turns tiny, noisy gradients (wq/wk at init) into unit steps, so the
  # params agree to a fraction of one step (lr = 1e-2) rather than to f32
  # round-off; the moments and grad_norm are scale-sensitive where Adam's
  # update is not (a gradient off by a constant factor would still pass the
  # params check), and they must agree to round-off relative to their size.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0,
                                                       atol=3e-5),
               got["params"], want["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=0, atol=1e-4 * np.abs(b).max() + 1e-30),
               got["opt_state"], want["opt_state"])


def test_state_carries_expected_partition_specs(trained):
  sharded, _ = trained
  state = sharded["state"]
  specs = lambda tree: jax.tree.map(  # noqa: E731
      lambda x: x.sharding.spec, tree)
  assert specs(state["params"]) == EXPECTED_SPECS
  for moment in ("mu", "nu"):  # Adam moments are sharded like their params
    assert specs(optax.tree_utils.tree_get(state["opt_state"], moment)
                 ) == EXPECTED_SPECS
  assert state["step"].sharding.spec == P()
  # The declared shardings are what the arrays carry.
  assert jax.tree.map(lambda s: s.spec,
                      sharded["trainer"].state_shardings["params"],
                      is_leaf=lambda s: hasattr(s, "spec")) == EXPECTED_SPECS


def test_train_step_compiled_once(trained):
  for run in trained:
    assert run["trainer"].train_step.jitted._cache_size() == 1
