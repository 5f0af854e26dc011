"""The curation / data-mix cells' bookkeeping (experiments/curation/cell.py)
and summaries: the held-out split, the mix weights, the multiple-choice
probe, the answer-only rows and the derived inflation numbers, on synthetic
inputs small enough to check by hand. The runs themselves are the tiny
sweeps' business (test_experiments_tiny.py)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from experiments.curation import cell
from lifejax import sweep

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _spec(name):
  path = os.path.join(_ROOT, "experiments", name, "experiment.py")
  s = importlib.util.spec_from_file_location(f"_t_{name}", path)
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  return mod


def test_split_heldout_takes_clean_docs_and_drops_their_copies():
  docs = [{"id": f"d{i}", "text": str(i), "defects": []} for i in range(10)]
  docs.append({"id": "dup", "text": "5", "defects": ["exact_duplicate"],
               "dup_of": "d5"})
  docs.append({"id": "junk", "text": "x", "defects": ["low_quality"]})
  train, held = cell.split_heldout(docs, 5)
  # clean index i with i % 5 == 2: d2 and d7; the junk page is never held out
  assert [d["id"] for d in held] == ["d2", "d7"]
  assert {d["id"] for d in train} == {f"d{i}" for i in range(10)
                                      if i not in (2, 7)} | {"dup", "junk"}
  docs[-2]["dup_of"] = "d7"  # a copy of a held-out document leaves train
  train, _ = cell.split_heldout(docs, 5)
  assert "dup" not in {d["id"] for d in train}
  with pytest.raises(ValueError, match="holdout_every"):
    cell.split_heldout(docs, 1)


def _write(path, texts):
  with open(path, "w", encoding="utf-8") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")


def test_mix_weights_realize_word_shares(tmp_path):
  # a: 2 docs x 3 words = 6 words; b: 1 doc x 2 words
  _write(tmp_path / "a.jsonl", ["x y z", "x y z"])
  _write(tmp_path / "b.jsonl", ["x y"])
  files = {"a": [str(tmp_path / "a.jsonl")], "b": [str(tmp_path / "b.jsonl")]}
  _, w, shares = cell.mix_weights(files, {})
  assert shares == pytest.approx({"a": 0.75, "b": 0.25})
  # document weight x words per doc gives the word share
  assert w[0] * 3 / (w[0] * 3 + w[1] * 2) == pytest.approx(0.75)
  _, w, shares = cell.mix_weights(files, {"b": 3.0})
  assert shares == pytest.approx({"a": 0.5, "b": 0.5})
  _, w, shares = cell.mix_weights(files, {}, equal_shares=True)
  assert shares == pytest.approx({"a": 0.5, "b": 0.5})
  assert w[0] * 3 == pytest.approx(w[1] * 2)
  with pytest.raises(ValueError, match="not sources"):
    cell.mix_weights(files, {"c": 2.0})
  with pytest.raises(ValueError, match="must be > 0"):
    cell.mix_weights(files, {"a": 0.0})


def test_mc_choices_and_accuracy():
  q = {"id": "q1", "answer": "b"}
  c = cell.mc_choices(q, ["a", "b", "c", "d", "b"], k=3)
  assert c[0] == "b" and len(c) == 3 and len(set(c)) == 3
  assert c == cell.mc_choices(q, ["d", "c", "b", "a"], k=3)  # order-free
  assert cell.mc_choices(q, ["b", "a"], k=8) == ["b", "a"]
  # strict maximum of the first entry; a tie is wrong
  assert cell.mc_accuracy([[-1.0, -2.0], [-3.0, -1.0], [-1.0, -1.0]]) == \
      pytest.approx(1 / 3)


class _Tok:
  eos_id = 9

  def encode(self, text, add_bos=False, add_eos=False):
    return [1] * add_bos + [int(c) for c in text.split()] + [9] * add_eos


def test_answer_rows_score_only_the_answer():
  rows = cell._answer_rows(_Tok(), [([1, 5, 6], "7 8")], seq_len=6)
  r = rows[0]
  # ids 1 5 6 7 8 9: targets 5 6 7 8 9; the answer 7 8 and EOS are scored
  assert r["tokens"][:5].tolist() == [1, 5, 6, 7, 8]
  assert r["targets"][:5].tolist() == [5, 6, 7, 8, 9]
  assert r["loss_mask"].tolist() == [0, 0, 1, 1, 1, 0]
  assert r["segment_ids"].tolist() == [1, 1, 1, 1, 1, 0]
  r = cell._answer_rows(_Tok(), [([1, 5, 6], "7 8")], 6, eos=False)[0]
  assert r["loss_mask"].tolist() == [0, 0, 1, 1, 0, 0]
  # a long prompt is cut from the left; the answer stays whole
  r = cell._answer_rows(_Tok(), [([1, 2, 3, 4, 5], "7 8")], 3)[0]
  assert r["targets"].tolist() == [7, 8, 9]
  assert r["loss_mask"].tolist() == [1, 1, 1]


def test_doc_rows_cover_every_pair():
  rows = cell._doc_rows(_Tok(), ["2 3 4 5"], seq_len=2)
  # [1 2 3 4 5 9]: 5 pairs in rows of 2, 2, 1
  assert [int(r["loss_mask"].sum()) for r in rows] == [2, 2, 1]
  assert np.concatenate([r["targets"][r["loss_mask"] > 0]
                         for r in rows]).tolist() == [2, 3, 4, 5, 9]


def _metrics(gap_clean, gap_leaked, mc_clean, mc_leaked, heldout):
  m = {f"heldout/{s}/loss": heldout + i for i, s in enumerate(cell.SOURCES)}
  m.update({f"heldout/{s}/tokens": 10.0 * (i + 1)
            for i, s in enumerate(cell.SOURCES)})
  for g, loss, mc in (("clean", gap_clean, mc_clean),
                      ("leaked", gap_leaked, mc_leaked)):
    m.update({f"facts/{g}/probe": loss, f"facts/{g}/verbatim": loss - 1,
              f"facts/{g}/probe_tokens": 5.0, f"facts/{g}/mc_acc": mc,
              f"facts/{g}/count": 4.0, f"facts/{g}/mc_chance": 0.125})
  return m


def _cell(tmp_path, arm, seed, metrics):
  d = tmp_path / arm / f"seed{seed}"
  d.mkdir(parents=True)
  (d / "cell_eval.json").write_text(json.dumps(metrics))
  return sweep.Cell(sweep.Arm(arm), seed, str(d), {})


def test_curation_metrics_and_inflation(tmp_path):
  spec = _spec("curation")
  m = spec.cell_metrics(_cell(tmp_path, "curated", 0,
                              _metrics(5.0, 4.5, 0.25, 0.5, 2.0)))
  # token-weighted: (2*10 + 3*20 + 4*30 + 5*40 + 6*50) / 150
  assert m["heldout/all/loss"] == pytest.approx(700 / 150)
  assert m["gap/probe"] == pytest.approx(0.5)
  assert m["gap/mc"] == pytest.approx(0.25)
  stats = {"curated": {s: {"gap/probe": 0.1 * s} for s in range(3)},
           "curated_no_decontam": {s: {"gap/probe": 0.1 * s + 0.3 + 0.01 * s}
                                   for s in range(3)}}
  t = spec.paired(stats, "curated_no_decontam", "curated", "gap/probe")
  assert t["n"] == 3 and t["mean_diff"] == pytest.approx(0.31)
  assert t["p"] < 0.01
  assert spec.paired(stats, "raw", "curated", "gap/probe") is None


def test_data_mix_own_vs_others(tmp_path):
  spec = _spec("data_mix")
  stats = {}
  for arm, own in (("default", 0.0), ("wiki_x4", -0.2)):
    stats[arm] = {}
    for seed in range(3):
      stats[arm][seed] = {f"heldout/{s}/loss": 2.0 + 0.01 * seed + (
          own if s == "wiki" else (0.1 + 0.01 * seed) * (arm != "default"))
                          for s in cell.SOURCES}
  ov = spec.own_vs_others(stats, "wiki_x4", "wiki")
  assert ov["own"]["mean_diff"] == pytest.approx(-0.2)
  assert ov["others"]["mean_diff"] == pytest.approx(0.11)
  m = spec.cell_metrics(_cell(tmp_path, "default", 0,
                              _metrics(5.0, 4.0, 0.25, 0.75, 2.0)))
  assert m["facts/all/probe"] == pytest.approx(4.5)
  assert m["facts/all/mc_acc"] == pytest.approx(0.5)
