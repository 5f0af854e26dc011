"""Every gin file parses; bad bindings fail with gin's error; the CLI trains."""

import glob
import json
import os
import subprocess
import sys

import gin
import pytest

from lifejax import main as main_lib
from lifejax.data.jsonl import read_jsonl
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import RunDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
GIN_FILES = sorted(glob.glob(os.path.join(REPO, "gin_configs", "**", "*.gin"),
                             recursive=True))
# The committed experiments' configs must keep parsing as the code moves.
EXPERIMENT_GIN = sorted(glob.glob(os.path.join(REPO, "experiments", "**",
                                               "*.gin"), recursive=True))


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_gin_files_exist():
  names = {os.path.relpath(p, os.path.join(REPO, "gin_configs"))
           for p in GIN_FILES}
  for required in ("models/test.gin", "models/cpu10m.gin",
                   "models/llama3_2_1b.gin", "models/llama2_7b.gin",
                   "stages/pretrain.gin"):
    assert required in names


@pytest.mark.parametrize("path", GIN_FILES + EXPERIMENT_GIN,
                         ids=[os.path.relpath(p, REPO)
                              for p in GIN_FILES + EXPERIMENT_GIN])
def test_every_gin_file_parses(path):
  main_lib.parse_gin([path], [])
  # Model files must produce a valid config when instantiated.
  if "/models/" in path:
    cfg = gin.get_configurable(TransformerConfig)()
    assert cfg.num_params() > 0


def test_every_gin_file_has_a_header():
  assert len(EXPERIMENT_GIN) >= 8
  for path in GIN_FILES + EXPERIMENT_GIN:
    with open(path) as f:
      head = f.read(600)
    assert head.startswith("#"), f"{path}: no header comment"


def test_published_shapes_have_published_sizes():
  main_lib.parse_gin(["models/llama3_2_1b.gin"], [])
  n = gin.get_configurable(TransformerConfig)().num_params()
  assert abs(n - 1.2358e9) / 1.2358e9 < 0.01, n  # Llama-3.2-1B: 1,235,814,400
  gin.clear_config()
  main_lib.parse_gin(["models/llama2_7b.gin"], [])
  n = gin.get_configurable(TransformerConfig)().num_params()
  assert abs(n - 6.738e9) / 6.738e9 < 0.01, n  # Llama-2-7B: 6,738,415,616
  gin.clear_config()
  main_lib.parse_gin(["models/cpu10m.gin"], [])
  n = gin.get_configurable(TransformerConfig)().num_params()
  assert 8e6 < n < 12e6, n


def test_unknown_binding_fails_at_parse_time():
  with pytest.raises(ValueError, match="TransformerConfig.not_a_field"):
    main_lib.parse_gin(["stages/pretrain.gin"],
                       ["TransformerConfig.not_a_field = 3"])


def test_unknown_configurable_fails_at_parse_time():
  with pytest.raises(ValueError, match="no_such_stage"):
    main_lib.parse_gin(["stages/pretrain.gin"], ["run.stage = @no_such_stage"])


def _cli(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "lifejax.main", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


def test_cli_bad_binding_exits_with_clear_message(tmp_path):
  r = _cli(["--gin_file=stages/pretrain.gin",
            "--gin_param=TransformerConfig.num_layerz = 3"], tmp_path)
  assert r.returncode == 2
  assert "bad gin configuration" in r.stderr
  assert "num_layerz" in r.stderr
  assert "Traceback" not in r.stderr


def test_cli_missing_gin_file(tmp_path):
  r = _cli(["--gin_file=stages/nope.gin"], tmp_path)
  assert r.returncode == 2 and "nope.gin" in r.stderr


def test_cli_pretrains_on_a_jsonl_file(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
  with open(corpus, "w") as f:
    for i in range(300):
      text = " ".join(words[(i + j) % 7] for j in range(12)) + "."
      f.write(json.dumps({"text": text}) + "\n")
  run_dir = tmp_path / "run"
  r = _cli(["--gin_file=stages/pretrain.gin", "--gin_file=models/test.gin",
            f"--gin_param=pretrain.train_files=['{corpus}']",
            f"--gin_param=pretrain.run_dir='{run_dir}'",
            "--gin_param=NUM_STEPS=20", "--gin_param=pretrain.batch_size=4",
            "--gin_param=pretrain.seq_len=32",
            "--gin_param=LoopConfig.log_every=1",
            "--gin_param=LoopConfig.eval_every=10",
            "--gin_param=LoopConfig.progress=False",
            "--gin_param=OptimizerConfig.warmup_steps=2"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  run = RunDir(run_dir)
  rows = read_jsonl(run.metrics)
  losses = [r["loss"] for r in rows if "loss" in r]
  evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
  assert len(losses) == 20 and len(evals) == 2
  assert losses[-1] < losses[0] - 0.5  # a repetitive corpus is learnable
  for path in (run.config_gin, run.operative_gin, run.loss_curve,
               run.tokenizer_model, run.lineage, run.summary):
    assert os.path.exists(path), path
  assert "pretrain.seq_len = 32" in open(run.operative_gin).read()
  assert os.listdir(run.tensorboard)
