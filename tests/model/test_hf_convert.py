"""tools/convert_checkpoint.py: HF dir -> lifejax run dir -> HF dir.

Checks the round trip is bit-exact, that the run dir is what lifejax reads
(orbax params via `restore_params` into a mesh, model.gin through gin), that a
trainer-written checkpoint (with optimizer state) exports, and that a chat
template lands in the HF tokenizer.
"""

import glob
import importlib.util
import json
import os
import shutil

import gin
import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from jax.sharding import NamedSharding
from safetensors.numpy import load_file

from lifejax import main as main_lib
from lifejax import sharding
from lifejax.model import hf_format, hf_import, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import RunDir
from lifejax.run.lineage import Lineage, read_lineage, write_lineage
from lifejax.train import checkpoint as ckpt_lib

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
_spec = importlib.util.spec_from_file_location(
    "convert_checkpoint", os.path.join(REPO, "tools", "convert_checkpoint.py"))
convert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert)

HF_CONFIG = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=10,
                 intermediate_size=48, tie_word_embeddings=True,
                 rope_theta=500000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0,
                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 16})
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
            "</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>"
            "{% endif %}")


def _tokenizer_files(path: str) -> None:
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=128, show_progress=False,
      special_tokens=["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"])
  tok.train_from_iterator(["the cat sat on the mat", "hello there"], trainer)
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
      pad_token="<pad>").save_pretrained(path)


def _weights(d: str) -> dict[str, np.ndarray]:
  out = {}
  for f in glob.glob(os.path.join(d, "*.safetensors")):
    out.update(load_file(f))
  return out


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("convert")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      initializer_range=0.25, **HF_CONFIG)).eval()
  hf_dir, run_dir = str(root / "hf"), str(root / "run")
  model.save_pretrained(hf_dir, safe_serialization=True, max_shard_size="20KB")
  _tokenizer_files(hf_dir)
  convert.main(["hf-to-lifejax", f"--hf_dir={hf_dir}", f"--run_dir={run_dir}"])
  return model, hf_dir, run_dir, root


def test_round_trip_is_exact(converted):
  model, hf_dir, run_dir, root = converted
  out = str(root / "back")
  convert.main(["lifejax-to-hf", f"--run_dir={run_dir}", f"--hf_dir={out}",
                "--max_shard_size=24KB"])
  a, b = _weights(hf_dir), _weights(out)
  assert sorted(a) == sorted(b) and "lm_head.weight" not in b
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert os.path.exists(os.path.join(out, hf_format.INDEX_FILE))
  src, dst = hf_format.read_hf_config(hf_dir), hf_format.read_hf_config(out)
  for key in ("vocab_size", "hidden_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "tie_word_embeddings", "rms_norm_eps",
              "max_position_embeddings", "bos_token_id", "eos_token_id",
              "rope_parameters"):
    assert src[key] == dst[key], key
  reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  tokens = np.random.default_rng(0).integers(0, 128, (2, 20))
  np.testing.assert_array_equal(_logits(reloaded, tokens),
                                _logits(model, tokens))


def test_run_dir_gin_and_config(converted):
  _, hf_dir, run_dir, _ = converted
  want = hf_format.config_from_hf(hf_format.read_hf_config(hf_dir))
  assert convert.read_run_config(run_dir) == want
  gin.clear_config()
  try:
    main_lib.parse_gin([RunDir(run_dir).model_gin], [])
    assert gin.get_configurable(TransformerConfig)() == want
    assert gin.query_parameter("%INIT_FROM") == os.path.abspath(run_dir)
  finally:
    gin.clear_config()
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert os.path.exists(os.path.join(run_dir, name)), name
  assert read_lineage(run_dir).details["source"] == os.path.abspath(hf_dir)


def test_restore_params_into_mesh(converted, devices):
  _, hf_dir, run_dir, _ = converted
  cfg = convert.read_run_config(run_dir)
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, model=2),
                            devices)
  shardings = hf_import.param_shardings(cfg, mesh)
  _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  params = ckpt_lib.restore_params(run_dir, nnx.to_pure_dict(abstract),
                                   shardings)
  want = hf_import.load_hf_params(hf_dir, cfg)
  wq = params["layers"]["attn"]["wq"]
  assert wq.sharding.is_equivalent_to(
      NamedSharding(mesh, jax.sharding.PartitionSpec(
          None, "fsdp", "model", None)), wq.ndim)

  def same(x, s, w):
    assert x.sharding.is_equivalent_to(s, x.ndim)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(w))

  jax.tree.map(same, params, shardings, want)


def test_chat_template_lands_in_tokenizer(converted, tmp_path):
  _, hf_dir, run_dir, _ = converted
  template_file = tmp_path / "template.jinja"
  template_file.write_text(TEMPLATE)
  out = str(tmp_path / "sft_hf")
  convert.main(["lifejax-to-hf", f"--run_dir={run_dir}", f"--hf_dir={out}",
                f"--chat_template_file={template_file}", "--dtype=bfloat16"])
  with open(os.path.join(out, "tokenizer_config.json")) as f:
    assert json.load(f)["chat_template"] == TEMPLATE
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.chat_template == TEMPLATE
  text = tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                 tokenize=False, add_generation_prompt=True)
  assert text == "<|user|>hi</s><|assistant|>"
  config = hf_format.read_hf_config(out)
  assert config["eos_token_id"] == tok.eos_token_id
  assert config["torch_dtype"] == "bfloat16"
  model = transformers.LlamaForCausalLM.from_pretrained(out)
  assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_chat_template_needs_a_tokenizer(converted, tmp_path):
  _, _, run_dir, _ = converted
  bare = tmp_path / "bare"
  shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("tokenizer*"))
  with pytest.raises(ValueError, match="tokenizer_dir"):
    convert.lifejax_to_hf(str(bare), str(tmp_path / "out"),
                          chat_template=TEMPLATE)


def test_exports_a_trainer_checkpoint(tmp_path):
  """A run written by `Checkpointer` (optimizer state, lineage.json as the
  pretrain stage writes it) exports, and transformers matches lifejax."""
  cfg = TransformerConfig(vocab_size=64, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64,
                          rope_theta=20000.0)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(3)

  def init(path, a):  # norm scales near 1, weights large enough to matter
    mean, std = (1.0, 0.1) if path[-1].key == "scale" else (0.0, 0.3)
    return jax.numpy.asarray(rng.normal(mean, std, a.shape), a.dtype)

  params = jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(abstract))
  state = {"step": np.int32(7), "params": params,
           "opt_state": optax.adamw(1e-3).init(params),
           "rng": jax.random.PRNGKey(0)}
  run_dir = str(tmp_path / "run")
  ckpt = ckpt_lib.Checkpointer(run_dir, ckpt_lib.CheckpointConfig(
      async_save=False))
  ckpt.save(7, state, data_state={"epoch": 0})
  ckpt.wait()
  ckpt.close()
  write_lineage(run_dir, Lineage(stage="pretrain", model_kind="lm",
                                 model=cfg))
  out = str(tmp_path / "hf")
  convert.main(["lifejax-to-hf", f"--run_dir={run_dir}", f"--hf_dir={out}"])
  model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  tokens = np.random.default_rng(1).integers(0, 64, (2, 16)).astype(np.int32)
  ours = np.asarray(jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(
      params, tokens))
  theirs = _logits(model, tokens)
  assert float(np.std(theirs)) > 0.5
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
