"""HF Llama import/export: logits parity with transformers, sharded import,
greedy decoding parity, and the errors for checkpoints lifejax can't load.

Every model is a tiny random `LlamaForCausalLM` built and saved here; weights
are drawn with a large init std so that attention is far from uniform and a
RoPE or layout mistake moves the logits well past the 1e-4 tolerance.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from lifejax import sharding
from lifejax.model import hf_export, hf_format, hf_import, transformer

transformers = pytest.importorskip("transformers")

TOL = 1e-4
B, T = 4, 24

CONFIGS = {
    # GQA, untied, default theta; also saved as several safetensors shards.
    "gqa": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64),
    # MHA, tied embeddings, non-default theta and eps.
    "tied_theta": dict(vocab_size=96, hidden_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4,
                       intermediate_size=80, tie_word_embeddings=True,
                       rope_theta=500000.0, rms_norm_eps=1e-6),
    # head_dim 6 with hidden 32 != 4 * 6.
    "head_dim6": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2,
                      head_dim=6, intermediate_size=64, rope_theta=1234.5),
    # head_dim 10 (hidden 32 != 40), MQA, tied, Llama-3 RoPE scaling with a
    # short original context so that every frequency is rescaled.
    "llama3_rope": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1,
                        head_dim=10, intermediate_size=48,
                        tie_word_embeddings=True, rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16}),
}

MAX_DIFFS = {}  # config -> max |logit diff| seen, printed at the end


def _hf_model(name: str, seed: int = 0):
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(initializer_range=0.25, bos_token_id=None,
                                 eos_token_id=None, pad_token_id=None,
                                 **CONFIGS[name])
  model = transformers.LlamaForCausalLM(cfg).eval()
  if cfg.tie_word_embeddings:  # make sure tying really is exercised
    assert model.lm_head.weight.data_ptr() == (
        model.model.embed_tokens.weight.data_ptr())
  return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _tokens(vocab: int, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (B, T), np.int32)


def _graphdef(cfg):
  graphdef, _ = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  return graphdef


def _lifejax_logits(cfg, params, tokens) -> np.ndarray:
  graphdef = _graphdef(cfg)
  fwd = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
  return np.asarray(fwd(params, tokens))


class Saved:
  """A saved HF model, its reference logits and the lifejax import."""

  def __init__(self, name, root, max_shard_size=None):
    self.name = name
    self.model = _hf_model(name)
    self.dir = os.path.join(root, name)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    self.model.save_pretrained(self.dir, safe_serialization=True, **kwargs)
    self.tokens = _tokens(CONFIGS[name]["vocab_size"])
    self.ref = _hf_logits(self.model, self.tokens)
    self.cfg, self.params = hf_import.load_hf_checkpoint(self.dir)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  out = {name: Saved(name, root) for name in CONFIGS}
  out["gqa_sharded"] = Saved("gqa", str(root / "sharded"),
                             max_shard_size="20KB")
  yield out
  print("\nmax |logit diff| vs transformers:",
        {k: f"{v:.2e}" for k, v in sorted(MAX_DIFFS.items())})


def _check(key, got, ref):
  diff = float(np.max(np.abs(got - ref)))
  MAX_DIFFS[key] = max(MAX_DIFFS.get(key, 0.0), diff)
  assert diff < TOL, f"{key}: max |logit diff| {diff:.3g}"
  # Logits must be large enough for the tolerance to mean something.
  assert float(np.std(ref)) > 0.5, float(np.std(ref))


def test_config_mapping(saved):
  cfg = saved["head_dim6"].cfg
  assert (cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.num_heads,
          cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim) == (
              128, 32, 2, 4, 2, 6, 64)
  assert cfg.rope_theta == 1234.5 and cfg.rope_scaling is None
  assert not cfg.tie_embeddings and cfg.rms_eps == 1e-6  # HF's default
  tied = saved["tied_theta"].cfg
  assert tied.tie_embeddings and tied.rms_eps == 1e-6
  assert tied.rope_theta == 500000.0 and tied.num_kv_heads == 4
  assert "lm_head" not in saved["tied_theta"].params
  assert saved["llama3_rope"].cfg.rope_scaling_dict == {
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16}


def test_shards_were_written(saved):
  names = os.listdir(saved["gqa_sharded"].dir)
  assert hf_format.INDEX_FILE in names
  assert sum(n.endswith(".safetensors") for n in names) > 2


@pytest.mark.parametrize("name", list(CONFIGS) + ["gqa_sharded"])
def test_import_logits_match_transformers(saved, name):
  s = saved[name]
  _check(name, _lifejax_logits(s.cfg, s.params, s.tokens), s.ref)


def test_parity_check_is_sensitive_to_rope_scaling(saved):
  """Dropping the Llama-3 scaling must break parity (the test can fail)."""
  s = saved["llama3_rope"]
  plain = dataclasses.replace(s.cfg, rope_scaling=None)
  diff = np.max(np.abs(_lifejax_logits(plain, s.params, s.tokens) - s.ref))
  assert diff > 100 * TOL, diff


@pytest.mark.parametrize("name", ["gqa", "head_dim6", "llama3_rope"])
def test_export_reloads_in_transformers(saved, name, tmp_path):
  s = saved[name]
  files = hf_export.save_hf_checkpoint(tmp_path, s.cfg, s.params,
                                       max_shard_size=16 * 1024)
  assert len(files) > 1 and os.path.exists(tmp_path / hf_format.INDEX_FILE)
  reloaded = transformers.LlamaForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  assert reloaded.config.tie_word_embeddings == s.cfg.tie_embeddings
  assert reloaded.config.head_dim == s.cfg.resolved_head_dim
  for key, want in s.model.state_dict().items():
    np.testing.assert_array_equal(
        reloaded.state_dict()[key].numpy(), want.numpy(), err_msg=key)
  _check(f"{name}_exported", _hf_logits(reloaded, s.tokens), s.ref)
  # And back again: the export imports to the same params.
  cfg2, params2 = hf_import.load_hf_checkpoint(tmp_path)
  assert cfg2 == s.cfg
  jax.tree.map(np.testing.assert_array_equal, params2, s.params)


def test_export_refuses_to_mix_with_old_weights(saved, tmp_path):
  s = saved["gqa"]
  hf_export.save_hf_checkpoint(tmp_path, s.cfg, s.params,
                               max_shard_size=16 * 1024)
  with pytest.raises(FileExistsError, match="overwrite"):
    hf_export.save_hf_checkpoint(tmp_path, s.cfg, s.params)
  hf_export.save_hf_checkpoint(tmp_path, s.cfg, s.params, overwrite=True)
  # The stale index is removed.
  assert not os.path.exists(tmp_path / hf_format.INDEX_FILE)
  _, params = hf_import.load_hf_checkpoint(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, params, s.params)


def _greedy(cfg, params, prompt: np.ndarray, num_new: int) -> np.ndarray:
  """Full-recompute greedy decoding (causal: the zero tail is never seen)."""
  graphdef = _graphdef(cfg)
  b, p = prompt.shape

  @jax.jit
  def run(params, prompt):
    buf = jnp.zeros((b, p + num_new), jnp.int32).at[:, :p].set(prompt)

    def step(i, buf):
      logits = nnx.merge(graphdef, params)(buf)
      last = jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1,
                                          keepdims=False)
      nxt = jnp.argmax(last, axis=-1).astype(jnp.int32)
      return jax.lax.dynamic_update_index_in_dim(buf, nxt, p + i, axis=1)

    return jax.lax.fori_loop(0, num_new, step, buf)

  return np.asarray(run(params, prompt))


@pytest.mark.parametrize("name", ["gqa", "llama3_rope"])
def test_greedy_generation_matches_transformers(saved, name):
  s = saved[name]
  prompt = s.tokens[:2, :5]
  num_new = 8
  ours = _greedy(s.cfg, s.params, prompt, num_new)
  with torch.no_grad():
    theirs = s.model.generate(
        torch.tensor(prompt, dtype=torch.long),
        attention_mask=torch.ones(prompt.shape, dtype=torch.long),
        max_new_tokens=num_new, do_sample=False, pad_token_id=0).numpy()
  assert theirs.shape == ours.shape
  np.testing.assert_array_equal(ours, theirs)


# Expected placements under DEFAULT_RULES on a (data=2, fsdp=2, model=2) mesh:
# embed -> fsdp, heads/kv_heads/mlp/vocab -> model, layers/norm replicated.
EXPECTED_SPECS = {
    ("embed",): P("model", "fsdp"),
    ("lm_head",): P("fsdp", "model"),
    ("final_norm", "scale"): P(None),
    ("layers", "attn", "wq"): P(None, "fsdp", "model", None),
    ("layers", "attn", "wk"): P(None, "fsdp", "model", None),
    ("layers", "attn", "wv"): P(None, "fsdp", "model", None),
    ("layers", "attn", "wo"): P(None, "model", None, "fsdp"),
    ("layers", "attn_norm", "scale"): P(None, None),
    ("layers", "mlp_norm", "scale"): P(None, None),
    ("layers", "mlp", "w_gate"): P(None, "fsdp", "model"),
    ("layers", "mlp", "w_up"): P(None, "fsdp", "model"),
    ("layers", "mlp", "w_down"): P(None, "model", "fsdp"),
}


def test_sharded_import(saved, devices):
  s = saved["gqa_sharded"]
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, model=2),
                            devices)
  rules = sharding.DEFAULT_RULES
  cfg, params = hf_import.load_hf_checkpoint(s.dir, mesh=mesh, rules=rules)
  flat = {tuple(k.key for k in path): x for path, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  assert set(flat) == set(EXPECTED_SPECS)
  for path, x in flat.items():
    want = NamedSharding(mesh, EXPECTED_SPECS[path])
    assert x.sharding.is_equivalent_to(want, x.ndim), (path, x.sharding)
    assert x.addressable_shards[0].data.shape == want.shard_shape(x.shape)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(
        _get(s.params, path)), err_msg=str(path))

  graphdef = _graphdef(cfg)
  batch = NamedSharding(mesh, sharding.batch_spec(mesh, rules))
  tokens = jax.device_put(s.tokens, batch)
  with jax.set_mesh(mesh), sharding.activation_sharding(mesh, rules):
    out = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)
  _check("gqa_mesh", np.asarray(out), s.ref)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def test_bf16_checkpoint(tmp_path):
  model = _hf_model("gqa").to(torch.bfloat16)
  model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = hf_import.load_hf_checkpoint(tmp_path)
  assert params["embed"].dtype == jnp.float32  # upcast to the param dtype
  want = model.model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(params["embed"]), want)
  ref_model = transformers.LlamaForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  tokens = _tokens(cfg.vocab_size)
  _check("gqa_bf16_weights", _lifejax_logits(cfg, params, tokens),
         _hf_logits(ref_model, tokens))
  _, params16 = hf_import.load_hf_checkpoint(tmp_path, param_dtype="bfloat16")
  assert params16["layers"]["attn"]["wq"].dtype == jnp.bfloat16
  out = tmp_path / "out"
  hf_export.save_hf_checkpoint(out, cfg, params, dtype="bfloat16")
  a = load_file(os.path.join(tmp_path, hf_format.WEIGHTS_FILE))
  b = load_file(os.path.join(out, hf_format.WEIGHTS_FILE))
  assert sorted(a) == sorted(b)
  for k in a:
    assert b[k].dtype == a[k].dtype, k
    np.testing.assert_array_equal(a[k].view(np.uint16), b[k].view(np.uint16))


# -- errors -------------------------------------------------------------------


def _copy(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def _edit_config(d: str, **changes) -> None:
  path = os.path.join(d, "config.json")
  with open(path) as f:
    c = json.load(f)
  c.update(changes)
  with open(path, "w") as f:
    json.dump(c, f)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"architectures": ["LlamaForSequenceClassification"]},
     "LlamaForSequenceClassification"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                          "rope_theta": 1e4}}, "'yarn'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic",
                                                "factor": 2.0}}, "'dynamic'"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantiz"),
])
def test_unsupported_architecture(saved, tmp_path, changes, message):
  d = _copy(saved["gqa"].dir, tmp_path / "bad")
  _edit_config(d, **changes)
  with pytest.raises(hf_format.UnsupportedCheckpointError, match=message):
    hf_import.load_hf_checkpoint(d)


def test_unexpected_tensor_is_an_error(saved, tmp_path):
  d = _copy(saved["gqa"].dir, tmp_path / "bias")
  path = os.path.join(d, hf_format.WEIGHTS_FILE)
  tensors = load_file(path)
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(hf_format.UnsupportedCheckpointError, match="q_proj.bias"):
    hf_import.load_hf_checkpoint(d)


def test_missing_tensor_names_tensor_and_file(saved, tmp_path):
  d = _copy(saved["gqa"].dir, tmp_path / "single")
  path = os.path.join(d, hf_format.WEIGHTS_FILE)
  tensors = load_file(path)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(hf_import.MissingTensorError,
                     match=r"'model\.layers\.1\.mlp\.up_proj\.weight'.*"
                     r"model\.safetensors"):
    hf_import.load_hf_checkpoint(d)


def test_missing_tensor_in_a_shard(saved, tmp_path):
  d = _copy(saved["gqa_sharded"].dir, tmp_path / "sharded")
  with open(os.path.join(d, hf_format.INDEX_FILE)) as f:
    weight_map = json.load(f)["weight_map"]
  name = "model.layers.0.self_attn.k_proj.weight"
  shard = weight_map[name]
  tensors = load_file(os.path.join(d, shard))
  del tensors[name]
  save_file(tensors, os.path.join(d, shard), metadata={"format": "pt"})
  with pytest.raises(hf_import.MissingTensorError, match=rf"{name}.*{shard}"):
    hf_import.load_hf_checkpoint(d)


def test_shape_mismatch_is_an_error(saved, tmp_path):
  d = _copy(saved["gqa"].dir, tmp_path / "shape")
  _edit_config(d, intermediate_size=96)
  with pytest.raises(ValueError, match=r"gate_proj.*\(64, 32\).*\(96, 32\)"):
    hf_import.load_hf_checkpoint(d)


def test_pickled_weights_are_not_read(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "llama", **CONFIGS["gqa"]}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
    hf_import.load_hf_checkpoint(tmp_path)
