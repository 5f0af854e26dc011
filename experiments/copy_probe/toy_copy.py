r"""A pure copy task: how fast does a lifejax decoder learn induction?

Each row is a random span of 6..16 ids (from a 60-id alphabet) repeated to
fill 48 tokens. The period varies, so position alone cannot predict a
repeat: only induction can ("find the last occurrence of the current token,
emit the one after it"). Adam, lr 3e-3, batch 32; every 100 steps the
lifecycle's own copy probe (`lifejax.eval.copy_probe`, period 12) is read.

  python experiments/copy_probe/toy_copy.py --layers=1 --d_model=64 --smear
  python experiments/copy_probe/toy_copy.py --layers=8 --d_model=256 \
      --heads=8 --mlp=768 --dtype=bfloat16 --smear

Prints one line per 100 steps: step, training loss, copy top-1, copy score.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from lifejax.eval import copy_probe  # noqa: E402
from lifejax.model import transformer  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402

VOCAB = 64


def copy_batch(seed: int, batch: int = 32, length: int = 48) -> np.ndarray:
  rng = np.random.default_rng(seed)
  out = np.zeros((batch, length), np.int32)
  for i in range(batch):
    n = rng.integers(6, 17)
    out[i] = np.tile(rng.integers(4, VOCAB, n), length // n + 1)[:length]
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--d_model", type=int, default=64)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv_heads", type=int, default=4)
  p.add_argument("--mlp", type=int, default=128)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--smear", action="store_true")
  p.add_argument("--steps", type=int, default=400)
  a = p.parse_args()
  cfg = TransformerConfig(
      vocab_size=VOCAB, d_model=a.d_model, num_layers=a.layers,
      num_heads=a.heads, num_kv_heads=a.kv_heads, mlp_dim=a.mlp,
      max_seq_len=64, compute_dtype=a.dtype, smear_keys=a.smear)
  graphdef, params = nnx.split(transformer.create_model(cfg, 0), nnx.Param)
  params = nnx.to_pure_dict(params)
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss(prm, ids):
    logits = nnx.merge(graphdef, prm)(ids).astype(jnp.float32)[:, :-1]
    lp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(lp, ids[:, 1:, None], -1).mean()

  @jax.jit
  def step(prm, s, ids):
    value, g = jax.value_and_grad(loss)(prm, ids)
    u, s = opt.update(g, s, prm)
    return optax.apply_updates(prm, u), s, value

  t0 = time.time()
  print(f"layers={a.layers} d_model={a.d_model} dtype={a.dtype} "
        f"smear_keys={a.smear}")
  for i in range(a.steps):
    params, state, value = step(params, state, jnp.asarray(copy_batch(100 + i)))
    if (i + 1) % 100 == 0:
      r = copy_probe.copy_probe(graphdef, params, VOCAB, length=12, seed=5)
      print(f"step {i + 1}: loss {float(value):.3f}, copy top-1 "
            f"{r['copy/top1']:.1%}, copy score {r['copy/score']:.2f} "
            f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
