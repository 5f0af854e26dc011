"""Vectorized hashing, MinHash accuracy, LSH banding and union-find."""

import random

import numpy as np
import pytest

from lifejax.curation import dedup, hashing, minhash

_VOCAB = [f"w{i}" for i in range(3000)]


def _doc(rng, n=400):
  return [rng.choice(_VOCAB) for _ in range(n)]


def _shingles(words, n=5):
  words = hashing.canonical_words(" ".join(words))
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _jaccard(a, b):
  sa, sb = _shingles(a), _shingles(b)
  return len(sa & sb) / len(sa | sb)


def test_word_hashes_independent_of_batching_and_fast_path(monkeypatch):
  texts = ["Hello, World! hello", "", "Ünïcode café, naïve", "... ---",
           "x_y z"] * 7
  together, offsets = hashing.word_hashes(texts)
  alone = [hashing.word_hashes([t])[0] for t in texts]
  for i, h in enumerate(alone):
    np.testing.assert_array_equal(together[offsets[i]:offsets[i + 1]], h)
  monkeypatch.setattr(hashing, "_GROUP_BYTES", 16)  # force many groups
  regrouped, offsets2 = hashing.word_hashes(texts)
  np.testing.assert_array_equal(regrouped, together)
  np.testing.assert_array_equal(offsets2, offsets)
  # The ASCII fast path and the regex path agree on the same words.
  a, _ = hashing.word_hashes(["Hello, World! x_y"])
  b, _ = hashing.word_hashes(["hello world x y é"])
  np.testing.assert_array_equal(a, b[:4])
  assert hashing.canonical_words("Hello, World! x_y") == ["hello", "world",
                                                         "x", "y"]


def test_ngram_hashes_respect_document_boundaries():
  words, offsets = hashing.word_hashes(["a b c", "d e f g", "h"])
  grams, goff = hashing.ngram_hashes(words, offsets, 3)
  assert goff.tolist() == [0, 1, 3, 4]  # short doc "h" gets one n-gram
  again, _ = hashing.ngram_hashes(*hashing.word_hashes(["d e f g"]), 3)
  np.testing.assert_array_equal(grams[1:3], again)
  strict, soff = hashing.ngram_hashes(words, offsets, 3, short_docs=False)
  assert soff.tolist() == [0, 1, 3, 3]
  # Order matters: "a b c" != "c b a".
  rev, _ = hashing.ngram_hashes(*hashing.word_hashes(["c b a"]), 3)
  assert rev[0] != grams[0]


def test_signatures_independent_of_batching(monkeypatch):
  rng = random.Random(5)
  texts = [" ".join(_doc(rng, rng.randint(1, 60))) for _ in range(40)]
  texts[5] = texts[6] = ""
  cfg = minhash.MinHashConfig(block=64)
  batch = minhash.signatures(texts, cfg)
  monkeypatch.setattr(minhash, "_GROUP_CHARS", 100)
  np.testing.assert_array_equal(minhash.signatures(texts, cfg), batch)
  for i in (0, 7, 39):
    np.testing.assert_array_equal(minhash.signatures([texts[i]], cfg)[0],
                                  batch[i])
  assert np.all(batch[5:7] == 0xFFFFFFFF)  # no shingles: empty signature
  assert not np.any(np.all(np.delete(batch, [5, 6], axis=0) == 0xFFFFFFFF,
                           axis=1))


def test_minhash_estimates_exact_jaccard():
  rng = random.Random(0)
  cfg = minhash.MinHashConfig()
  errors = []
  for keep in np.linspace(0.1, 0.95, 18):
    a = _doc(rng, 300)
    b = [w if rng.random() < keep else rng.choice(_VOCAB) for w in a]
    sig = minhash.signatures([" ".join(a), " ".join(b)], cfg)
    est = minhash.estimate_jaccard(sig[0], sig[1])
    exact = _jaccard(a, b)
    # 112 hashes: std <= 0.047, so 0.15 is over 3 standard deviations.
    assert abs(est - exact) < 0.15, (keep, est, exact)
    errors.append(est - exact)
  assert abs(np.mean(errors)) < 0.03  # unbiased
  assert np.mean(np.abs(errors)) < 0.05


def _clusters(texts, cfg):
  sig = minhash.signatures(texts, cfg)
  active = np.ones(len(texts), dtype=bool)
  return dedup.near_groups(sig, active, cfg)


def test_near_duplicate_with_5pct_edits_found_unrelated_not():
  rng = random.Random(1)
  cfg = minhash.MinHashConfig()  # 14 bands x 8 rows
  originals = [_doc(rng) for _ in range(10)]
  copies = []
  for words in originals:
    # 5% of the words rewritten in one passage (an edited sentence).
    start = rng.randrange(0, 380)
    copy = list(words)
    copy[start:start + 20] = [rng.choice(_VOCAB) for _ in range(20)]
    copies.append(copy)
    assert _jaccard(words, copy) > 0.8
  unrelated = [_doc(rng) for _ in range(20)]
  texts = [" ".join(w) for w in originals + copies + unrelated]
  dup_of = _clusters(texts, cfg)
  assert dup_of == {10 + i: i for i in range(10)}


def test_scattered_5pct_edits_need_lower_threshold_banding():
  rng = random.Random(2)
  originals = [_doc(rng) for _ in range(12)]
  copies = []
  for words in originals:
    copy = list(words)
    for i in rng.sample(range(len(copy)), 20):  # 5% scattered substitutions
      copy[i] = rng.choice(_VOCAB)
    copies.append(copy)
  jaccards = [_jaccard(a, b) for a, b in zip(originals, copies)]
  # Why 14x8 banding (midpoint ~0.72) is not enough for these:
  assert 0.5 < min(jaccards) and max(jaccards) < 0.7
  unrelated = [_doc(rng) for _ in range(20)]
  texts = [" ".join(w) for w in originals + copies + unrelated]
  low = minhash.MinHashConfig(bands=28, rows=4, verify_threshold=0.5)
  dup_of = _clusters(texts, low)
  found = sum(dup_of.get(12 + i) == i for i in range(12))
  assert found >= 11
  assert all(12 <= k < 24 for k in dup_of)  # nothing unrelated merged


def test_verification_drops_weak_candidates():
  sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 5]], dtype=np.uint32)
  cfg = minhash.MinHashConfig(bands=2, rows=2, verify_threshold=0.75)
  u, v = minhash.verify_edges(sig, np.array([0, 0]), np.array([1, 2]), cfg)
  assert u.tolist() == [0] and v.tolist() == [2]


def _components_bfs(n, edges):
  adj = {i: set() for i in range(n)}
  for a, b in edges:
    adj[a].add(b)
    adj[b].add(a)
  label = [-1] * n
  for s in range(n):
    if label[s] >= 0:
      continue
    stack, label[s] = [s], s
    while stack:
      x = stack.pop()
      for y in adj[x]:
        if label[y] < 0:
          label[y] = s
          stack.append(y)
  return label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_union_find_matches_bfs(seed):
  rng = np.random.default_rng(seed)
  n = 300
  edges = rng.integers(0, n, size=(200, 2))
  root = minhash.connected_components(n, edges[:, 0], edges[:, 1])
  # BFS labels by the smallest node reached first from the smallest start,
  # which is the component minimum: the same labelling as our roots.
  assert root.tolist() == _components_bfs(n, edges.tolist())


def test_star_edges_give_same_components_as_all_bucket_pairs():
  rng = np.random.default_rng(3)
  keys = rng.integers(0, 40, size=(200, 3)).astype(np.uint64)
  u, v = minhash.star_edges(keys)
  star = minhash.connected_components(200, u, v)
  pairs = np.array(sorted(minhash.bucket_pairs(keys)))
  full = minhash.connected_components(200, pairs[:, 0], pairs[:, 1])
  assert star.tolist() == full.tolist()


def test_exact_groups_and_cluster_sizes():
  dup_of = dedup.exact_groups(["a", "b", "a", "c", "a", "b"])
  assert dup_of == {2: 0, 4: 0, 5: 1}
  assert dedup.cluster_sizes(dup_of) == {2: 1, 3: 1}
