"""Multi-turn rollouts with tools: token-in, token-out.

A sample is a sequence of assistant turns. When a turn (stopped at the
end-of-turn marker) parses as a tool call (`world.tools.Tool.parse`) and
turns remain, the environment runs the tool and appends an observation
turn, rendered by the chat template (`chat_render.render_continuation`):
the assistant separator, a user turn holding the result, the assistant
prefix. The policy then writes its next turn. Otherwise the turn is the
sample's final answer, which the scorer judges (`Rollout.texts`).

Token-in, token-out: the context of each turn is the ids already held
(the prompt's ids, every sampled id exactly as sampled, every observation's
ids), never a re-tokenization of decoded text, so the learner's rows are
exactly the ids the sampler conditioned on (TRL #5224, verl #3960 are this
going wrong). The row is the left-padded prompt followed by the turns
contiguously (turn 1, observation 1, turn 2, ...) and padding; the loss
mask is 1 on sampled ids only (observation ids are the environment's:
weight 0), so PPO / GRPO / the KL see the policy's tokens alone.

Shapes are fixed by the RolloutConfig: each turn is sampled for every row
(finished rows are wasted work; the batch shape stays fixed so the sampler
compiles once) from contexts left-padded to `context_len`, and the rows
have `seq_len` columns. The exact sampler (RolloutConfig.sampler="exact")
instead samples each turn in the learner's own row layout (the prompt,
then the exchange so far), so its log-probs over a whole exchange equal
the learner's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lifejax.data import prompts as prompts_lib
from lifejax.rl import rollout as rollout_lib
from lifejax.world import tools as tools_lib

Record = rollout_lib.Record


def observation_ids(codec: rollout_lib.Codec, tool: tools_lib.Tool,
                    query: str, limit: int) -> tuple[list[int], bool, str]:
  """(the observation turn's ids for `query`, whether the tool's result
  was cut to fit `limit` ids, the observation's text as the policy sees
  it). The tool runs once; a result is cut at word boundaries."""
  if codec.observation is None:
    raise ValueError("multi-turn rollouts need a Codec with `observation` "
                     "(rollout.chat_codec builds one from the chat template)")
  result = tool(query)
  words = result.split()
  text = tool.observation(query, " ".join(words))
  ids = codec.observation(text)
  cut = False
  while len(ids) > limit and words:
    # Drop about the overflow's share of words at once, at least one.
    excess = len(ids) - limit
    words = words[:max(0, len(words) - max(1, excess // 2))]
    text = tool.observation(query, " ".join(words))
    ids = codec.observation(text)
    cut = True
  if len(ids) > limit:
    raise ValueError(f"RolloutConfig.observation_len={limit} cannot hold an "
                     f"observation turn ({len(ids)} ids with an empty "
                     "result); raise it")
  return ids, cut, text


def build_rows(prompt_BxP: np.ndarray, mask_BxP: np.ndarray,
               response: Sequence[Sequence[int]],
               sampled: Sequence[Sequence[float]], n: int
               ) -> tuple[rollout_lib.Rows, np.ndarray]:
  """LM rows (B, P + n - 1) of left-padded prompts + multi-turn responses
  (ids; `sampled` 1.0 on sampled ids, 0.0 on observation ids), and the
  responses padded to (B, n)."""
  b, p = prompt_BxP.shape
  seq = np.zeros((b, p + n), np.int32)
  seq[:, :p] = prompt_BxP
  real = np.zeros((b, p + n), bool)
  real[:, :p] = np.asarray(mask_BxP) > 0
  loss_mask = np.zeros((b, p + n - 1), np.float32)
  resp_BxN = np.zeros((b, n), np.int32)
  for i, (ids, w) in enumerate(zip(response, sampled)):
    k = len(ids)
    if k > n:
      raise ValueError(f"a response of {k} ids exceeds the {n} columns")
    seq[i, p:p + k] = ids
    resp_BxN[i, :k] = ids
    real[i, p:p + k] = True
    loss_mask[i, p - 1:p - 1 + k] = w
  positions = np.maximum(np.cumsum(real, axis=1) - 1, 0).astype(np.int32)
  return ({"tokens": seq[:, :-1], "targets": seq[:, 1:],
           "loss_mask": loss_mask, "positions": positions[:, :-1],
           "segment_ids": real[:, :-1].astype(np.int32)}, resp_BxN)


def collect(
    records: Sequence[Record],
    *,
    codec: rollout_lib.Codec,
    cfg: rollout_lib.RolloutConfig,
    sample: Callable[[np.ndarray, np.ndarray, jax.Array], Any],
    rng: jax.Array,
    tool: tools_lib.Tool | None,
    group_size: int = 1,
    stats: Callable[[rollout_lib.Rows],
                    tuple[np.ndarray, np.ndarray | None]] | None = None,
    ref_logp: Callable[[rollout_lib.Rows], np.ndarray] | None = None,
    scorer: rollout_lib.Scorer | None = None,
) -> rollout_lib.Rollout:
  """`rollout.collect` with up to cfg.max_turns assistant turns per sample
  and `tool` answering calls between them (None: no tool, every first turn
  is the answer). `sample` draws one turn (cfg.max_new_tokens ids) for
  contexts left-padded to cfg.context_len; turn t uses fold_in(rng, t).
  Rollout.texts are the final answers; Rollout.transcripts the whole
  exchange; turns_B and tool_calls_B count per sample."""
  if codec.decode is None:
    raise ValueError("multi-turn rollouts decode each turn to find tool "
                     "calls: the Codec needs `decode`")
  rows_records, rows, prompt_BxP, mask_BxP = rollout_lib.group_prompts(
      records, codec, cfg.prompt_len, group_size)
  b = len(rows_records)
  context = [list(p) for p in rows]
  response: list[list[int]] = [[] for _ in range(b)]
  sampled: list[list[float]] = [[] for _ in range(b)]
  logp: list[list[float]] = [[] for _ in range(b)]
  transcripts: list[list[dict[str, str]]] = [[] for _ in range(b)]
  final = [""] * b
  done = np.zeros(b, bool)
  stopped = np.zeros(b, bool)
  turns = np.zeros(b, np.int32)
  calls = np.zeros(b, np.int32)
  cut = np.zeros(b, bool)
  stops = set(codec.stop_ids)
  for turn in range(cfg.max_turns):
    if done.all():
      break
    key = jax.random.fold_in(rng, turn)
    if getattr(sample, "takes_prefix", False):
      # The learner's layout (the exact sampler): prompt, then the
      # exchange so far, at the rows' own width.
      prefix = np.zeros((b, max(cfg.response_len, 1)), np.int32)
      for i, ids in enumerate(response):
        prefix[i, :len(ids)] = ids
      drawn = sample(prompt_BxP, mask_BxP, key,
                     prefix=(prefix, np.asarray([len(r) for r in response])),
                     width=cfg.seq_len)
    else:
      ctx_BxC, mask_BxC = prompts_lib.left_pad(context, cfg.context_len,
                                               codec.pad_id)
      drawn = sample(ctx_BxC, mask_BxC, key)
    toks = np.asarray(drawn[0], np.int32)
    lens = np.asarray(drawn[1], np.int32)
    lps = np.asarray(drawn[2], np.float32) if len(drawn) > 2 else None
    for i in np.flatnonzero(~done):
      k = int(lens[i])
      ids = toks[i, :k].tolist()
      response[i] += ids
      sampled[i] += [1.0] * k
      logp[i] += (lps[i, :k].tolist() if lps is not None else [0.0] * k)
      context[i] += ids
      turns[i] += 1
      ended = k > 0 and ids[-1] in stops
      text = codec.decode(ids)
      transcripts[i].append({"role": "assistant", "content": text})
      query = (tool.parse(text) if tool is not None and ended
               and turn < cfg.max_turns - 1 else None)
      if query is None:
        done[i], stopped[i], final[i] = True, ended, text
        continue
      obs, was_cut, obs_text = observation_ids(codec, tool, query,
                                               cfg.observation_len)
      cut[i] |= was_cut
      calls[i] += 1
      response[i] += obs
      sampled[i] += [0.0] * len(obs)
      logp[i] += [0.0] * len(obs)
      context[i] += obs
      transcripts[i].append({"role": "user", "content": obs_text})
  rows, resp_BxN = build_rows(prompt_BxP, mask_BxP, response, sampled,
                              cfg.response_len)
  out = rollout_lib.Rollout(
      records=rows_records, rows=rows, response_BxN=resp_BxN,
      lengths_B=np.asarray([len(r) for r in response], np.int32),
      stopped_B=stopped, texts=final, turns_B=turns, tool_calls_B=calls,
      observation_cut_B=cut, transcripts=transcripts)
  if lps is not None:
    p = cfg.prompt_len
    full = np.zeros(rows["targets"].shape, np.float32)
    for i, lp in enumerate(logp):
      full[i, p - 1:p - 1 + len(lp)] = lp
    out.sample_logp = full * rows["loss_mask"]
  forward_rows = {k: rows[k] for k in rollout_lib.FORWARD_KEYS}
  if stats is not None:
    out.old_logp, out.values = stats(forward_rows)
  if ref_logp is not None:
    out.ref_logp = ref_logp(forward_rows)
  if scorer is not None:
    out.score_B = np.asarray(scorer(out), np.float32)
  return out
