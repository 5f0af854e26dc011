"""Benchmark: lifejax's MinHash LSH near-dedup against datasketch and rensa.

Every system gets the same documents, the same shingles (word 5-grams of
`hashing.canonical_words`; a document shorter than 5 words is one shingle of
all its words), the same bands x rows (default 22 x 5 = 110 hashes: a pair
at Jaccard 0.8 becomes a candidate with probability 1 - (1 - 0.8^5)^22 =
0.9998; the pipeline's default 14 x 8 gives 0.92 there), and goes from text
to candidate pairs in this process:

  lifejax S        minhash.signatures -> band keys -> star edges ->
                   signature verification -> connected components (the
                   curation pipeline's near-dedup), one process, for each
                   MinHash scheme S (permutations, one_permutation)
  lifejax S, W     the same with the signatures computed by W worker
                   processes (minhash.signatures_parallel over a pool that
                   is started before timing; its start is printed apart)
  datasketch       MinHash.update_batch + MinHashLSH insert/query per doc
  rensa            RMinHash.from_token_sets + RMinHashLSH insert_many /
                   query_all (rensa's bulk path, Rust)

The peers hash shingle strings built in Python (their documented input);
that share of their time is printed as "shingling".

Truth: the exact Jaccard of every pair of documents' shingle sets (sparse
matrix product over the whole corpus); a pair is a near-duplicate when
J >= --truth_jaccard. Each system's candidate pairs (sharing at least one
band) are scored against it: recall, and precision both of the candidates
and, for lifejax, after signature verification (candidates whose
signature-estimated Jaccard is >= --verify, the pipeline's
MinHashConfig.verify_threshold).

  python tools/bench_dedup.py --stdlib            # this Python's stdlib
  python tools/bench_dedup.py --corpus DIR        # every file under DIR
  python tools/bench_dedup.py --corpus DIR --jsonl  # JSONL {"text": ...}
  python tools/bench_dedup.py                     # generated word soup
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import platform
import random
import statistics
import sysconfig
import time
from collections.abc import Callable
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


def stdlib_dir() -> Path:
  """This interpreter's standard library (without site-packages)."""
  return Path(sysconfig.get_paths()["stdlib"])


def directory_corpus(path: Path, glob: str, jsonl: bool
                     ) -> tuple[list[str], dict[str, int]]:
  """Every file under `path` matching `glob` as one document (or, with
  `jsonl`, every record's "text"), in sorted path order. Files that are not
  UTF-8, records without a text and documents without a word are skipped
  and counted, never silently."""
  if not path.is_dir():
    raise SystemExit(f"--corpus {path}: not a directory")
  texts: list[str] = []
  skipped = {"not_utf8": 0, "no_words": 0, "no_text_field": 0,
             "site_packages": 0}
  for f in sorted(path.rglob(glob)):
    if not f.is_file():
      continue
    if "site-packages" in f.relative_to(path).parts:
      skipped["site_packages"] += 1
      continue
    try:
      raw = f.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
      skipped["not_utf8"] += 1
      continue
    docs = [raw]
    if jsonl:
      docs = []
      for line in raw.splitlines():
        text = json.loads(line).get("text") if line.strip() else None
        if isinstance(text, str):
          docs.append(text)
        else:
          skipped["no_text_field"] += 1
    for text in docs:
      if hashing.canonical_words(text):
        texts.append(text)
      else:
        skipped["no_words"] += 1
  return texts, {k: v for k, v in skipped.items() if v}


def shingle_strings(text: str, n: int) -> list[str]:
  """The document's word n-grams as strings (the peers' input)."""
  words = hashing.canonical_words(text)
  return ([" ".join(words[j:j + n]) for j in range(len(words) - n + 1)]
          or [" ".join(words)])


def exact_pairs(texts: list[str], n: int, threshold: float
                ) -> tuple[set[tuple[int, int]], np.ndarray]:
  """Brute force over all pairs: those with shingle-set Jaccard >=
  threshold, and every co-occurring pair's Jaccard (for the histogram)."""
  vocab: dict[str, int] = {}
  rows, cols = [], []
  for d, text in enumerate(texts):
    for g in set(shingle_strings(text, n)):
      rows.append(d)
      cols.append(vocab.setdefault(g, len(vocab)))
  x = scipy.sparse.csr_matrix((np.ones(len(rows), dtype=np.float64),
                               (rows, cols)), shape=(len(texts), len(vocab)))
  sizes = np.asarray(x.sum(axis=1)).ravel()
  inter = (x @ x.T).tocoo()
  keep = inter.row < inter.col
  r, c, k = inter.row[keep], inter.col[keep], inter.data[keep]
  jac = k / (sizes[r] + sizes[c] - k)
  hit = jac >= threshold
  return {(int(a), int(b)) for a, b in zip(r[hit], c[hit])}, jac


def run_lifejax(texts: list[str], cfg: minhash.MinHashConfig,
                pool: concurrent.futures.Executor | None = None,
                workers: int = 1):
  """The pipeline's near-dedup; returns the signatures and band keys."""
  sig = (minhash.signatures(texts, cfg) if pool is None else
         minhash.signatures_parallel(texts, cfg, pool, workers))
  keys = minhash.band_keys(sig, cfg)
  u, v = minhash.star_edges(keys)
  u, v = minhash.verify_edges(sig, u, v, cfg)
  minhash.connected_components(len(texts), u, v)
  return sig, keys


def run_datasketch(texts: list[str], cfg: minhash.MinHashConfig):
  from datasketch import MinHash, MinHashLSH  # benchmark-only dependency
  lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
  sketches = []
  for i, text in enumerate(texts):
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch([s.encode("utf-8")
                    for s in shingle_strings(text, cfg.ngram)])
    lsh.insert(i, m)
    sketches.append(m)
  pairs = set()
  for i, m in enumerate(sketches):
    for j in lsh.query(m):
      if j != i:
        pairs.add((min(i, j), max(i, j)))
  return pairs


def run_rensa(texts: list[str], cfg: minhash.MinHashConfig):
  import rensa  # benchmark-only dependency
  sets = [shingle_strings(t, cfg.ngram) for t in texts]
  sketches = rensa.RMinHash.from_token_sets(sets, cfg.num_perm, cfg.seed)
  lsh = rensa.RMinHashLSH(threshold=cfg.threshold(), num_perm=cfg.num_perm,
                          num_bands=cfg.bands)
  lsh.insert_many(sketches)
  pairs = set()
  for i, found in enumerate(lsh.query_all(sketches)):
    for j in found:
      if j != i:
        pairs.add((min(i, j), max(i, j)))
  return pairs


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
  """Median wall seconds over `rounds` calls, and the last result."""
  times, out = [], None
  for _ in range(rounds):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def score(pred: set, truth: set) -> tuple[float, float]:
  tp = len(pred & truth)
  return (tp / len(pred) if pred else 1.0,
          tp / len(truth) if truth else 1.0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = parser.add_mutually_exclusive_group()
  src.add_argument("--corpus", type=Path, help="a directory of text files")
  src.add_argument("--stdlib", action="store_true",
                   help="the running Python's standard library sources")
  parser.add_argument("--glob", default="*",
                      help="file pattern under the corpus ('*.py' with "
                      "--stdlib by default)")
  parser.add_argument("--jsonl", action="store_true",
                      help="files are JSONL, one {'text': ...} per line")
  parser.add_argument("--num_docs", type=int, default=10000,
                      help="generated corpus size (no --corpus/--stdlib)")
  parser.add_argument("--bands", type=int, default=22)
  parser.add_argument("--rows", type=int, default=5)
  parser.add_argument("--truth_jaccard", type=float, default=0.8)
  parser.add_argument("--verify", type=float, default=0.78,
                      help="lifejax's signature verification threshold")
  parser.add_argument("--sweep", default="",
                      help="comma-separated verification thresholds to "
                      "also score (select the threshold on a dev corpus)")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--schemes", default=",".join(minhash.SCHEMES),
                      help="lifejax's MinHash schemes to run")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--peers", default="datasketch,rensa",
                      help="comma-separated peers to run ('' for none)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  skipped: dict[str, int] = {}
  if args.stdlib or args.corpus:
    root = stdlib_dir() if args.stdlib else args.corpus
    glob = "*.py" if args.stdlib and args.glob == "*" else args.glob
    texts, skipped = directory_corpus(root, glob, args.jsonl)
    name = (f"Python {platform.python_version()} standard library "
            f"({glob})" if args.stdlib else f"{root} ({glob})")
  else:
    texts = generated_corpus(args.num_docs, args.seed)
    name = f"generated word soup ({args.num_docs} docs)"
  if len(texts) < 2:
    raise SystemExit(f"{name}: {len(texts)} documents; need at least 2")
  cfg = minhash.MinHashConfig(bands=args.bands, rows=args.rows,
                              verify_threshold=args.verify)
  mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6

  rows = []  # (name, seconds, candidate pairs, verified pairs or None)
  pool_start = None
  estimates: dict[str, dict[tuple[int, int], float]] = {}
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max(args.workers, 1),
                                              mp_context=ctx) as pool:
    for scheme in args.schemes.split(","):
      cfg_s = dataclasses.replace(cfg, scheme=scheme)
      run_lifejax(texts[:50], cfg_s)  # warm caches (power tables, imports)
      secs, (sig, keys) = timed(lambda: run_lifejax(texts, cfg_s),
                                args.rounds)
      candidates = minhash.bucket_pairs(keys)
      verified = {(a, b) for a, b in candidates
                  if np.mean(sig[a] == sig[b]) >= args.verify}
      rows.append((f"lifejax {scheme}, 1 process", secs, candidates,
                   verified))
      estimates[scheme] = {(a, b): float(np.mean(sig[a] == sig[b]))
                           for a, b in candidates}
      if args.workers > 1:
        if pool_start is None:
          start = time.perf_counter()
          minhash.signatures_parallel(texts[:args.workers], cfg_s, pool,
                                      args.workers)  # start and import
          pool_start = time.perf_counter() - start
        secs, (sig_p, _) = timed(
            lambda: run_lifejax(texts, cfg_s, pool, args.workers),
            args.rounds)
        if not np.array_equal(sig_p, sig):
          raise SystemExit("signatures_parallel differs from signatures")
        rows.append((f"lifejax {scheme}, {args.workers} processes", secs,
                     candidates, verified))
  peers = [p for p in args.peers.split(",") if p]
  shingling = None
  if peers:
    shingling, _ = timed(lambda: [shingle_strings(t, cfg.ngram)
                                  for t in texts], args.rounds)
  for peer in peers:
    fn = {"datasketch": run_datasketch, "rensa": run_rensa}[peer]
    secs, pairs = timed(lambda fn=fn: fn(texts, cfg), args.rounds)
    rows.append((peer, secs, pairs, None))

  truth, jac = exact_pairs(texts, cfg.ngram, args.truth_jaccard)
  print(f"{name}: {len(texts)} documents, {mb:.1f} MB"
        + (f" (skipped: {skipped})" if skipped else "")
        + f"; {cfg.ngram}-gram word shingles, {cfg.num_perm} hashes = "
        f"{cfg.bands} bands x {cfg.rows} rows (S-curve midpoint "
        f"{cfg.threshold():.2f}); truth: {len(truth)} pairs with exact "
        f"Jaccard >= {args.truth_jaccard} (of {jac.shape[0]} pairs sharing "
        f"a shingle; {int(np.sum((jac >= 0.7) & (jac < args.truth_jaccard)))}"
        f" in [0.7, {args.truth_jaccard})); median of {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs\n")
  print("| system | seconds | MB/s | lifejax speed-up | candidate pairs | "
        "recall | candidate precision | verified (J_est >= "
        f"{args.verify}): pairs / recall / precision |")
  print("|---|---|---|---|---|---|---|---|")
  one = min(s for n, s, _, _ in rows if n.endswith(", 1 process"))
  best = min(s for n, s, _, _ in rows if n.startswith("lifejax"))
  for label, secs, pairs, ver in rows:
    p, r = score(pairs, truth)
    ratio = ("" if label.startswith("lifejax") else
             f"{secs / one:.2f}x (1 process), {secs / best:.2f}x (best)")
    vcell = "-"
    if ver is not None:
      vp, vr = score(ver, truth)
      vcell = f"{len(ver)} / {vr:.4f} / {vp:.4f}"
    print(f"| {label} | {secs:.3f} | {mb / secs:.1f} | {ratio} | "
          f"{len(pairs)} | {r:.4f} | {p:.4f} | {vcell} |")
  if pool_start is not None:
    print(f"\nworker pool start (spawn, {args.workers} processes, imports): "
          f"{pool_start:.2f} s, not in the {args.workers}-process rows")
  print("speed-up columns: the peer's seconds over the fastest lifejax "
        "1-process row, and over the fastest lifejax row")
  if shingling is not None:
    print(f"peers' Python shingling (in their rows): {shingling:.3f} s")
  if args.sweep:
    print("\n| scheme | verification threshold | verified pairs | recall | "
          "precision |\n|---|---|---|---|---|")
    for scheme, est in estimates.items():
      for t in (float(x) for x in args.sweep.split(",")):
        ver = {pair for pair, e in est.items() if e >= t}
        vp, vr = score(ver, truth)
        print(f"| {scheme} | {t:.2f} | {len(ver)} | {vr:.4f} | {vp:.4f} |")


if __name__ == "__main__":
  main()
