"""A tiny but real lifecycle root, built once per test session.

It is the lifecycle's own tiny configuration (gin_configs/lifecycle/tiny.gin:
world at scale 0.2, a 2-layer d_model-32 model, a few steps per stage; PPO
off), run as `python -m lifejax.main` runs it, so the report, card and
notebook tests read exactly the layout `make demo` writes. The root is
shared: a test that changes files works on a copy (`lifecycle_copy`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
HEAVY = (layout.CHECKPOINTS, layout.BEST, layout.TENSORBOARD)


def run_tiny_lifecycle(root: str, run_ppo: bool = False,
                       extra_params: tuple[str, ...] = ()) -> str:
  """Runs the tiny lifecycle into `root`.

  PPO is off by default: these tests read the layout every stage shares
  (a PPO run's own rows are covered by a layout test in
  test_report_lifecycle.py), and it keeps the suite within its time budget.
  """
  # As `make demo` runs: two host devices, training on the first (one
  # device is all a 32-wide model needs; the sharded paths have their own
  # tests), the evaluations' generation data parallel over both
  # (lifecycle/default.gin's GenerationSpec.devices = -1).
  params = [f"lifecycle.root={root!r}", f"lifecycle.run_ppo={run_ppo}",
            "MeshConfig.fsdp=1", *extra_params]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + ["--xla_force_host_platform_device_count=2"])
  log = os.path.join(os.path.dirname(root), "lifecycle.log")
  with open(log, "w") as f:
    proc = subprocess.run(
        [sys.executable, "-m", "lifejax.main",
         "--gin_file=lifecycle/tiny.gin"]
        + [f"--gin_param={p}" for p in params],
        cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    with open(log) as f:
      tail = f.read()[-4000:]
    raise RuntimeError(f"tiny lifecycle failed ({proc.returncode}):\n{tail}")
  return root


def copy_root(src: str, dst: str, heavy: bool = True) -> str:
  """Copies a lifecycle root (without checkpoints unless `heavy`). Its
  lifecycle.json names run directories relative to the root, so the copy
  needs no rewriting (checked here: no ledger entry is absolute)."""
  ignore = None if heavy else shutil.ignore_patterns(*HEAVY)
  shutil.copytree(src, dst, ignore=ignore)
  with open(layout.LifecycleRoot(dst).ledger) as f:
    ledger = json.load(f)
  absolute = [s["run_dir"] for s in ledger["stages"]
              if os.path.isabs(s["run_dir"])]
  assert not absolute, f"ledger names machine paths: {absolute}"
  return dst


@pytest.fixture(scope="session")
def tiny_lifecycle(tmp_path_factory) -> str:
  """Path of the shared tiny lifecycle root (treat as read-only)."""
  base = tmp_path_factory.mktemp("tiny_lifecycle")
  return run_tiny_lifecycle(str(base / "root"))


@pytest.fixture
def lifecycle_copy(tiny_lifecycle, tmp_path):
  """copy(heavy=True) -> a private copy of the tiny root to change."""
  def copy(heavy: bool = True) -> str:
    return copy_root(tiny_lifecycle, str(tmp_path / "copy"), heavy=heavy)
  return copy


@pytest.fixture(scope="session")
def run_lifecycle():
  """run(root): (re)runs the tiny lifecycle into an existing root."""
  return run_tiny_lifecycle


@pytest.fixture(scope="session")
def random_lm():
  """(graphdef, params) of a 2-layer, 48-token random LM whose init (std
  0.3) makes the logits peaky: greedy decoding has no near-ties, so two
  ways of generating must give the same tokens."""
  cfg = TransformerConfig(vocab_size=48, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(0)

  def fill(path, x):
    if str(path[-1].key) == "scale":
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      fill, nnx.to_pure_dict(abstract))
