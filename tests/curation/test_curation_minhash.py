"""Vectorized hashing, MinHash accuracy, LSH banding and union-find."""

import dataclasses
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


_M64 = (1 << 64) - 1


def _fmix_reference(x: int) -> int:
  """The splitmix64 finalizer in Python integers."""
  for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB),
                      (31, None)):
    x ^= x >> shift
    if mult is not None:
      x = (x * mult) & _M64
  return x


def _reference_word_hash(word: str) -> int:
  """hashing's word hash in Python integers, from the word's UTF-8 bytes:
  the polynomial sum of byte * BASE^i, salted with the length, then the
  splitmix64 finalizer."""
  data = word.encode("utf-8")
  h = sum(b * pow(int(hashing._BASE), i, 1 << 64) for i, b in enumerate(data))
  return _fmix_reference((h & _M64)
                         ^ ((len(data) * int(hashing._LEN_SALT)) & _M64))


def test_word_hashes_equal_a_reference_over_canonical_words():
  """Every text, ASCII or not, hashes to the reference hash of exactly the
  words canonical_words gives (Unicode punctuation, spaces and symbols
  separate words; letters, digits and marks of any script do not)."""
  texts = ["Hello, World! x_y 42", "naïve café — déjà vu…", "ΟΔΥΣΣΕΥΣ σοφός",
           "Temperature 5\u212a\u00a0and\u2028more", "İstanbul ﬁne straße",
           "数据 清洗，去重。 ok", "emoji 🙂 split🙂here", "a\u0301b c_d__e",
           "«quoted» ¿qué? ¡sí!", "tab\tnew\nline\r\nend", "", "———"]
  rng = random.Random(3)
  pool = "aZ9_ -.,é€—ß\u00a0\u0301ΣΟ数🙂\t\n"
  texts += ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
            for _ in range(200)]
  hashes, offsets = hashing.word_hashes(texts)
  for i, text in enumerate(texts):
    want = [_reference_word_hash(w) for w in hashing.canonical_words(text)]
    assert hashes[offsets[i]:offsets[i + 1]].tolist() == want, text


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


def _reference_one_permutation(shingles, cfg):
  """One permutation hashing with optimal densification in Python integers:
  a shingle hash's mix picks its bin (top 32 bits times P, top 32 bits of
  that) and value (low 32 bits); empty bins take the value of the first
  probed bin a shingle filled."""
  p = cfg.num_perm
  key = int(minhash._one_permutation_key(cfg))
  if not shingles:
    return [0xFFFFFFFF] * p
  bins = [None] * p
  for x in shingles:
    h = _fmix_reference(int(x) ^ key)
    j = ((h >> 32) * p) >> 32
    bins[j] = min(h & 0xFFFFFFFF, bins[j] if bins[j] is not None else 1 << 32)
  out = list(bins)
  for j in range(p):
    attempt = 0
    while out[j] is None:
      k = int(minhash.densification_probe(cfg, attempt)[j])
      out[j] = bins[k]
      attempt += 1
  return out


def test_one_permutation_signatures_equal_a_reference(monkeypatch):
  rng = random.Random(4)
  texts = [" ".join(_doc(rng, rng.randint(1, 300))) for _ in range(30)]
  texts[3] = ""  # no shingles
  texts[4] = "one"  # one shingle: every other bin borrows its value
  cfg = minhash.MinHashConfig(bands=11, rows=3, scheme="one_permutation")
  sig = minhash.signatures(texts, cfg)
  shingles, offsets = hashing.text_ngram_hashes(texts, cfg.ngram)
  for d in range(len(texts)):
    want = _reference_one_permutation(
        shingles[offsets[d]:offsets[d + 1]].tolist(), cfg)
    assert sig[d].tolist() == want, d
  assert len(set(sig[4].tolist())) == 1
  # Batching and seeds: per-document results, and a new seed a new sketch.
  np.testing.assert_array_equal(minhash.signatures(texts[5:9], cfg), sig[5:9])
  monkeypatch.setattr(minhash, "_GROUP_CHARS", 100)
  np.testing.assert_array_equal(minhash.signatures(texts, cfg), sig)
  other = minhash.signatures(texts[5:6], dataclasses.replace(cfg, seed=2))
  assert np.mean(other[0] == sig[5]) < 0.2


def test_scheme_is_checked():
  with pytest.raises(ValueError, match="MinHashConfig.scheme"):
    minhash.MinHashConfig(scheme="one_perm")


@pytest.mark.parametrize("scheme", minhash.SCHEMES)
def test_minhash_estimates_exact_jaccard(scheme):
  rng = random.Random(0)
  cfg = minhash.MinHashConfig(scheme=scheme)
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


@pytest.mark.parametrize("scheme", minhash.SCHEMES)
def test_near_duplicate_with_5pct_edits_found_unrelated_not(scheme):
  rng = random.Random(1)
  cfg = minhash.MinHashConfig(scheme=scheme)  # 14 bands x 8 rows
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


def test_signatures_parallel_equal_one_process():
  """Worker processes (a spawn pool, as the bench and a curation run use)
  give bitwise the signatures of one process, for both schemes."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  rng = random.Random(6)
  texts = [" ".join(_doc(rng, rng.randint(0, 200))) for _ in range(37)]
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
    for scheme in minhash.SCHEMES:
      cfg = minhash.MinHashConfig(scheme=scheme)
      want = minhash.signatures(texts, cfg)
      for chunks in (1, 3, 50):
        got = minhash.signatures_parallel(texts, cfg, pool, 2,
                                          chunks_per_worker=chunks)
        np.testing.assert_array_equal(got, want)
    assert minhash.signatures_parallel([], cfg, pool, 2).shape == (
        0, cfg.num_perm)
