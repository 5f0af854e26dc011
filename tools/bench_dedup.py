"""Benchmark: lifejax's vectorized MinHash LSH vs datasketch, same parameters.

Both sides get the same documents, the same shingles (word 5-grams of
`hashing.canonical_words`), 112 permutations and 14 bands x 8 rows, and run in
one process. Timed: text -> signatures -> LSH buckets -> candidate pairs (for
lifejax also the connected components). Quality: on a sample, every pair's
exact shingle Jaccard is computed by brute force; a pair is a true
near-duplicate if its Jaccard >= --truth_jaccard, and each method's
candidate pairs (sharing at least one band) are scored against that.

  python tools/bench_dedup.py                  # generated corpus, 10k docs
  python tools/bench_dedup.py --corpus DIR     # JSONL files ({"text": ...})
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import scipy.sparse

from lifejax.curation import hashing, minhash


def generated_corpus(num_docs: int, seed: int) -> list[str]:
  """Zipfian word soup; ~25% of documents are edited copies of earlier ones
  (0-15% of words substituted, so copies straddle the LSH threshold)."""
  rng = random.Random(seed)
  vocab = [f"w{i:05d}" for i in range(20000)]
  weights = [1.0 / (r + 1) for r in range(len(vocab))]
  docs: list[list[str]] = []
  while len(docs) < num_docs:
    if docs and rng.random() < 0.25:
      copy = list(rng.choice(docs))
      for i in rng.sample(range(len(copy)), int(len(copy) *
                                                rng.uniform(0, 0.15))):
        copy[i] = rng.choices(vocab, weights)[0]
      docs.append(copy)
    else:
      docs.append(rng.choices(vocab, weights, k=rng.randint(150, 450)))
  return [" ".join(d) for d in docs]


def jsonl_corpus(path: Path, limit: int) -> list[str]:
  texts = []
  for f in sorted(path.rglob("*.jsonl")):
    for line in f.open(encoding="utf-8"):
      if len(texts) >= limit:
        return texts
      record = json.loads(line)
      if isinstance(record.get("text"), str):
        texts.append(record["text"])
  return texts


def run_lifejax(texts: list[str], cfg: minhash.MinHashConfig):
  start = time.perf_counter()
  sig = minhash.signatures(texts, cfg)
  keys = minhash.band_keys(sig, cfg)
  u, v = minhash.star_edges(keys)
  minhash.connected_components(len(texts), u, v)
  return time.perf_counter() - start, keys


def run_datasketch(texts: list[str], cfg: minhash.MinHashConfig):
  from datasketch import MinHash, MinHashLSH  # benchmark-only dependency
  start = time.perf_counter()
  lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
  sketches = []
  for i, text in enumerate(texts):
    words = hashing.canonical_words(text)
    n = cfg.ngram
    shingles = ([" ".join(words[j:j + n]).encode()
                 for j in range(len(words) - n + 1)] or
                [" ".join(words).encode()])
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch(shingles)
    lsh.insert(i, m)
    sketches.append(m)
  pairs = set()
  for i, m in enumerate(sketches):
    for j in lsh.query(m):
      if j != i:
        pairs.add((min(i, j), max(i, j)))
  return time.perf_counter() - start, pairs


def exact_pairs(texts: list[str], n: int, threshold: float) -> set:
  """Brute force: all pairs with shingle Jaccard >= threshold."""
  vocab: dict[tuple[str, ...], int] = {}
  rows, cols = [], []
  for d, text in enumerate(texts):
    words = hashing.canonical_words(text)
    grams = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    for g in grams:
      rows.append(d)
      cols.append(vocab.setdefault(g, len(vocab)))
  x = scipy.sparse.csr_matrix((np.ones(len(rows), dtype=np.float32),
                               (rows, cols)), shape=(len(texts), len(vocab)))
  sizes = np.asarray(x.sum(axis=1)).ravel()
  inter = (x @ x.T).tocoo()
  keep = inter.row < inter.col
  r, c, k = inter.row[keep], inter.col[keep], inter.data[keep]
  jac = k / (sizes[r] + sizes[c] - k)
  return {(int(a), int(b)) for a, b in zip(r[jac >= threshold],
                                           c[jac >= threshold])}


def score(pred: set, truth: set) -> tuple[float, float]:
  tp = len(pred & truth)
  return (tp / len(pred) if pred else 1.0,
          tp / len(truth) if truth else 1.0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_docs", type=int, default=10000)
  parser.add_argument("--corpus", type=Path, default=None)
  parser.add_argument("--sample", type=int, default=3000)
  parser.add_argument("--truth_jaccard", type=float, default=0.75)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  texts = (jsonl_corpus(args.corpus, args.num_docs) if args.corpus
           else generated_corpus(args.num_docs, args.seed))
  cfg = minhash.MinHashConfig()
  mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6

  run_lifejax(texts[:200], cfg)  # warm caches (power tables, imports)
  ours_s, keys = run_lifejax(texts, cfg)
  theirs_s, their_pairs = run_datasketch(texts, cfg)

  sample = sorted(random.Random(args.seed).sample(
      range(len(texts)), min(args.sample, len(texts))))
  truth = exact_pairs([texts[i] for i in sample], cfg.ngram,
                      args.truth_jaccard)
  ours = minhash.bucket_pairs(keys[sample])
  index = {d: i for i, d in enumerate(sample)}
  theirs = {(index[a], index[b]) for a, b in their_pairs
            if a in index and b in index}
  p_ours, r_ours = score(ours, truth)
  p_theirs, r_theirs = score(theirs, truth)

  print(f"{len(texts)} docs, {mb:.1f} MB; {cfg.ngram}-gram shingles, "
        f"{cfg.num_perm} hashes = {cfg.bands} bands x {cfg.rows} rows; "
        f"quality on {len(sample)} sampled docs, {len(truth)} pairs with "
        f"exact Jaccard >= {args.truth_jaccard}\n")
  print("| method | seconds | docs/s | MB/s | candidate pairs (sample) | "
        "precision | recall |")
  print("|---|---|---|---|---|---|---|")
  for name, secs, pairs, p, r in (
      ("lifejax (numpy, vectorized)", ours_s, ours, p_ours, r_ours),
      ("datasketch MinHash + MinHashLSH", theirs_s, theirs, p_theirs,
       r_theirs)):
    print(f"| {name} | {secs:.2f} | {len(texts) / secs:,.0f} | "
          f"{mb / secs:.2f} | {len(pairs)} | {p:.3f} | {r:.3f} |")
  print(f"\nspeed-up: {theirs_s / ours_s:.1f}x")


if __name__ == "__main__":
  main()
