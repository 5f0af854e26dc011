"""tools/bench_dedup.py: its corpus reader counts what it skips, its truth
equals a brute-force Jaccard over Python sets, and it runs end to end with
both peers on a tiny directory (timings are never asserted)."""

import importlib.util
import itertools
import os
import random
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
  spec = importlib.util.spec_from_file_location(
      "bench_dedup", os.path.join(_ROOT, "tools", "bench_dedup.py"))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  return tool


def _corpus(tmp_path):
  rng = random.Random(0)
  vocab = [f"w{i}" for i in range(400)]
  base = [[rng.choice(vocab) for _ in range(120)] for _ in range(6)]
  docs = [" ".join(b) for b in base]
  for b in base[:4]:  # near copies: 1-8 words substituted
    copy = list(b)
    for i in rng.sample(range(len(copy)), rng.randint(1, 8)):
      copy[i] = rng.choice(vocab)
    docs.append(" ".join(copy))
  for i, text in enumerate(docs):
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "sub" / f"d{i}.txt").write_text(text, encoding="utf-8")
  (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8 \xff")
  (tmp_path / "empty.txt").write_text("... --- !!!", encoding="utf-8")
  return docs


def test_corpus_reader_and_truth(tmp_path):
  tool = _tool()
  docs = _corpus(tmp_path)
  texts, skipped = tool.directory_corpus(tmp_path, "*", jsonl=False)
  assert sorted(texts) == sorted(docs)
  assert skipped == {"not_utf8": 1, "no_words": 1}
  truth, jac = tool.exact_pairs(texts, 5, 0.8)
  want = set()
  shingles = [set(tool.shingle_strings(t, 5)) for t in texts]
  for a, b in itertools.combinations(range(len(texts)), 2):
    j = len(shingles[a] & shingles[b]) / len(shingles[a] | shingles[b])
    if j >= 0.8:
      want.add((a, b))
  assert truth == want and len(want) >= 2
  assert tool.score(want, want) == (1.0, 1.0)
  assert tool.score({(0, 1)} | want, want)[0] < 1.0


def test_bench_runs_with_both_peers(tmp_path):
  _corpus(tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, os.path.join(_ROOT, "tools", "bench_dedup.py"),
       "--corpus", str(tmp_path), "--rounds", "1", "--workers", "2",
       "--sweep", "0.7,0.9"],
      env=env, cwd=_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for row in ("lifejax permutations, 1 process",
              "lifejax one_permutation, 2 processes", "datasketch", "rensa"):
    assert f"| {row} |" in out, out
  assert "(skipped: {'not_utf8': 1, 'no_words': 1})" in out
  assert "| one_permutation | 0.90 |" in out
