"""Pretraining cells on one world's corpus, raw or curated, with a source mix
(issue 19 rows 6 and 7; imported by experiment.gin here and in
experiments/data_mix).

A seed's base, built once by the first cell that needs it (a file lock
keeps two processes from building it at once), in <base_root>/seed<k>:

  world/               the embedded world of that seed (generator.py)
  heldout/<source>.jsonl   every HOLDOUT_EVERY-th clean document of each
                       pretraining source: nothing trains on these
  input/<source>.jsonl the rest of the raw corpus, without the held-out
                       documents and without any planted copy of them
                       (`dup_of`), so no arm sees a held-out text
  curated/             run_curation(input) with the embedded world's config
                       (decontamination against the fact questions)
  curated_no_decontam/ the same with decontamination off
  tokenizer.model      one SentencePiece model, trained on curated/: every
                       arm of a seed reads its text with the same pieces, so
                       per-token losses compare across arms

A cell pretrains the `corpus` arm ("raw", "curated", "curated_no_decontam")
into <root>/pretrain with per-document sampling weights that give each
source its natural token share times `source_weights` (the lifecycle's
curriculum rule), then writes <root>/cell_eval.json:

  heldout/<source>/loss     nats per token on the held-out documents
  facts/<group>/<format>    mean answer loss (nats per answer token) of the
                            world's held-out fact questions, given the
                            question: groups "leaked" (quoted on a planted
                            contamination page) and "clean"; formats "probe"
                            (the fact probe's "Question: q\\nAnswer: a") and
                            "verbatim" (the leak's own "Q: q A: a.")
  facts/<group>/mc_acc      multiple choice: the share of questions whose
                            true answer has the highest log-probability
                            among MC_CHOICES values of the same relation
                            (facts.jsonl), probe format; facts/<group>/
                            mc_chance the mean 1 / number of choices
  fact_probe_accuracy       the lifecycle's greedy fact probe (all questions)
  train/contamination_pages, train/leaked_questions   what the arm's
                            training files still hold of the planted leaks
  task/<task>/loss          answer loss of the world's test instructions per
                            task, given the prompt in the lifejax template
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import sharding
from lifejax.curation import run_curation
from lifejax.curation.config import embedded_world_config
from lifejax.curation.decontam import DecontamConfig
from lifejax.data import chat, files, prompts
from lifejax.data import tokenizer as tok_lib
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.data.packing import split_document
from lifejax.eval import generation, instruct, stage_eval
from lifejax.losses import common
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.stages.pretrain import pretrain
from lifejax.world import generator

SOURCES = ("wiki", "support_chat", "records", "mail", "web")
CORPORA = ("raw", "curated", "curated_no_decontam")
HOLDOUT_EVERY = 10
PRETRAIN_DIR = "pretrain"
CELL_EVAL = "cell_eval.json"
EVAL_SEQ_LEN = 256
EVAL_BATCH = 16
# Fact-question rows (prompt + answer) are short: a second, cheaper shape.
FACT_SEQ_LEN = 64
MC_CHOICES = 8


def _lock_build(path: str, build) -> None:
  os.makedirs(path, exist_ok=True)
  done = os.path.join(path, ".done")
  if os.path.exists(done):
    return
  with open(os.path.join(path, ".build.lock"), "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(done):
      build()
      with open(done, "w", encoding="utf-8") as f:
        f.write("ok\n")


def split_heldout(docs: Sequence[Mapping[str, Any]], every: int
                  ) -> tuple[list[dict], list[dict]]:
  """(train, heldout) of one source's raw documents: every `every`-th clean
  document (no planted defect) is held out; a planted copy of a held-out
  document (its `dup_of`) is dropped from train too."""
  if every < 2:
    raise ValueError(f"holdout_every must be >= 2, got {every}")
  clean = [d for d in docs if not d.get("defects")]
  held = {d["id"] for i, d in enumerate(clean) if i % every == every // 2}
  heldout = [dict(d) for d in docs if d["id"] in held]
  train = [dict(d) for d in docs
           if d["id"] not in held and d.get("dup_of") not in held]
  return train, heldout


def _build_base(base: str, seed: int, world_scale: float, every: int,
                vocab_size: int) -> None:
  world = os.path.join(base, "world")
  if not os.path.exists(os.path.join(world, "manifest.json")):
    generator.generate_world(world, seed=seed, scale=world_scale)
  docs = {s: read_jsonl(os.path.join(world, "corpus", f"{s}.jsonl"))
          for s in SOURCES}
  # Copies live in `web` but point at originals of any source.
  held_ids: set[str] = set()
  split = {}
  for s in SOURCES:
    train, held = split_heldout(docs[s], every)
    held_ids |= {d["id"] for d in held}
    split[s] = (train, held)
  for s in SOURCES:
    train, held = split[s]
    train = [d for d in train if d.get("dup_of") not in held_ids]
    write_jsonl(os.path.join(base, "input", f"{s}.jsonl"), train)
    write_jsonl(os.path.join(base, "heldout", f"{s}.jsonl"), held)
  questions = os.path.join(world, "eval", "fact_questions.jsonl")
  cfg = embedded_world_config()
  off = dataclasses.replace(cfg, decontam=DecontamConfig(enabled=False))
  for name, c in (("curated", cfg), ("curated_no_decontam", off)):
    run_curation(os.path.join(base, "input"), os.path.join(base, name), c,
                 eval_sets={"fact_questions": questions}, num_workers=1,
                 overwrite=True)
  curated = [p for s in SOURCES for p in _corpus_files(base, "curated", s)]
  tok_lib.train_sentencepiece(
      files.texts([files.source_from_path(p) for p in curated], "text"),
      os.path.join(base, "tokenizer"), vocab_size=vocab_size)


def ensure_base(base_root: str, seed: int, world_scale: float, every: int,
                vocab_size: int) -> str:
  base = os.path.join(base_root, f"seed{seed}")
  _lock_build(base, lambda: _build_base(base, seed, world_scale, every,
                                        vocab_size))
  return base


def _corpus_files(base: str, corpus: str, source: str) -> list[str]:
  if corpus == "raw":
    return [os.path.join(base, "input", f"{source}.jsonl")]
  d = os.path.join(base, corpus, source)
  out = sorted(os.path.join(d, f) for f in os.listdir(d)
               if f.endswith(".jsonl")) if os.path.isdir(d) else []
  return out


def mix_weights(files_by_source: Mapping[str, Sequence[str]],
                source_weights: Mapping[str, float],
                equal_shares: bool = False
                ) -> tuple[list[str], list[float], dict[str, float]]:
  """Per-file document weights whose token shares are each source's natural
  word share times its weight (renormalized), as the lifecycle's
  curriculum sets them, or (equal_shares) the same share for every source
  times its weight; also {source: intended word share}."""
  unknown = sorted(set(source_weights) - set(files_by_source))
  if unknown:
    raise ValueError(f"source_weights: {unknown} are not sources "
                     f"{sorted(files_by_source)}")
  bad = {k: v for k, v in source_weights.items() if not v > 0}
  if bad:
    raise ValueError(f"source_weights: weights must be > 0, got {bad}")
  stats = {}
  for s, paths in files_by_source.items():
    docs = words = 0
    for p in paths:
      for r in read_jsonl(p):
        docs += 1
        words += len(r["text"].split())
    if not docs:
      raise ValueError(f"no documents for source {s!r} in {list(paths)}")
    stats[s] = (docs, words)
  raw = {s: source_weights.get(s, 1.0) * (1.0 if equal_shares else w)
         for s, (_, w) in stats.items()}
  total = sum(raw.values())
  shares = {s: v / total for s, v in raw.items()}
  out_files, w = [], []
  for s, paths in files_by_source.items():
    docs, words = stats[s]
    for p in paths:
      out_files.append(p)
      w.append(shares[s] * docs / words / len(paths))
  tw = sum(w)
  return out_files, [x / tw for x in w], shares


def _answer_rows(tokenizer, pairs: Sequence[tuple[list[int], str]],
                 seq_len: int, eos: bool = True
                 ) -> list[dict[str, np.ndarray]]:
  """LM rows scoring only the answer tokens (and EOS unless `eos` is False)
  after each prompt; a prompt is cut from the left to fit."""
  rows = []
  for prompt, answer in pairs:
    ans = tokenizer.encode(answer) + [tokenizer.eos_id] * eos
    ids = (list(prompt) + ans)[-(seq_len + 1):]
    n = len(ids) - 1
    pad = seq_len - n
    mask = np.zeros(seq_len, np.float32)
    mask[max(0, n - len(ans)):n] = 1.0
    rows.append({
        "tokens": np.pad(np.asarray(ids[:-1], np.int32), (0, pad)),
        "targets": np.pad(np.asarray(ids[1:], np.int32), (0, pad)),
        "loss_mask": mask,
        "segment_ids": np.pad(np.ones(n, np.int32), (0, pad)),
        "positions": np.pad(np.arange(n, dtype=np.int32), (0, pad))})
  return rows


def _batches(rows: list[dict[str, np.ndarray]], batch_size: int):
  for i in range(0, len(rows), batch_size):
    chunk = rows[i:i + batch_size]
    pad = batch_size - len(chunk)
    batch = {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def mc_choices(question: Mapping[str, Any], values: Sequence[str],
               k: int = MC_CHOICES) -> list[str]:
  """The true answer first, then up to k - 1 other distinct `values` of its
  relation, drawn by the question id (the same choices in every arm)."""
  others = sorted({v for v in values if v != question["answer"]})
  rng = random.Random(question["id"])
  return [question["answer"]] + rng.sample(others, min(k - 1, len(others)))


def mc_accuracy(scores: Sequence[Sequence[float]]) -> float:
  """Share of rows whose first entry (the true answer) is the strict
  maximum (a tie counts as wrong)."""
  return float(np.mean([s[0] > max(s[1:]) if len(s) > 1 else False
                        for s in scores]))


def _doc_rows(tokenizer, texts: Sequence[str], seq_len: int
              ) -> list[dict[str, np.ndarray]]:
  """Every next-token pair of [BOS] + text + [EOS] of each text, in rows of
  at most seq_len pairs (packing.split_document's pieces), all scored."""
  rows = []
  for text in texts:
    ids = tokenizer.encode(text, add_bos=True, add_eos=True)
    for piece in split_document(ids, seq_len):
      n = len(piece) - 1
      pad = seq_len - n
      rows.append({
          "tokens": np.pad(piece[:-1], (0, pad)),
          "targets": np.pad(piece[1:], (0, pad)),
          "loss_mask": np.pad(np.ones(n, np.float32), (0, pad)),
          "segment_ids": np.pad(np.ones(n, np.int32), (0, pad)),
          "positions": np.pad(np.arange(n, dtype=np.int32), (0, pad))})
  return rows


class RowScorer:
  """Summed log-probability and scored-token count of LM rows, (N,) each:
  one jitted forward pass (compiled once per row length) for every
  measurement of a cell."""

  def __init__(self, graphdef: Any, params: Any):
    self.params = sharding.fetch(params)
    self.fn = jax.jit(lambda p, b: common.sequence_logprobs(
        common.model_forward(graphdef, p, b), b["targets"], b["loss_mask"]))

  def __call__(self, rows: list[dict[str, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray]:
    logp, count = [], []
    for b in _batches(rows, EVAL_BATCH):
      lp, c = self.fn(self.params, b)
      logp.append(np.asarray(lp, np.float64))
      count.append(np.asarray(c, np.float64))
    n = len(rows)
    return np.concatenate(logp)[:n], np.concatenate(count)[:n]

  def loss(self, rows: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """(nats per scored token, scored tokens) over all rows."""
    logp, count = self(rows)
    return float(-logp.sum() / count.sum()), float(count.sum())


def evaluate_cell(run_dir: str, base: str, model: TransformerConfig,
                  mesh_cfg: sharding.MeshConfig, tokenizer_path: str,
                  probe: bool = True) -> dict[str, float]:
  """The metrics of the module docstring for the pretrain run `run_dir`."""
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, params = artifacts.load_params(
      run_dir, transformer.Transformer, model, mesh, mesh_cfg.rules)
  tokenizer = tok_lib.load_tokenizer(tokenizer_path)
  score = RowScorer(graphdef, params)
  out: dict[str, float] = {}
  for s in SOURCES:
    docs = read_jsonl(os.path.join(base, "heldout", f"{s}.jsonl"))
    out[f"heldout/{s}/loss"], out[f"heldout/{s}/tokens"] = score.loss(
        _doc_rows(tokenizer, [d["text"] for d in docs], EVAL_SEQ_LEN))

  world = os.path.join(base, "world")
  questions = read_jsonl(os.path.join(world, "eval", "fact_questions.jsonl"))
  leaked = {q for d in read_jsonl(os.path.join(world, "corpus", "web.jsonl"))
            for q in d.get("leaks", ())}
  groups = {"leaked": [q for q in questions if q["id"] in leaked],
            "clean": [q for q in questions if q["id"] not in leaked]}
  formats = {
      "probe": lambda q: (tokenizer.encode(
          f"Question: {q['question']}\nAnswer:", add_bos=True),
          " " + q["answer"]),
      "verbatim": lambda q: (tokenizer.encode(
          f"Q: {q['question']} A:", add_bos=True), " " + q["answer"] + "."),
  }
  for g, qs in groups.items():
    out[f"facts/{g}/count"] = float(len(qs))
    for fmt, make in formats.items():
      if qs:
        out[f"facts/{g}/{fmt}"], out[f"facts/{g}/{fmt}_tokens"] = score.loss(
            _answer_rows(tokenizer, [make(q) for q in qs], FACT_SEQ_LEN))
  # Multiple choice: summed log-probability of each candidate's tokens.
  values: dict[str, list[str]] = {}
  for f in read_jsonl(os.path.join(world, "facts", "facts.jsonl")):
    values.setdefault(f["relation"], []).append(str(f["value"]))
  choices = [mc_choices(q, values[q["relation"]]) for q in questions]
  pairs = [(tokenizer.encode(f"Question: {q['question']}\nAnswer:",
                             add_bos=True), " " + c)
           for q, cs in zip(questions, choices) for c in cs]
  logps, _ = score(_answer_rows(tokenizer, pairs, FACT_SEQ_LEN, eos=False))
  scores, k = [], 0
  for cs in choices:
    scores.append(logps[k:k + len(cs)].tolist())
    k += len(cs)
  per_q = {q["id"]: {"group": "leaked" if q["id"] in leaked else "clean",
                     "choices": cs, "logp": sc}
           for q, cs, sc in zip(questions, choices, scores)}
  with open(os.path.join(os.path.dirname(run_dir), "mc_probe.json"), "w",
            encoding="utf-8") as f:
    json.dump(per_q, f)
  for g in groups:
    sc = [v["logp"] for v in per_q.values() if v["group"] == g]
    if sc:
      out[f"facts/{g}/mc_acc"] = mc_accuracy(sc)
      out[f"facts/{g}/mc_chance"] = float(np.mean([1 / len(s) for s in sc]))
  template = chat.get_template("lifejax")
  tests = read_jsonl(os.path.join(world, "instructions", "test.jsonl"))
  by_task: dict[str, list] = {}
  for r in tests:
    by_task.setdefault(r["task"], []).append(
        (prompts.prompt_ids(template, tokenizer, r),
         r["messages"][-1]["content"]))
  for task, pairs in sorted(by_task.items()):
    out[f"task/{task}/loss"], out[f"task/{task}/tokens"] = score.loss(
        _answer_rows(tokenizer, pairs, EVAL_SEQ_LEN))
  if probe:
    gen = generation.make_generate(graphdef, score.params,
                                   generation.greedy_config(
                                       tokenizer, [tokenizer.eos_id], 12))
    out["fact_probe_accuracy"] = stage_eval.fact_probe(
        gen, tokenizer, questions, instruct.GenerationSpec(
            prompt_len=EVAL_SEQ_LEN, batch_size=EVAL_BATCH))
  return out


def leaks_in(train_files: Sequence[str], raw_web: str) -> dict[str, float]:
  """How many planted contamination pages (by id) the training files hold,
  and how many distinct fact questions they quote."""
  pages = {d["id"]: d["leaks"] for d in read_jsonl(raw_web) if d.get("leaks")}
  kept = {r["id"] for p in train_files for r in read_jsonl(p)} & set(pages)
  return {"train/contamination_pages": float(len(kept)),
          "train/leaked_questions": float(len({q for i in kept
                                               for q in pages[i]}))}


@gin.configurable
def curation_cell(root: str = gin.REQUIRED, seed: int = 0,
                  corpus: str = "curated",
                  source_weights: Mapping[str, float] | None = None,
                  model: TransformerConfig = gin.REQUIRED,
                  mesh: sharding.MeshConfig = sharding.MeshConfig(),
                  base_root: str | None = None, world_scale: float = 1.0,
                  holdout_every: int = HOLDOUT_EVERY,
                  fact_probe: bool = True,
                  equal_shares: bool = False) -> dict[str, Any]:
  """Ensures the seed's base, pretrains the arm into `root`/pretrain and
  evaluates it (module docstring); returns the metrics.

  source_weights: {source: weight} multiplying its share (1 for the
  others); equal_shares: start from equal shares instead of the natural
  word shares (the uniform mix)."""
  if corpus not in CORPORA:
    raise ValueError(f"curation_cell.corpus: {corpus!r} is not one of "
                     f"{CORPORA}")
  base_root = base_root or os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(root))), "base")
  base = ensure_base(base_root, seed, world_scale, holdout_every,
                     model.vocab_size)
  train_files, weights, shares = mix_weights(
      {s: _corpus_files(base, corpus, s) for s in SOURCES},
      dict(source_weights or {}), equal_shares)
  tokenizer_path = os.path.join(base, "tokenizer.model")
  run_dir = os.path.join(root, PRETRAIN_DIR)
  with gin.config_scope("pretrain"):
    pretrain(run_dir=run_dir, model=model, train_files=train_files,
             source_weights=weights, tokenizer_path=tokenizer_path,
             eval_files=[os.path.join(base, "heldout", f"{s}.jsonl")
                         for s in SOURCES], seed=seed, mesh=mesh)
  out = evaluate_cell(run_dir, base, model, mesh, tokenizer_path,
                      probe=fact_probe)
  out.update({f"share/{s}": v for s, v in shares.items()})
  out.update(leaks_in(train_files, os.path.join(base, "input", "web.jsonl")))
  with open(os.path.join(root, CELL_EVAL), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  return out
