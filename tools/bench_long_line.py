"""Time to the first LM batch for a JSONL file holding one very long line.

  python tools/bench_long_line.py                     # 0.25, 0.5, 1, 5 MB
  python tools/bench_long_line.py --sizes 1,5 --no_chunking

The file is one record whose text is made-up words (tools/bench_data.py's
generator) cut to each size; the pipeline is `pipeline.lm_dataset` as the
pretraining stage builds it (endless, shuffled, 2 reader threads). With
`--no_chunking` texts are encoded in one SentencePiece call, as before
tokenizer.ENCODE_CHUNK_CHARS existed: that call holds the GIL for its whole
length, which stalls the packer in the main thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable-next=wrong-import-position
from bench_data import generated_corpus  # noqa: E402

from lifejax.data import file_sources, pipeline  # noqa: E402
from lifejax.data import tokenizer as tokenizer_lib  # noqa: E402


def long_text(num_chars: int, seed: int = 1) -> str:
  """Made-up words, at least `num_chars` long before the cut."""
  parts, n = [], 0
  while n < num_chars:
    for doc in generated_corpus(500, seed):
      parts.append(doc)
      n += len(doc) + 1
    seed += 1
  return " ".join(parts)[:num_chars]


def first_batch_seconds(path: str, tok: tokenizer_lib.SentencePieceTokenizer,
                        seq_len: int, batch_size: int) -> float:
  t0 = time.perf_counter()
  ds = pipeline.lm_dataset(file_sources.JsonlSource(path), tok,
                           seq_len=seq_len, batch_size=batch_size, seed=0,
                           shard_index=0, shard_count=1)
  next(iter(ds))
  return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="0.25,0.5,1,5",
                      help="line sizes in MB (10**6 characters)")
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--vocab_size", type=int, default=2048)
  parser.add_argument("--no_chunking", action="store_true",
                      help="encode each text in one call (the old behaviour)")
  args = parser.parse_args(argv)
  if args.no_chunking:
    tokenizer_lib.ENCODE_CHUNK_CHARS = 1 << 62
  sizes = [float(s) for s in args.sizes.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    tok = tokenizer_lib.train_sentencepiece(
        generated_corpus(2000, 0), os.path.join(tmp, "sp"), args.vocab_size)
    text = long_text(int(max(sizes) * 1e6))
    chunk = getattr(tokenizer_lib, "ENCODE_CHUNK_CHARS", None)
    print(f"chunking: {'off' if args.no_chunking or not chunk else 'on'} "
          f"(ENCODE_CHUNK_CHARS={chunk}); seq_len={args.seq_len} "
          f"batch_size={args.batch_size}")
    for mb in sizes:
      path = os.path.join(tmp, f"line_{mb}.jsonl")
      with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": text[:int(mb * 1e6)]}) + "\n")
      seconds = first_batch_seconds(path, tok, args.seq_len, args.batch_size)
      print(f"{mb:g} MB line: first batch in {seconds:.2f} s", flush=True)


if __name__ == "__main__":
  main()
