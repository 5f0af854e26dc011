"""Config fields with a finite domain or a sign constraint are checked when
the config is built; an option that cannot take effect is an error that
names it (never silently ignored)."""

import dataclasses
import glob
import os

import gin
import pytest

from lifejax import main as main_lib, sharding
from lifejax.eval.instruct import GenerationSpec
from lifejax.train import loop as loop_lib
from lifejax.train.checkpoint import CheckpointConfig
from lifejax.train.loop import LoopConfig


@pytest.mark.parametrize("kwargs, field", [
    (dict(early_stop_mode="maximize"), "LoopConfig.early_stop_mode"),
    (dict(early_stop_mode="MIN"), "LoopConfig.early_stop_mode"),
    (dict(num_steps=-1), "LoopConfig.num_steps"),
    (dict(log_every=0), "LoopConfig.log_every"),
    (dict(eval_every=-10), "LoopConfig.eval_every"),
    (dict(eval_batches=-1), "LoopConfig.eval_batches"),
    (dict(early_stop_patience=-1), "LoopConfig.early_stop_patience"),
    (dict(early_stop_min_delta=-0.1), "LoopConfig.early_stop_min_delta"),
])
def test_loop_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field) as err:
    LoopConfig(**kwargs)
  assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_loop_config_accepts_min_and_max():
  assert LoopConfig(early_stop_mode="max").early_stop_mode == "max"
  cfg = dataclasses.replace(LoopConfig(), early_stop_mode="min")
  with pytest.raises(ValueError, match="LoopConfig.early_stop_mode"):
    dataclasses.replace(cfg, early_stop_mode="best")


@pytest.mark.parametrize("name, value", [
    ("eval_every", 5), ("eval_at_start", True), ("early_stop_patience", 2)])
def test_eval_options_without_evals_are_errors(tmp_path, name, value):
  """Eval and early-stopping options cannot act in a run with nothing to
  evaluate; train_loop refuses them before its first step."""
  cfg = LoopConfig(num_steps=2, progress=False, **{name: value})
  with pytest.raises(ValueError, match=f"LoopConfig.{name}"):
    loop_lib.train_loop(
        run_dir=str(tmp_path), state=None, train_step=None, train_iter=None,
        batch_shardings=None, checkpointer=None, cfg=cfg)
  assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("kwargs, field", [
    (dict(best_mode="maximum"), "CheckpointConfig.best_mode"),
    (dict(best_mode=""), "CheckpointConfig.best_mode"),
    (dict(every_steps=0), "CheckpointConfig.every_steps"),
    (dict(keep_last=0), "CheckpointConfig.keep_last"),
    (dict(keep_best=-1), "CheckpointConfig.keep_best"),
])
def test_checkpoint_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    CheckpointConfig(**kwargs)


def test_checkpoint_config_accepts_what_configs_use():
  for kw in (dict(best_mode="max"), dict(every_steps=1, keep_last=1),
             dict(keep_best=3, best_metric="eval/sft_validation/loss")):
    CheckpointConfig(**kw)


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt_len=0), "GenerationSpec.prompt_len"),
    (dict(max_new_tokens=0), "GenerationSpec.max_new_tokens"),
    (dict(batch_size=-2), "GenerationSpec.batch_size"),
])
def test_generation_spec_rejects_non_positive_sizes(kwargs, field):
  with pytest.raises(ValueError, match=field):
    GenerationSpec(**kwargs)


@pytest.mark.parametrize("rules, match", [
    # A typo'd mesh axis used to leave the dimension replicated silently.
    ((("batch", ("data", "fdsp")),), "unknown mesh axes"),
    ((("embed", "tensor"),), "unknown mesh axes"),
    ((("batch", "data"), ("batch", "fsdp")), "more than one entry"),
    ((("batch",),), "not a"),
])
def test_mesh_config_rejects_bad_rules(rules, match):
  with pytest.raises(ValueError, match="MeshConfig.rules") as err:
    sharding.MeshConfig(rules=rules)
  assert err.match(match)


def test_mesh_config_accepts_the_default_and_list_rules():
  sharding.MeshConfig()
  sharding.MeshConfig(rules=(("batch", ["data", "fsdp"]), ("embed", None)))


# -- gin: a bad binding fails when its config is built ------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
GIN_FILES = sorted(
    glob.glob(os.path.join(REPO, "gin_configs", "**", "*.gin"),
              recursive=True)
    + glob.glob(os.path.join(REPO, "experiments", "**", "*.gin"),
                recursive=True))


# Every config dataclass a gin file can bind, by its gin name.
CONFIGS = ("LoopConfig", "CheckpointConfig", "OptimizerConfig", "MeshConfig",
           "GenerationSpec", "PPOConfig", "GRPOConfig", "RLAIFConfig",
           "RolloutConfig", "RLLoopConfig")


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_a_bad_gin_binding_fails_when_the_config_is_built(clean_gin):
  main_lib.parse_gin(["stages/sft.gin"],
                     ["LoopConfig.early_stop_mode = 'maximum'"])
  with pytest.raises(ValueError, match="LoopConfig.early_stop_mode"):
    gin.get_configurable(LoopConfig)()


@pytest.mark.parametrize("path", GIN_FILES,
                         ids=[os.path.relpath(p, REPO) for p in GIN_FILES])
def test_committed_gin_files_pass_the_checks(clean_gin, path):
  """The checks reject nothing that a committed config binds."""
  main_lib.parse_gin([path], [])
  for name in CONFIGS:
    gin.get_configurable(f"lifejax.{name}")()
