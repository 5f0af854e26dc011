"""In-context copying probe: does the model have induction heads?

The email tasks of the embedded world (summarize, reply, action items) need
names, days and numbers copied out of the prompt. A model copies through
induction heads (Olsson et al., 2022, "In-context learning and induction
heads"), and whether it has them can be read off directly: feed random token
sequences repeated twice, [x_1 .. x_L x_1 .. x_L]. Without induction the
second copy is as unpredictable as the first; with it, every token of the
second copy after its first is predicted from the first copy.

Metrics (random ids from the ordinary vocabulary, fixed seed):
  copy/top1         argmax accuracy on the second copy (tokens 2..L of it)
  copy/nll_first    mean NLL of the first copy's tokens 2..L
  copy/nll_second   mean NLL of the same tokens in the second copy
  copy/score        nll_first - nll_second (> 0: the model copies)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lifejax.losses.common import token_logprobs


def repeated_sequences(vocab_size: int, length: int, batch: int, seed: int,
                       first_id: int = 4) -> np.ndarray:
  """(batch, 2 * length) int32: random ids in [first_id, vocab) twice."""
  if length < 2 or batch < 1:
    raise ValueError(f"copy probe needs length >= 2 and batch >= 1, got "
                     f"length={length}, batch={batch}")
  if vocab_size - first_id < 2:
    raise ValueError(f"copy probe: vocab_size {vocab_size} leaves no "
                     f"ordinary ids above {first_id}")
  x = np.random.default_rng(seed).integers(first_id, vocab_size,
                                           (batch, length))
  return np.concatenate([x, x], axis=1).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0,))
def next_token_stats(graphdef: Any, params: Any, ids_BxT: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """NLL and argmax hit of each next-token prediction of unpadded rows
  (positions 0..T-1), both (B, T - 1); prediction t targets token t + 1."""
  model = nnx.merge(graphdef, params)
  pos = jnp.broadcast_to(jnp.arange(ids_BxT.shape[1]), ids_BxT.shape)
  logits = model(ids_BxT, pos, jnp.ones_like(ids_BxT))[:, :-1]
  return (-token_logprobs(logits, ids_BxT[:, 1:]),
          logits.argmax(-1) == ids_BxT[:, 1:])


def copy_probe(graphdef: Any, params: Any, vocab_size: int, *,
               length: int = 48, batch: int = 16, seed: int = 0
               ) -> dict[str, float]:
  """The copy/* metrics (module docstring) of an LM (`Transformer`)."""
  ids = jnp.asarray(repeated_sequences(vocab_size, length, batch, seed))
  nll, hit = jax.device_get(next_token_stats(graphdef, params, ids))
  # The copyable targets are the second copy's tokens after its first (ids
  # L+1 .. 2L-1: t in [L, 2L-1)); the same tokens in the first copy (ids
  # 1 .. L-1: t in [0, L-1)) are the no-copy baseline.
  first, second = slice(0, length - 1), slice(length, 2 * length - 1)
  nll_first = float(np.mean(nll[:, first]))
  nll_second = float(np.mean(nll[:, second]))
  return {"copy/top1": float(np.mean(hit[:, second])),
          "copy/nll_first": nll_first, "copy/nll_second": nll_second,
          "copy/score": nll_first - nll_second}
