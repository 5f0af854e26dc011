"""lm-evaluation-harness adapter: a lifejax run (or a HF checkpoint
directory) as the lm-eval model "lifejax".

  LifejaxLM        lm_eval.api.model.LM over a run's LM: loglikelihood,
                   loglikelihood_rolling, generate_until
  evaluate_tasks   local YAML tasks (an include_path) through
                   lm_eval.simple_evaluate -> lm-eval's results dict
  flat_metrics     those results as {"lm_eval/<task>/<metric>": float}

Importing this module registers the model, so after
`import lifejax.eval.lm_eval_adapter`, `lm_eval.simple_evaluate(
model="lifejax", model_args="pretrained=<run or HF dir>,batch_size=8", ...)`
works. lm-eval is the optional "eval" extra; nothing else in lifejax
imports this module at import time.

Conventions:

* Every context starts with the prefix token: BOS when the tokenizer has one
  (lifejax documents are trained as [BOS] text [EOS], and Llama-style HF
  tokenizers add BOS too), else EOS for an empty context only (lm-eval's
  convention). `add_bos=False` turns the BOS off. loglikelihood_rolling
  conditions the first token on the same prefix.
* Context/continuation split: lm-eval's causal convention, "encode the
  whole, then split". Trailing whitespace of the context moves to the
  continuation (word-initial pieces carry their space, "▁Paris", so the cut
  falls on a piece boundary); the whole text is encoded and the first
  len(encode(context)) ids are the context. That scores the continuation
  in the segmentation the model sees for the whole string. When encode(
  context) is not a prefix of the whole encoding (a piece crosses the cut,
  e.g. context "hel", continuation "lo"), the continuation is encoded on its
  own instead, so its ids always decode to exactly its text (with lifejax's
  tokenizers, which round-trip exactly) and never borrow context text.
* Log-probabilities are over the model's whole vocabulary (the
  distribution it was trained with); is_greedy and generation argmax only
  over the tokenizer's ids (a model may have more rows than its tokenizer
  has pieces, and those rows are untrained: see SamplingConfig.vocab_limit).
* Inputs longer than max_length keep their last max_length tokens (the
  context loses its start); a continuation longer than max_length is an
  error. loglikelihood_rolling cuts a document into lm-eval's disjoint
  windows (lm_eval.utils.get_rolling_token_windows with context_len=1): the
  first window predicts up to max_length tokens from the prefix, each later
  one up to max_length more, the last one with a full-length context.
* Shapes: rows are right-padded to the smallest of a few bucket lengths
  (powers of two up to max_length, and max_length) and scored in batches of
  exactly batch_size rows, so the scorer compiles once per bucket used.
  generate_until runs the lifejax sampler (`generation.generate_ids`:
  left-padded prompts, greedy, stops at EOS) with prompts padded to the same
  buckets (at most max_length - max_gen_toks), then cuts the text at the
  first `until` string; one compilation per (bucket, max_gen_toks).
* One process: lm-eval's rank/world_size stay 0/1; a model bigger than one
  device is sharded over `mesh` like any lifejax eval.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lifejax import sharding
from lifejax.eval import generation, knowledge
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir

MODEL_NAME = "lifejax"
# Padded row lengths; those over max_length are dropped and max_length added.
DEFAULT_BUCKETS = tuple(2 ** k for k in range(6, 16))
# Generation options that are no-ops under greedy decoding.
_GREEDY_NOOPS = ("top_k", "top_p")


_target_logprobs = knowledge.target_logprobs


def bucket_lengths(max_length: int, buckets: Sequence[int] | None = None
                   ) -> tuple[int, ...]:
  """The sorted bucket lengths <= max_length, max_length included."""
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  kept = {int(b) for b in (buckets or DEFAULT_BUCKETS) if 0 < b < max_length}
  return tuple(sorted(kept | {max_length}))


def _bucket(n: int, lengths: Sequence[int]) -> int:
  """The smallest bucket length >= n (n <= lengths[-1])."""
  return lengths[bisect.bisect_left(lengths, n)]


def _parse_buckets(buckets: Sequence[int] | str | None
                   ) -> tuple[int, ...] | None:
  """Buckets from Python or from an lm-eval arg string ("64:128:256")."""
  if isinstance(buckets, str):
    return tuple(int(b) for b in buckets.split(":") if b)
  if isinstance(buckets, int):
    return (buckets,)
  return tuple(buckets) if buckets else None


@register_model(MODEL_NAME)
class LifejaxLM(LM):
  """A lifejax LM as an lm-eval model.

  pretrained: a lifejax run directory (an RL run's exported policy/ if it
    has one), a policy directory, or a HF checkpoint directory.
  tokenizer: where the tokenizer comes from (default: `pretrained`; the
    lifecycle passes SFT's run, as its release eval does).
  model: the TransformerConfig to build (default: the one the run or HF
    config records; dtypes and kernels may differ, shapes may not).
  max_length: longest row the model sees (default model.max_seq_len, or
    its sliding_window if smaller).
  buckets: padded row lengths (Python sequence or "64:128:256").
  add_bos: start every context with BOS (default: if the tokenizer has one).
  best: load the run's best checkpoint instead of its latest.
  mesh: where the params go (default one device).
  """

  def __init__(self, pretrained: str, tokenizer: str | None = None,
               model: TransformerConfig | None = None,
               batch_size: int | str = 8, max_length: int | None = None,
               max_gen_toks: int = 256,
               buckets: Sequence[int] | str | None = None,
               add_bos: bool | None = None, best: bool = False,
               mesh: sharding.MeshConfig | None = None,
               device: str | None = None, max_batch_size: int | None = None):
    super().__init__()
    # lm-eval's CLI fills these in for torch models; here they would be
    # silently ignored, so they are refused.
    if device is not None:
      raise ValueError(f"LifejaxLM: device={device!r} is a torch option; "
                       "lifejax places the model with `mesh`")
    if max_batch_size is not None:
      raise ValueError("LifejaxLM: max_batch_size (automatic batch sizing) "
                       "is not supported; pass batch_size")
    try:
      self.batch_size = int(batch_size)
    except ValueError:
      raise ValueError(f"LifejaxLM: batch_size={batch_size!r}: expected an "
                       "integer ('auto' is not supported)") from None
    if self.batch_size < 1:
      raise ValueError(f"LifejaxLM: batch_size must be >= 1, got "
                       f"{batch_size}")
    path = str(pretrained)
    self.path = (path if artifacts.is_hf_dir(path)
                 else RunDir(path).lm_run().root)
    self.cfg = model or artifacts.load_model_config(self.path)
    limit = self.cfg.max_seq_len
    if self.cfg.sliding_window is not None:
      limit = min(limit, self.cfg.sliding_window)
    self.max_length = int(max_length or limit)
    self.max_gen_toks = int(max_gen_toks)
    self.buckets = bucket_lengths(self.max_length, _parse_buckets(buckets))
    self.tok = artifacts.load_tokenizer(tokenizer or self.path)
    bos, eos = self.tok.bos_id, self.tok.eos_id
    self.add_bos = bos is not None if add_bos is None else bool(add_bos)
    if self.add_bos and bos is None:
      raise ValueError(f"LifejaxLM: add_bos=True but {self.tok!r} has no "
                       "BOS token")
    self.prefix_id = bos if self.add_bos else eos
    self.vocab_limit = min(self.tok.vocab_size, self.cfg.vocab_size)
    mesh_cfg = mesh or sharding.MeshConfig(data=1, fsdp=1, model=1)
    self.graphdef, self.params = artifacts.load_params(
        self.path, transformer.Transformer, self.cfg,
        sharding.make_mesh(mesh_cfg), mesh_cfg.rules, best=best)

  # -- tokenization --------------------------------------------------------

  def _prefix(self) -> list[int]:
    if self.prefix_id is None:
      raise ValueError(f"{self.tok!r} has neither BOS nor EOS to condition "
                       "an empty context on")
    return [self.prefix_id]

  def encode_pair(self, context: str, continuation: str
                  ) -> tuple[list[int], list[int]]:
    """(context ids with the prefix token, continuation ids): see the
    module docstring, "Context/continuation split"."""
    n = len(context) - len(context.rstrip())
    if n:
      context, continuation = context[:-n], context[-n:] + continuation
    if not context:
      return self._prefix(), self.tok.encode(continuation)
    head = self.tok.encode(context)
    whole = self.tok.encode(context + continuation)
    cont = (whole[len(head):] if whole[:len(head)] == head
            else self.tok.encode(continuation))
    return (self._prefix() if self.add_bos else []) + head, cont

  # -- scoring -------------------------------------------------------------

  def score_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
                   ) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether every continuation
    token is the greedy choice) per (context ids, continuation ids) pair;
    contexts must be non-empty. Rows over max_length + 1 tokens keep their
    end."""
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    scored, rows = [], []
    for i, (ctx, cont) in enumerate(pairs):
      if not cont:
        continue
      if not ctx:
        raise ValueError(f"request {i}: empty context ids")
      if len(cont) > self.max_length:
        raise ValueError(f"request {i}: a continuation of {len(cont)} "
                         f"tokens exceeds max_length={self.max_length}")
      scored.append(i)
      rows.append(((list(ctx) + list(cont))[-(self.max_length + 1):],
                   len(cont)))
    results = knowledge.continuation_logprobs(
        self.graphdef, self.params, rows, self.batch_size, self.vocab_limit,
        lambda n: _bucket(n, self.buckets))
    for i, res in zip(scored, results):
      out[i] = res
    return out

  def loglikelihood(self, requests: Sequence[Any]
                    ) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is_greedy) per request; args are
    (context, continuation)."""
    args = [req.args for req in requests]
    results = self.score_tokens([self.encode_pair(c, x) for c, x in args])
    for a, res in zip(args, results):
      self.cache_hook.add_partial("loglikelihood", a, res)
    return results

  def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
    """log p(document | prefix token) per request (args: (text,)), in
    lm-eval's disjoint max_length windows."""
    owners, pairs = [], []
    for i, req in enumerate(requests):
      ids = self.tok.encode(req.args[0])
      windows = lm_utils.get_rolling_token_windows(
          token_list=ids, prefix_token=self._prefix()[0],
          max_seq_len=self.max_length, context_len=1)
      for w in windows:
        pairs.append(lm_utils.make_disjoint_window(w))
        owners.append(i)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owners, self.score_tokens(pairs)):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # -- generation ----------------------------------------------------------

  def _gen_options(self, kwargs: Mapping[str, Any]
                   ) -> tuple[list[str], int]:
    """(until strings, max new tokens) of a request's gen_kwargs; anything
    but greedy decoding is refused."""
    kw = dict(kwargs or {})
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
    if kw.pop("do_sample", False):
      raise ValueError("LifejaxLM.generate_until: do_sample=True is not "
                       "supported (greedy decoding only)")
    if float(kw.pop("temperature", 0.0) or 0.0) != 0.0:
      raise ValueError("LifejaxLM.generate_until: temperature > 0 is not "
                       "supported (greedy decoding only)")
    for k in _GREEDY_NOOPS:
      kw.pop(k, None)
    if kw:
      raise ValueError(f"LifejaxLM.generate_until: unsupported gen_kwargs "
                       f"{sorted(kw)}")
    if not 0 < max_new < self.max_length:
      raise ValueError(f"LifejaxLM.generate_until: max_gen_toks={max_new} "
                       f"must be in [1, max_length={self.max_length})")
    return [u for u in until if u], max_new

  def generate_until(self, requests: Sequence[Any]) -> list[str]:
    """Greedy continuation text per request (args: (context, gen_kwargs)),
    cut before the first `until` string; stops at EOS or max_gen_toks."""
    out = [""] * len(requests)
    groups: dict[tuple[int, int], list[tuple[int, list[int], list[str]]]] = {}
    for i, req in enumerate(requests):
      context, kwargs = req.args
      until, max_new = self._gen_options(kwargs)
      ids = ((self._prefix() if self.add_bos or not context else [])
             + self.tok.encode(context))
      cap = self.max_length - max_new
      lengths = bucket_lengths(cap, self.buckets)
      prompt_len = _bucket(min(len(ids), cap), lengths)
      groups.setdefault((max_new, prompt_len), []).append((i, ids, until))
    stops = () if self.tok.eos_id is None else (self.tok.eos_id,)
    for (max_new, prompt_len), rows in sorted(groups.items()):
      gen = generation.make_generate(
          self.graphdef, self.params,
          generation.greedy_config(self.tok, stops, max_new))
      toks, lens = generation.generate_ids(
          gen, [ids for _, ids, _ in rows], prompt_len, self.batch_size,
          self.tok.pad_id)
      for r, (i, _, until) in enumerate(rows):
        text = self.tok.decode([int(t) for t in toks[r, :lens[r]]])
        cuts = [text.find(u) for u in until if u in text]
        out[i] = text[:min(cuts)] if cuts else text
        self.cache_hook.add_partial("generate_until", requests[i].args,
                                    out[i])
    return out


def check_tasks(tasks: Sequence[str], include_path: str) -> Any:
  """The lm-eval TaskManager of the YAML tasks under `include_path`
  (lm-eval's own task library is not indexed: its tasks download data);
  ValueError if `tasks` is empty or names a task it does not define."""
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  if not tasks:
    raise ValueError("no lm-eval tasks given")
  manager = TaskManager(include_path=include_path, include_defaults=False)
  missing = sorted(set(tasks) - set(manager.all_tasks))
  if missing:
    raise ValueError(f"lm-eval tasks {missing} are not defined under "
                     f"{include_path} (found: {manager.all_tasks})")
  return manager


def evaluate_tasks(pretrained: str, tasks: Sequence[str], include_path: str,
                   *, limit: int | None = None, num_fewshot: int | None = None,
                   log_samples: bool = False, **model_kwargs: Any
                   ) -> dict[str, Any]:
  """lm-eval's results dict ({"results": {task: {"metric,filter": value}},
  ...}) of local YAML `tasks` under `include_path` (see check_tasks), run
  by lm_eval.simple_evaluate (with each document's requests and responses
  under "samples" if `log_samples`). Model options go to LifejaxLM."""
  import lm_eval  # pylint: disable=g-import-not-at-top
  manager = check_tasks(tasks, include_path)  # before the params load
  return lm_eval.simple_evaluate(
      model=LifejaxLM(pretrained, **model_kwargs), tasks=list(tasks),
      task_manager=manager, limit=limit, num_fewshot=num_fewshot,
      bootstrap_iters=0, log_samples=log_samples,
      torch_random_seed=None)  # nothing here samples with torch


def flat_metrics(results: Mapping[str, Any]) -> dict[str, float]:
  """{"lm_eval/<task>/<metric>": value} of lm-eval's results: numeric
  metrics only; lm-eval's "metric,filter" key becomes "metric" for the
  default "none" filter, else "metric/filter"."""
  out: dict[str, float] = {}
  for task, metrics in results["results"].items():
    for key, value in metrics.items():
      if "," not in key or isinstance(value, bool) or not isinstance(
          value, (int, float)):
        continue
      metric, filt = key.split(",", 1)
      name = metric if filt == "none" else f"{metric}/{filt}"
      out[f"lm_eval/{task}/{name}"] = float(value)
  return out
