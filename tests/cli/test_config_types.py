"""Gin bindings are type-checked right after parsing: a wrong type is one
line naming the binding (exit code 2), before any work."""

import os
import subprocess
import sys

import gin
import pytest

import lifejax.stages  # noqa: F401  (registers the configurables)
from lifejax import config_types
from lifejax.checks import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("binding, message", [
    ("pretrain.batch_size = 'sixteen'",
     "pretrain.batch_size = 'sixteen': expected int, got str"),
    ("LoopConfig.num_steps = 1.5",
     "LoopConfig.num_steps = 1.5: expected int, got float"),
    ("sft/OptimizerConfig.learning_rate = 'fast'",
     "sft/OptimizerConfig.learning_rate = 'fast': expected float"),
    ("ppo.prompt_files = 'prompts.jsonl'",
     "ppo.prompt_files = 'prompts.jsonl': expected Sequence"),
    ("sft.general_share = True", "sft.general_share = True: expected float"),
    ("pretrain.init_from = 3", "pretrain.init_from = 3: expected"),
])
def test_wrong_types_are_refused_naming_the_binding(binding, message):
  gin.parse_config(binding)
  with pytest.raises(ConfigError) as err:
    config_types.check_bindings()
  assert message in str(err.value)


@pytest.mark.parametrize("binding", [
    "pretrain.batch_size = 16", "OptimizerConfig.learning_rate = 1",
    "pretrain.init_from = None", "pretrain.train_files = ['a', 'b']",
    "X = 'abc'\npretrain.batch_size = %X",  # macros are not judged here
    "pretrain.loop = @LoopConfig()",
])
def test_right_types_and_references_pass(binding):
  gin.parse_config(binding)
  config_types.check_bindings()


def test_every_committed_gin_file_passes():
  from lifejax import main
  files = [os.path.join(d, f) for base in ("gin_configs", "experiments")
           for d, _, fs in os.walk(os.path.join(REPO, base)) for f in fs
           if f.endswith(".gin")]
  assert len(files) > 10
  for f in files:
    gin.clear_config()
    main.parse_gin([f], [])
    config_types.check_bindings()


def test_cli_exits_2_with_one_line_before_any_work(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "lifejax.main", "--gin_file=stages/pretrain.gin",
       f"--gin_param=pretrain.run_dir='{tmp_path / 'run'}'",
       "--gin_param=pretrain.batch_size='sixteen'"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "pretrain.batch_size = 'sixteen': expected int" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(mesh_data=3), "8 devices are not divisible"),
    (dict(batch_size=6), "batch size 6 is not divisible"),
    (dict(batch_size=8, num_microbatches=3), "not divisible by "
     "num_microbatches=3"),
])
def test_mesh_and_batch_are_checked_before_any_work(tmp_path, kwargs,
                                                    message):
  """Before the tokenizer is trained or a file is read: the train file
  does not even exist here."""
  from lifejax import sharding
  from lifejax.model.config import TransformerConfig
  from lifejax.stages import pretrain
  data = kwargs.pop("mesh_data", 1)
  with pytest.raises(ConfigError, match=f"pretrain: .*{message}"):
    pretrain(run_dir=str(tmp_path / "run"),
             model=TransformerConfig(vocab_size=64, d_model=16, num_layers=1,
                                     num_heads=2, num_kv_heads=1, mlp_dim=32),
             train_files=[str(tmp_path / "missing.jsonl")],
             mesh=sharding.MeshConfig(data=data, fsdp=-1, model=1),
             **kwargs)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("binding, message", [
    ("sft.train_on = 'everything'", "sft.train_on='everything'"),
    ("ppo.value_init = 'reward_model'\nppo.value_model = 'shared'",
     "ppo.value_init is set but has no effect"),
    ("dpo.bad_records = 'lenient'", "dpo.bad_records"),
])
def test_lifecycle_checks_every_stage_before_generating_the_world(
    tmp_path, binding, message):
  """A later stage's bad option fails the lifecycle up front (exit 2, one
  line), not after world generation, curation and the earlier stages."""
  root = tmp_path / "root"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # The tiny lifecycle's batches are sized for one device.
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "").strip()
  params = [f"lifecycle.root='{root}'"] + binding.split("\n")
  proc = subprocess.run(
      [sys.executable, "-m", "lifejax.main", "--gin_file=lifecycle/tiny.gin"]
      + [f"--gin_param={p}" for p in params],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert not root.exists()
