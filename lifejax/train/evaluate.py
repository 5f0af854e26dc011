"""The engine's eval pass: token-weighted held-out loss and perplexity per
eval set, plus the evaluators that compute metrics from the train state.

The training loop calls `run_evals` at every eval step; held-out perplexity
(eval/perplexity.py) calls `evaluate` on its own sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lifejax import sharding
from lifejax.losses.lm import ROW_PREFIX
from lifejax.train.state import TrainState
from lifejax.train.step import loss_params

# An evaluator computes extra eval metrics from the state (e.g. generation
# accuracy judged by a program); it returns {"eval/<name>": value, ...}.
Evaluator = Callable[[TrainState, int], dict[str, float]]
# One eval set (a function returning a fresh batch iterator) or named sets.
EvalSets = (Callable[[], Iterator[dict]]
            | Mapping[str, Callable[[], Iterator[dict]]])


def evaluate(eval_step: Callable[..., dict], params: Any,
             eval_batches: Iterator[dict], batch_shardings: Any,
             max_batches: int = 0,
             per_row: list[tuple[float, float]] | None = None
             ) -> dict[str, float]:
  """Token-weighted held-out loss and perplexity over the eval batches.

  per_row: if given, gets each row's (summed cross-entropy, token weight),
  rows of zero weight (padding) left out, for confidence intervals over
  rows (eval.chain); the eval step's loss must emit per-row metrics
  (losses.lm.lm_loss(per_row=True))."""
  totals: dict[str, float] = {}
  n = 0
  for batch in eval_batches:
    out = sharding.fetch(eval_step(params, sharding.put(batch,
                                                        batch_shardings)))
    rows = {k: out.pop(k) for k in list(out) if k.startswith(ROW_PREFIX)}
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    if per_row is not None:
      if not rows:
        raise ValueError("evaluate(per_row=...): the eval step's loss emits "
                         f"no per-row metrics ({ROW_PREFIX}loss_sum)")
      per_row.extend((float(s), float(w)) for s, w in zip(
          rows[ROW_PREFIX + "loss_sum"], rows[ROW_PREFIX + "weight"]) if w > 0)
    n += 1
    if max_batches and n >= max_batches:
      break
  if not n:
    raise ValueError("the eval set produced no batches")
  w = max(totals.pop("weight"), 1e-8)
  res = {f"eval/{k}": v / w for k, v in totals.items()}
  res["eval/perplexity"] = math.exp(min(res["eval/loss"], 50.0))
  res["eval/tokens"] = w
  return res


def run_evals(eval_step: Callable[..., dict] | None, state: TrainState,
              eval_sets: EvalSets | None, evaluators: Sequence[Evaluator],
              batch_shardings: Any, max_batches: int, step: int
              ) -> dict[str, float]:
  """All eval metrics at `step`: loss/perplexity per eval set + evaluators.

  A single eval set reports `eval/loss`, ...; named sets report
  `eval/<name>/loss`, ...
  """
  out: dict[str, float] = {}
  if eval_step is not None and eval_sets is not None:
    named = (eval_sets if isinstance(eval_sets, Mapping)
             else {"": eval_sets})
    for name, batches in named.items():
      m = evaluate(eval_step, loss_params(state), batches(), batch_shardings,
                   max_batches)
      if name:
        m = {f"eval/{name}/{k[len('eval/'):]}": v for k, v in m.items()}
      out.update(m)
  for ev in evaluators:
    out.update(ev(state, step))
  return out
