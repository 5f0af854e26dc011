"""Model FLOPs of a training step: the one formula MFU is reported with.

Convention (the one MaxText reports MFU with; PaLM appendix B without its
causal-attention overcount): count only matmul FLOPs, 2 per multiply-add,
and charge the backward pass twice the forward (one matmul for the input
gradient, one for the weight gradient), so training = 3 x forward.

Per token of a sequence of length T, for a decoder with L layers, d_attn =
H * E (query heads x head dim):

* weight matmuls: every weight of the q/k/v/o projections, the gated MLP
  and the output head takes part in one multiply-add per token, 2 * N_mm
  forward, so 6 * N_mm for training. The input embedding is a gather, not a
  matmul, and norms and biases are elementwise: none of them is in N_mm.
* attention: a query attends to T keys; scores q . k cost 2 * T * E per
  head and the weighted sum of values another 2 * T * E, so 4 * T * d_attn
  per token per layer forward, 12 * L * T * d_attn for training. A causal
  mask leaves query t with t + 1 keys, T / 2 on average, which halves it:
  6 * L * T * d_attn.

Remat recompute is not model FLOPs (MFU divides useful work by peak), so a
rematerialized step does more hardware FLOPs than this formula counts.
"""

from __future__ import annotations

import math
from typing import Any

from lifejax.model.config import TransformerConfig

_DOTS = ("dot_general", "ragged_dot_general")


def matmul_params(cfg: TransformerConfig) -> int:
  """N_mm: parameters that multiply activations (layers' projections and
  the output head; not the embedding gather, norms or biases). In a
  mixture of experts, a token multiplies by the router and its k experts
  only: N_mm counts those (the active parameters), not all E experts."""
  return (cfg.num_layers * cfg.layer_matmul_params(active=True)
          + cfg.vocab_size * cfg.d_model)


def attention_flops_per_token(cfg: TransformerConfig, seq_len: int,
                              causal: bool = True) -> float:
  """Training FLOPs of the score and value matmuls per token:
  12 * L * T * H * E, halved for a causal mask."""
  full = 12.0 * cfg.num_layers * seq_len * cfg.num_heads * (
      cfg.resolved_head_dim)
  return full / 2 if causal else full


def train_flops_per_token(cfg: TransformerConfig, seq_len: int,
                          causal: bool = True) -> float:
  """Model FLOPs of one training token: 6 * N_mm + attention (see module
  docstring). `causal=False` counts the full T x T score matrix, which is
  what an implementation that computes and then masks it executes."""
  return 6.0 * matmul_params(cfg) + attention_flops_per_token(
      cfg, seq_len, causal)


def mfu(tokens_per_second: float, flops_per_token: float,
        peak_flops_per_second: float) -> float:
  """Model FLOPs utilization: achieved model FLOP/s over the hardware peak
  (of all chips the tokens were processed on)."""
  return tokens_per_second * flops_per_token / peak_flops_per_second


def jaxpr_matmul_flops(jaxpr: Any) -> int:
  """FLOPs of every matmul a (closed or open) jaxpr runs: 2 x (lhs
  elements) x (rhs extent outside the contracting, batch and group
  dimensions) per `dot_general` / `ragged_dot_general` (each row of a
  ragged operand meets one group), recursing into sub-jaxprs with a scan's
  body counted once per trip. A brute count to check the formula against,
  and to read what a remat policy recomputes (the rematerialized forward is
  in the gradient's jaxpr)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in _DOTS:
      dn = eqn.params.get("dimension_numbers")
      group: tuple[int, ...] = ()
      if name == "ragged_dot_general":
        rdn = eqn.params["ragged_dot_dimension_numbers"]
        dn, group = rdn.dot_dimension_numbers, rdn.rhs_group_dimensions
      (_, rhs_contract), (_, rhs_batch) = dn
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      skip = set(rhs_contract) | set(rhs_batch) | set(group)
      total += 2 * math.prod(lhs) * math.prod(
          n for i, n in enumerate(rhs) if i not in skip)
    trips = eqn.params.get("length", 1) if name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          total += trips * jaxpr_matmul_flops(sub)
  return total
