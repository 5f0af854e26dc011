"""Held-out perplexity, per source, with a jitted batched eval step."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lifejax.data import pipeline
from lifejax.train.evaluate import evaluate


def perplexity_by_source(
    eval_step: Callable[..., dict],
    params: Any,
    sources: Sequence[Any],
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    batch_shardings: Any,
    text_field: str = "text",
    max_batches: int = 0,
    per_row: bool = False,
) -> dict[str, dict[str, float]]:
  """{source name: {"loss", "perplexity", "tokens", "accuracy" (, "rows")}}.

  Each source is evaluated in one ordered pass (the last batch padded with
  zero-weight rows), so the numbers are exact token-weighted means.
  With `per_row` (the eval step's loss emitting per-row metrics,
  losses.lm.lm_loss(per_row=True)) "rows" lists each packed row's. The
  same file and tokenizer give the same rows, so two models' rows pair up
  (a paired CI over rows, eval.chain).
  """
  out: dict[str, dict[str, Any]] = {}
  for src in sources:
    batches = iter(pipeline.lm_eval_dataset(
        src, tokenizer, seq_len=seq_len, batch_size=batch_size,
        text_field=text_field))
    rows: list[tuple[float, float]] | None = [] if per_row else None
    m = evaluate(eval_step, params, batches, batch_shardings, max_batches,
                 per_row=rows)
    out[src.name] = {
        "loss": m["eval/loss"], "perplexity": m["eval/perplexity"],
        "tokens": m["eval/tokens"],
        "accuracy": m.get("eval/accuracy", float("nan")),
    }
    if rows is not None:
      out[src.name]["rows"] = rows
  return out


def summarize(per_source: Mapping[str, Mapping[str, float]]
              ) -> dict[str, float]:
  """Token-weighted mean loss/perplexity over all sources."""
  tokens = sum(v["tokens"] for v in per_source.values())
  loss = sum(v["loss"] * v["tokens"] for v in per_source.values()) / max(
      tokens, 1e-9)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
          "tokens": tokens}
