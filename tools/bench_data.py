"""Measures the LM input pipeline's throughput (tokens/s) on this machine.

Compare the printed figure with training tokens/s: the pipeline must be
comfortably faster, or the accelerator waits for data.

  python tools/bench_data.py                       # generated corpus
  python tools/bench_data.py --source data.jsonl --tokenizer sp.model
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from lifejax.data import file_sources
from lifejax.data import packing
from lifejax.data import pipeline
from lifejax.data import sources
from lifejax.data import tokenizer as tokenizer_lib

def generated_corpus(num_docs: int, seed: int) -> list[str]:
  """Documents of 20..600 words drawn Zipf-like from 5000 made-up words.

  Lengths vary so packing has work to do; the long-tailed vocabulary makes
  SentencePiece segment real subwords, as on natural text.
  """
  rng = np.random.default_rng(seed)
  letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
  freq = 1.0 / np.arange(1, 27)
  words = ["".join(rng.choice(letters, size=int(rng.integers(1, 11)),
                              p=freq / freq.sum()))
           for _ in range(5000)]
  zipf = 1.0 / np.arange(1, len(words) + 1)
  docs = []
  for _ in range(num_docs):
    n = int(rng.integers(20, 600))
    picked = rng.choice(len(words), size=n, p=zipf / zipf.sum())
    docs.append(" ".join(words[i] for i in picked) + ".")
  return docs


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--num_batches", type=int, default=200)
  parser.add_argument("--warmup_batches", type=int, default=5)
  parser.add_argument("--source", default=None,
                      help="JSONL file with a 'text' field; default: generate")
  parser.add_argument("--tokenizer", default=None,
                      help="SentencePiece .model; default: train one")
  parser.add_argument("--num_docs", type=int, default=2000)
  parser.add_argument("--vocab_size", type=int, default=2048)
  parser.add_argument("--num_threads", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    if args.source:
      source = file_sources.JsonlSource(args.source)
    else:
      source = sources.InMemorySource(
          [{"text": t} for t in generated_corpus(args.num_docs, args.seed)],
          name="generated")
    if args.tokenizer:
      tok = tokenizer_lib.load_tokenizer(args.tokenizer)
    else:
      t0 = time.perf_counter()
      texts = (r["text"] for r in source)
      tok = tokenizer_lib.train_sentencepiece(
          texts, os.path.join(tmp, "sp"), args.vocab_size)
      print(f"trained tokenizer: vocab {tok.vocab_size} in "
            f"{time.perf_counter() - t0:.2f}s")

    ds = pipeline.lm_dataset(source, tok, seq_len=args.seq_len,
                             batch_size=args.batch_size, seed=args.seed,
                             shard_index=0, shard_count=1,
                             num_threads=args.num_threads)
    it = iter(ds)
    for _ in range(args.warmup_batches):
      next(it)
    real, t0 = 0, time.perf_counter()
    for _ in range(args.num_batches):
      batch = next(it)
      real += int(np.count_nonzero(batch["segment_ids"]))
    seconds = time.perf_counter() - t0

  total = args.num_batches * args.batch_size * args.seq_len
  print(f"seq_len={args.seq_len} batch_size={args.batch_size} "
        f"batches={args.num_batches} in {seconds:.2f}s")
  print(f"tokens/s (incl. padding): {total / seconds:,.0f}")
  print(f"tokens/s (real):          {real / seconds:,.0f}")
  print(f"packing efficiency:       {real / total:.3f}")
  print(f"last batch efficiency:    {packing.packing_efficiency(batch):.3f}")


if __name__ == "__main__":
  main()
