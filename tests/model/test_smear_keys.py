"""Smeared keys (TransformerConfig.smear_keys): one attention layer can copy.

The exact function (reference logits, packing, KV cache, left padding) is
tested with the rest of the decoder in tests/test_model.py and
tests/model/test_sampling.py; here, what the option is for.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lifejax.eval import copy_probe
from lifejax.model import hf_export, hf_format, transformer
from lifejax.model.config import TransformerConfig


def _copy_batch(seed: int, batch: int = 32, length: int = 48) -> np.ndarray:
  """Random spans of 6..16 tokens, each repeated to fill the row: the
  period varies, so the only way to predict a repeat is induction (find the
  last occurrence of the current token, emit the one after it)."""
  rng = np.random.default_rng(seed)
  out = np.zeros((batch, length), np.int32)
  for i in range(batch):
    n = rng.integers(6, 17)
    out[i] = np.tile(rng.integers(4, 64, n), length // n + 1)[:length]
  return out


def _train_one_layer(smear_keys: bool, steps: int) -> dict[str, float]:
  cfg = TransformerConfig(vocab_size=64, d_model=64, num_layers=1,
                          num_heads=4, num_kv_heads=4, mlp_dim=128,
                          max_seq_len=64, smear_keys=smear_keys)
  graphdef, params = nnx.split(transformer.create_model(cfg, 0), nnx.Param)
  params = nnx.to_pure_dict(params)
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss(p, ids):
    logits = nnx.merge(graphdef, p)(ids).astype(jnp.float32)[:, :-1]
    lp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(lp, ids[:, 1:, None], -1).mean()

  @jax.jit
  def step(p, s, ids):
    u, s = opt.update(jax.grad(loss)(p, ids), s, p)
    return optax.apply_updates(p, u), s

  for i in range(steps):
    params, state = step(params, state, jnp.asarray(_copy_batch(100 + i)))
  return copy_probe.copy_probe(graphdef, params, cfg.vocab_size, length=12,
                               seed=5)


def test_one_smeared_layer_learns_induction_a_plain_layer_cannot():
  """A single plain attention layer has no previous-token information in
  its keys, so it cannot find "the token after the last occurrence" of the
  current one (Olsson et al., 2022); with smeared keys it can. Measured
  on this toy: 90% vs 29% copy top-1 after 100 steps, 95% vs 28% after
  400 (the plain layer's share comes from guessing tokens seen before)."""
  smeared = _train_one_layer(True, 150)
  plain = _train_one_layer(False, 150)
  assert smeared["copy/top1"] > 0.8, smeared
  assert plain["copy/top1"] < 0.5, plain
  assert smeared["copy/score"] > plain["copy/score"] + 1.0


def test_smeared_keys_have_no_huggingface_export(tmp_path):
  cfg = TransformerConfig(vocab_size=64, num_layers=1, smear_keys=True)
  with pytest.raises(hf_format.UnsupportedCheckpointError, match="smear_keys"):
    hf_format.config_to_hf(cfg)
  params = nnx.to_pure_dict(nnx.state(transformer.create_model(cfg),
                                      nnx.Param))
  with pytest.raises(hf_format.UnsupportedCheckpointError, match="smear_keys"):
    hf_export.save_hf_checkpoint(tmp_path / "hf", cfg, params)
  assert not (tmp_path / "hf").exists()  # refused before writing anything
