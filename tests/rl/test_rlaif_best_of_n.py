"""RLAIF labelling with more than two samples per prompt: best against worst,
filters in order, and the same verdicts as the pair labelling for two."""

import itertools

import numpy as np
import pytest

from lifejax.rl import rlaif as rlaif_lib
from lifejax.rl import rollout as rollout_lib

CFG = rlaif_lib.RLAIFConfig(min_margin=0.1, samples_per_prompt=4)


def _rollout(texts, scores, stopped, records=None):
  n = len(texts)
  records = records or [{"id": f"r{i // 4}", "task": "fact_qa",
                         "messages": [{"role": "user", "content": "q"}],
                         "reference": {"answer": "a"}} for i in range(n)]
  return rollout_lib.Rollout(
      records=records, rows={}, response_BxN=np.zeros((n, 1), np.int32),
      lengths_B=np.ones(n, np.int32), stopped_B=np.asarray(stopped, bool),
      texts=list(texts), score_B=np.asarray(scores, np.float32))


def _brute(texts, scores, stopped, cfg):
  """Every ordered pair of usable samples; the max-margin pair with the
  lowest indices (the documented choice), or the first failing reason."""
  usable = [i for i, t in enumerate(texts) if t.strip()]
  if len(usable) < 2:
    return "empty"
  if cfg.drop_truncated:
    usable = [i for i in usable if stopped[i]]
    if len(usable) < 2:
      return "truncated"
  best = max(usable, key=lambda i: (scores[i], -i))
  pairs = [(best, j) for j in usable if texts[j].strip() != texts[best].strip()]
  if not pairs:
    return "identical"
  return min(pairs, key=lambda p: (scores[p[1]], p[1]))


def test_best_against_worst_with_filters():
  texts = ["good answer.", "bad", "", "middle",     # empty sample skipped
           "x", "y", "z", "w",                      # truncated best skipped
           "same", "same", "same", "",              # all the same text
           "a", "b", "c", "d"]                      # margin too small
  scores = [0.9, 0.1, 5.0, 0.5,
            0.2, 0.8, 0.4, 0.3,
            0.5, 0.5, 0.5, 0.0,
            0.50, 0.52, 0.55, 0.51]
  stopped = [True] * 16
  stopped[5] = False
  kept, counts = rlaif_lib.label_pairs(_rollout(texts, scores, stopped), CFG,
                                       group_size=4)
  assert counts == {"empty": 0, "truncated": 0, "identical": 1, "tie": 0,
                    "low_margin": 1}
  assert [(k["chosen"], k["rejected"]) for k in kept] == [
      ("good answer.", "bad"), ("z", "x")]
  assert [k["margin"] for k in kept] == pytest.approx([0.8, 0.2])
  assert [k["id"] for k in kept] == ["rlaif-000000", "rlaif-000001"]


def test_two_samples_match_the_pair_verdict():
  """For groups of two, best_and_worst reproduces `verdict` (the labelling
  used before best-of-n existed) on every combination of the filters."""
  cfg = rlaif_lib.RLAIFConfig(min_margin=0.1)
  texts = ["", "a", "b"]
  for ta, tb, sa, sb, st_a, st_b in itertools.product(
      texts, texts, [0.0, 0.05, 0.5], [0.0, 0.5], [True, False],
      [True, False]):
    best, worst, reason = rlaif_lib.best_and_worst(
        [ta, tb], [sa, sb], [st_a, st_b], cfg)
    assert reason == rlaif_lib.verdict(ta, tb, sa, sb, st_a, st_b, cfg)
    if reason is None:
      assert (best, worst) == ((0, 1) if sa > sb else (1, 0))


def test_matches_brute_force_on_random_groups():
  rng = np.random.default_rng(0)
  cfg = rlaif_lib.RLAIFConfig(min_margin=0.0, samples_per_prompt=5)
  for _ in range(300):
    texts = [str(t) if t else "" for t in rng.integers(0, 4, 5)]
    scores = rng.integers(0, 4, 5).astype(float).tolist()
    stopped = rng.random(5) < 0.7
    best, worst, reason = rlaif_lib.best_and_worst(texts, scores, stopped,
                                                   cfg)
    want = _brute(texts, scores, stopped, cfg)
    if isinstance(want, str):
      assert reason == want
    elif scores[want[0]] == scores[want[1]]:
      assert reason == "tie"
    else:
      assert reason is None and (best, worst) == want


def test_config_and_group_checks():
  with pytest.raises(ValueError, match="samples_per_prompt"):
    rlaif_lib.RLAIFConfig(samples_per_prompt=1)
  ro = _rollout(["a"] * 6, [0.0] * 6, [True] * 6)
  with pytest.raises(ValueError, match="multiple of 4"):
    rlaif_lib.label_pairs(ro, CFG, group_size=4)


def test_greedy_answer_joins_each_group_first():
  """interleave puts prompt i's greedy row before its samples; labelled as
  groups of 3, a greedy answer that scores lowest becomes the rejected one
  (the pair that moves the policy's mode)."""
  recs = [{"id": f"p{i}", "task": "fact_qa", "messages": [],
           "reference": {"answer": "a"}} for i in range(2)]
  greedy = _rollout(["g0", "g1"], [0.1, 0.9], [True, True], recs)
  samples = _rollout(["s00", "s01", "s10", "s11"], [0.5, 0.7, 0.3, 0.2],
                     [True] * 4, [recs[0], recs[0], recs[1], recs[1]])
  both = rlaif_lib.interleave(greedy, samples, 2)
  assert both.texts == ["g0", "s00", "s01", "g1", "s10", "s11"]
  assert [r["id"] for r in both.records] == ["p0"] * 3 + ["p1"] * 3
  np.testing.assert_allclose(both.score_B, [0.1, 0.5, 0.7, 0.9, 0.3, 0.2])
  kept, _ = rlaif_lib.label_pairs(both, CFG, group_size=3)
  assert [(k["chosen"], k["rejected"]) for k in kept] == [("s01", "g0"),
                                                          ("g1", "s11")]
  # The positions generate_preferences counts the greedy answer's role by.
  _, _, picks = rlaif_lib._label(both, CFG, "rlaif", 0, 3)  # pylint: disable=protected-access
  assert picks == [(2, 0), (0, 2)]
  with pytest.raises(ValueError, match="groups of 2"):
    rlaif_lib.interleave(greedy, _rollout(["x"] * 2, [0.0] * 2, [True] * 2),
                         2)
  with pytest.raises(ValueError, match="greedy sampler"):
    rlaif_lib.generate_preferences(
        recs, codec=None, rollout_cfg=None, sample=None, scorer=None,
        cfg=rlaif_lib.RLAIFConfig(include_greedy=True))
