"""What a base model knows, read without asking it a question.

A pretrained model has never seen the question-answer format, so a greedy
"Question: ... Answer:" continuation (stage_eval.fact_probe) reads 0 both
when it stores nothing and when it stores facts it cannot yet extract (Allen-
Zhu & Li, "Physics of Language Models 3.1": extraction is what instruction
tuning adds). This probe ranks instead, as lm-eval's multiple-choice tasks
do: each fact's corpus statement is scored with the true value and with
distractor values of the same relation, in every corpus phrasing, and the
model "knows" the fact in a phrasing when the true statement has the highest
log-likelihood. The same ranking in question-answer form (answer_hits) asks
whether a chat model can reach the fact from a question.

  target_logprobs    per-token log p(target) of right-padded rows (jitted)
  continuation_logprobs  sum of log p over each row's last n tokens, and
                     whether they are all greedy (lm_eval_adapter's scorer)
  item_hits          per item of world.tasks.ranking_items: true first?
  answer_hits        per item of world.tasks.qa_ranking_items: true first?
  per_fact, ranking_metrics   those hits per fact; {fact_rank/accuracy,
                     fact_rank/chance, ...} of them
  fact_ranking       both, from a model
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lifejax.data import batching

# Rows are right-padded to the smallest of these widths (one compile each).
_WIDTHS = (32, 64, 128, 256, 512, 1024)


@functools.partial(jax.jit, static_argnums=(0, 5))
def target_logprobs(graphdef: Any, params: Any, tokens_BxT: jax.Array,
                    targets_BxT: jax.Array, mask_BxT: jax.Array,
                    vocab_limit: int) -> tuple[jax.Array, jax.Array]:
  """(log p(target) f32 (B, T), target == argmax over ids < vocab_limit
  (B, T)) for right-padded rows (mask 1 on real tokens)."""
  model = nnx.merge(graphdef, params)
  mask = mask_BxT.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits = model(tokens_BxT, positions, mask).astype(jnp.float32)
  # A gather minus the log-normalizer: no second (B, T, V) array.
  logp = (jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
          - jax.nn.logsumexp(logits, axis=-1))
  allowed = jnp.arange(logits.shape[-1]) < vocab_limit
  greedy = jnp.argmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
  return logp, greedy == targets_BxT


def continuation_logprobs(graphdef: Any, params: Any,
                          rows: Sequence[tuple[Sequence[int], int]],
                          batch_size: int, vocab_limit: int,
                          width_of: Callable[[int], int] | None = None
                          ) -> list[tuple[float, bool]]:
  """Per (token ids, n) row: the float64 sum of log p(token | tokens before
  it) over the row's last n tokens, and whether each of them is the greedy
  choice. Rows (each >= n + 1 tokens, n >= 1) are grouped by the padded
  width `width_of(len(row) - 1)` (default: the next of 32, 64, ... 1024, or
  the length itself) and run in batches of `batch_size` on one jitted
  function per width (`target_logprobs`)."""
  out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
  if width_of is None:
    width_of = lambda n: next((w for w in _WIDTHS if w >= n), n)  # noqa: E731
  by_width: dict[int, list[int]] = {}
  for i, (row, n) in enumerate(rows):
    if not 1 <= n < len(row):
      raise ValueError(f"row {i}: {len(row)} tokens, {n} scored; need at "
                       "least one scored token after the first")
    by_width.setdefault(width_of(len(row) - 1), []).append(i)
  for width, idx in sorted(by_width.items()):
    tokens = np.zeros((len(idx), width), np.int32)
    targets = np.zeros_like(tokens)
    mask = np.zeros_like(tokens)
    for r, i in enumerate(idx):
      row = rows[i][0]
      tokens[r, :len(row) - 1] = row[:-1]
      targets[r, :len(row) - 1] = row[1:]
      mask[r, :len(row) - 1] = 1
    logp, greedy = batching.map_padded(
        lambda c, _: target_logprobs(graphdef, params, c[0], c[1], c[2],
                                     vocab_limit),
        (tokens, targets, mask), batch_size)
    for r, i in enumerate(idx):
      end, n = len(rows[i][0]) - 1, rows[i][1]
      out[i] = (float(np.sum(logp[r, end - n:end], dtype=np.float64)),
                bool(np.all(greedy[r, end - n:end])))
  return out


def _first_wins(graphdef: Any, params: Any,
                groups: Sequence[Sequence[tuple[Sequence[int], int]]],
                batch_size: int, vocab_limit: int) -> list[bool]:
  """Per group of candidate rows (continuation_logprobs' (ids, n), the true
  one first): whether it scores strictly highest (a tie is a miss)."""
  rows = [row for g in groups for row in g]
  if not rows:
    return []
  scores = np.asarray([s for s, _ in continuation_logprobs(
      graphdef, params, rows, batch_size, vocab_limit)])
  starts = np.cumsum([0] + [len(g) for g in groups])
  return [bool(scores[a] > np.max(scores[a + 1:b]))
          for a, b in zip(starts[:-1], starts[1:])]


def item_hits(graphdef: Any, params: Any, tokenizer: Any,
              items: Sequence[Mapping[str, Any]], batch_size: int = 32
              ) -> list[bool]:
  """Per item of world.tasks.ranking_items ({"fact_id", "statements": [true,
  distractor, ...]}): whether the true statement has the highest
  log-likelihood (a tie is a miss)."""
  groups = []
  for it in items:
    if len(it["statements"]) < 2:
      raise ValueError(f"ranking item for {it.get('fact_id')}: needs a true "
                       "statement and at least one distractor")
    ids = [tokenizer.encode(s, add_bos=True) for s in it["statements"]]
    for i, row in enumerate(ids):
      if len(row) < 2:
        raise ValueError(f"row {i} of {it.get('fact_id')}: {len(row)} "
                         "tokens; need the BOS and at least one scored token")
    groups.append([(row, len(row) - 1) for row in ids])
  return _first_wins(graphdef, params, groups, batch_size,
                     int(tokenizer.vocab_size))


def answer_hits(graphdef: Any, params: Any, tokenizer: Any,
                render: Callable[[Mapping[str, Any]], tuple[list[int],
                                                            list[int]]],
                items: Sequence[Mapping[str, Any]], batch_size: int = 16
                ) -> list[bool]:
  """The ranking probe in question-answer form, for a chat model: per item
  ({"id", "prompt": chat messages, "answers": [true, distractor, ...]},
  e.g. world.tasks.qa_ranking_items), whether the true answer has the
  highest log-likelihood as the reply to the prompt (a tie is a miss).
  render: {"prompt", "response"} -> (prompt ids, response ids), e.g.
  data.sft.ChatRender; only the response ids are scored."""
  groups = []
  for it in items:
    if len(it["answers"]) < 2:
      raise ValueError(f"QA ranking item {it.get('id')}: needs a true answer "
                       "and at least one distractor")
    group = []
    for a in it["answers"]:
      prompt, response = render({"id": it.get("id"), "prompt": it["prompt"],
                                 "response": a})
      group.append((list(prompt) + list(response), len(response)))
    groups.append(group)
  return _first_wins(graphdef, params, groups, batch_size,
                     int(tokenizer.vocab_size))


def per_fact(items: Sequence[Mapping[str, Any]], hits: Sequence[bool]
             ) -> dict[str, dict[str, Any]]:
  """{fact_id: {"relation", "candidates", "hits": [per phrasing]}} (what a
  run's fact_rank.json holds; eval.chain tests it against chance)."""
  out: dict[str, dict[str, Any]] = {}
  for it, hit in zip(items, hits):
    row = out.setdefault(it["fact_id"], {
        "relation": it.get("relation"), "candidates": len(it["statements"]),
        "hits": []})
    if row["candidates"] != len(it["statements"]):
      raise ValueError(f"ranking items for {it['fact_id']}: "
                       f"{row['candidates']} and {len(it['statements'])} "
                       "candidates; every phrasing of a fact ranks the same "
                       "values")
    row["hits"].append(bool(hit))
  return out


def ranking_metrics(facts: Mapping[str, Mapping[str, Any]]
                    ) -> dict[str, float]:
  """fact_rank/accuracy: share of (fact, phrasing) items whose true
  statement scores highest; fact_rank/chance: the mean of 1 / candidates
  over them (what a model without the facts scores on average, up to its
  priors over values); fact_rank/facts_known: share of facts ranked first
  in a majority of their phrasings; fact_rank/items, fact_rank/facts: the
  counts."""
  if not facts:
    return {}
  hits = [h for r in facts.values() for h in r["hits"]]
  chance = [1.0 / r["candidates"] for r in facts.values() for _ in r["hits"]]
  known = [sum(r["hits"]) * 2 > len(r["hits"]) for r in facts.values()]
  return {"fact_rank/accuracy": float(np.mean(hits)),
          "fact_rank/chance": float(np.mean(chance)),
          "fact_rank/facts_known": float(np.mean(known)),
          "fact_rank/items": float(len(hits)),
          "fact_rank/facts": float(len(facts))}


def fact_ranking(graphdef: Any, params: Any, tokenizer: Any,
                 items: Sequence[Mapping[str, Any]], batch_size: int = 32
                 ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
  """(ranking_metrics, per_fact) of `items` (one per fact and phrasing,
  see item_hits)."""
  facts = per_fact(items, item_hits(graphdef, params, tokenizer, items,
                                     batch_size))
  return ranking_metrics(facts), facts
