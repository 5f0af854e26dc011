"""lifejax.run.artifacts: params, model config, tokenizer and chat template
from a lifejax run directory or a HF directory."""

import dataclasses
import os
import types

import jax
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.data import chat
from lifejax.data import tokenizer as tokenizer_lib
from lifejax.model import heads, hf_export, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import Lineage, TokenizerRef, write_lineage

CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64, max_seq_len=64)
MESH = sharding.MeshConfig(data=2, fsdp=2, model=2)


def _params(cfg: TransformerConfig, seed: int = 0):
  _, params = nnx.split(transformer.create_model(cfg, seed), nnx.Param)
  return jax.device_get(nnx.to_pure_dict(params))


def _assert_same(a, b):
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, y: np.testing.assert_array_equal(np.asarray(x),
                                                 np.asarray(y)), a, b))
  assert leaves == []


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  """A plain LM run: an exported checkpoint at step 5 and its lineage."""
  run = str(tmp_path_factory.mktemp("lm") / "run")
  params = _params(CFG, seed=1)
  artifacts.export_params(run, params, step=5)
  write_lineage(run, Lineage(stage="pretrain", model_kind="lm", model=CFG))
  return run, params


def test_params_round_trip(lm_run, devices):
  run, saved = lm_run
  assert RunDir(run).checkpoint_steps() == [5]
  mesh = sharding.make_mesh(MESH, devices)
  graphdef, params = artifacts.load_params(run, transformer.Transformer, CFG,
                                           mesh, MESH.rules)
  _assert_same(params, saved)
  # placed by the logical-axis rules, not replicated
  assert not params["layers"]["attn"]["wq"].sharding.is_fully_replicated
  logits = nnx.merge(graphdef, params)(np.zeros((1, 4), np.int32))
  assert logits.shape == (1, 4, CFG.vocab_size)


def test_initial_params_for_a_trainer_plan(lm_run, devices):
  run, saved = lm_run
  mesh = sharding.make_mesh(MESH, devices)
  _, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, MESH.rules))
  plan = types.SimpleNamespace(
      abstract_state={"params": nnx.to_pure_dict(abstract)},
      state_shardings={"params": sharding.named(mesh, specs)})
  _assert_same(artifacts.initial_params(run, CFG)(plan), saved)
  # dtypes and kernels may differ from the saved run's; shapes may not
  other = dataclasses.replace(CFG, compute_dtype="bfloat16",
                              remat_policy="full")
  _assert_same(artifacts.initial_params(run, other)(plan), saved)
  wide = dataclasses.replace(CFG, mlp_dim=96)
  with pytest.raises(ValueError, match=r"mlp_dim.*\(64, 96\)"):
    artifacts.initial_params(run, wide)(plan)


def test_shape_mismatch_names_the_fields(lm_run, devices):
  run, _ = lm_run
  mesh = sharding.make_mesh(MESH, devices)
  other = dataclasses.replace(CFG, d_model=48, tie_embeddings=True)
  with pytest.raises(ValueError) as e:
    artifacts.load_params(run, transformer.Transformer, other, mesh,
                          MESH.rules)
  msg = str(e.value)
  assert run in msg and "'d_model': (32, 48)" in msg
  assert "'tie_embeddings': (False, True)" in msg
  assert "num_heads" not in msg


def test_load_model_config(lm_run, tmp_path):
  run, _ = lm_run
  assert artifacts.load_model_config(run) == CFG
  write_lineage(str(tmp_path), Lineage(stage="rlaif",
                                       model_kind="preference_data"))
  with pytest.raises(ValueError, match="records no model config"):
    artifacts.load_model_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="lineage.json"):
    artifacts.load_model_config(str(tmp_path / "missing"))


def test_hf_directory(tmp_path, devices):
  cfg = dataclasses.replace(CFG, rope_theta=20000.0)
  saved = _params(cfg, seed=2)
  hf_dir = str(tmp_path / "hf")
  hf_export.save_hf_checkpoint(hf_dir, cfg, saved)
  assert artifacts.is_hf_dir(hf_dir)
  got = artifacts.load_model_config(hf_dir)
  assert artifacts.SHAPE_FIELDS and all(
      getattr(got, k) == getattr(cfg, k) for k in artifacts.SHAPE_FIELDS)
  assert got.rope_theta == 20000.0
  mesh = sharding.make_mesh(MESH, devices)
  _, params = artifacts.load_params(hf_dir, transformer.Transformer, cfg,
                                    mesh, MESH.rules)
  _assert_same(params, saved)
  with pytest.raises(ValueError, match="num_layers"):
    artifacts.load_params(hf_dir, transformer.Transformer,
                          dataclasses.replace(cfg, num_layers=3), mesh,
                          MESH.rules)
  with pytest.raises(ValueError, match="only LM params"):
    artifacts.load_params(hf_dir, heads.RewardModel, cfg, mesh, MESH.rules)


def test_export_params_is_a_plain_lm_checkpoint(tmp_path, devices):
  """What export_params writes is what load_params reads at another step."""
  run = str(tmp_path / "policy")
  first, second = _params(CFG, seed=3), _params(CFG, seed=4)
  artifacts.export_params(run, first, step=1)
  artifacts.export_params(run, second, step=2)
  write_lineage(run, Lineage(stage="ppo_policy", model_kind="policy",
                             model=CFG))
  mesh = sharding.make_mesh(MESH, devices)
  _, params = artifacts.load_params(run, transformer.Transformer, CFG, mesh,
                                    MESH.rules)
  _assert_same(params, second)  # the latest step


def test_tokenizer_and_template_round_trip(tmp_path):
  run = RunDir(tmp_path / "run")
  os.makedirs(run.root)
  texts = ["Hello there, how are you today? Fine, thanks."] * 40
  tokenizer_lib.train_sentencepiece(texts, os.path.splitext(
      run.tokenizer_model)[0], 300)
  tok = artifacts.load_tokenizer(run.root)
  assert tok.vocab_size == tokenizer_lib.load_tokenizer(
      run.tokenizer_model).vocab_size
  assert tok.decode(tok.encode("Hello there")) == "Hello there"
  # The lineage's tokenizer wins over the run directory's own file.
  other = str(tmp_path / "other")
  tokenizer_lib.train_sentencepiece(texts, other, 320)
  write_lineage(run.root, Lineage(
      stage="sft", model_kind="lm",
      tokenizer=TokenizerRef(other + ".model", 320)))
  assert os.fspath(tok.model_path) == run.tokenizer_model
  assert os.fspath(artifacts.load_tokenizer(run.root).model_path) == (
      other + ".model")

  with pytest.raises(FileNotFoundError, match="chat_template.json"):
    artifacts.load_template(run.root)
  for template in chat.TEMPLATES.values():
    path = artifacts.save_template(run.root, template)
    assert path == run.chat_template
    assert artifacts.load_template(run.root) == template
  assert not os.path.exists(run.chat_template + ".tmp")
