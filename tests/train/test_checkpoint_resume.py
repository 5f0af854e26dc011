"""Checkpoint retention (keep-last, keep-best) and restore into shardings.
(kill -9 and resume: tests/goldens/test_kill_stages.py; damaged checkpoints
and other faults: test_faults.py.)"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lifejax import sharding
from lifejax.run.layout import RunDir
from lifejax.train.checkpoint import Checkpointer, CheckpointConfig

REPO = pathlib.Path(__file__).resolve().parents[2]


def _state(step: int, mesh) -> dict:
  """A small train-state-like pytree whose values identify its step."""
  w = NamedSharding(mesh, P("fsdp", None))
  r = NamedSharding(mesh, P())
  return {"step": jax.device_put(jnp.int32(step), r),
          "params": {"w": jax.device_put(
              jnp.arange(8.0).reshape(4, 2) + 100 * step, w)}}


@pytest.fixture(scope="module")
def mesh(devices):
  return sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, model=1),
                            devices[:2])


def test_keep_last_keeps_only_newest(tmp_path, mesh):
  ck = Checkpointer(str(tmp_path), CheckpointConfig(keep_last=2,
                                                    async_save=False))
  for step in range(1, 6):
    ck.save(step, _state(step, mesh), data_state={"i": step},
            extra={"note": f"s{step}"})
  ck.wait()
  assert RunDir(tmp_path).checkpoint_steps() == [4, 5]
  assert ck.latest_step() == 5
  target = _state(0, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  abstract = jax.eval_shape(lambda s: s, target)
  state, data, extra = ck.restore(4, abstract, shardings)
  ck.close()
  assert data == {"i": 4} and extra == {"note": "s4"}
  assert int(state["step"]) == 4
  np.testing.assert_array_equal(state["params"]["w"],
                                np.arange(8.0).reshape(4, 2) + 400)
  assert state["params"]["w"].sharding == shardings["params"]["w"]


@pytest.mark.parametrize("mode, best", [("min", 2), ("max", 1)])
def test_keep_best_by_eval_metric(tmp_path, mesh, mode: str, best: int):
  ck = Checkpointer(str(tmp_path), CheckpointConfig(
      keep_best=1, best_mode=mode, async_save=False))
  for step, loss in zip((1, 2, 3), (3.0, 1.0, 2.0)):
    ck.save_best(step, _state(step, mesh), {"eval/loss": loss,
                                            "eval/accuracy": 0.5})
  ck.wait()
  assert ck.best_step() == best
  assert RunDir(tmp_path).checkpoint_steps(best=True) == [best]
  target = _state(0, mesh)
  state, _, _ = ck.restore(best, jax.eval_shape(lambda s: s, target),
                           jax.tree.map(lambda x: x.sharding, target),
                           best=True)
  assert int(state["step"]) == best
  with pytest.raises(KeyError, match="eval/loss"):
    ck.save_best(4, _state(4, mesh), {"eval/accuracy": 0.7})
  ck.close()


def test_checkpoint_best_mode_must_be_min_or_max():
  """Any value but "min" used to count as "max"."""
  with pytest.raises(ValueError, match="CheckpointConfig.best_mode='mn'"):
    CheckpointConfig(best_mode="mn")
