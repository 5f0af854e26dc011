"""End to end: local runner, resumability, Beam parity, bad input, scoring."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lifejax.curation import local, run_curation
from lifejax.curation.config import CurationConfig
from lifejax.curation.dedup import NearDedupConfig
from lifejax.curation.minhash import MinHashConfig
from lifejax.curation.mix import MixConfig
from lifejax.curation.shards import InputConfig

_DETS = ["the", "a", "my", "our", "one"]
_NOUNS = ["miller", "teacher", "harbor master", "neighbour", "baker",
          "merchant", "clerk", "fisherman", "choir", "librarian", "watchman",
          "doctor"]
_VERBS = ["carried", "painted", "repaired", "described", "collected",
          "measured", "borrowed", "delivered", "cleaned", "counted", "sold",
          "found"]
_ADJS = ["old", "heavy", "fresh", "broken", "wooden", "shiny", "small",
         "painted", "warm", "quiet", "green", "spare"]
_OBJECTS = ["boats", "barrels", "letters", "candles", "apples", "blankets",
            "fences", "lamps", "ropes", "baskets", "bells", "maps"]
_PREPS = ["near", "after", "for", "behind", "before", "beside"]
_PLACES = ["river", "market", "chapel", "mill", "harbor", "school", "bridge",
           "square", "forest", "station", "garden", "tavern"]
_QUESTION = ("Which river flows past the old granary of Harlow before it "
             "reaches the northern sea at Dunmore Bay?")


def _sentence(rng):
  c = rng.choice
  return (f"{c(_DETS)} {c(_NOUNS)} {c(_VERBS)} {c(_ADJS)} {c(_OBJECTS)} "
          f"{c(_PREPS)} the {c(_PLACES)}.").capitalize()


def _page(rng, paragraphs=3):
  return "\n\n".join(" ".join(_sentence(rng) for _ in range(4))
                     for _ in range(paragraphs))


def _corpus(root: Path) -> Path:
  """Two sources with planted, labeled defects and bad records."""
  rng = random.Random(7)
  wiki = [{"id": f"wiki-{i}", "source": "wiki", "text": _page(rng),
           "defects": []} for i in range(14)]
  web = []

  def add(text, defects, **extra):
    web.append({"id": f"web-{len(web)}", "source": "web", "text": text,
                "defects": defects, **extra})

  for _ in range(8):
    add(_page(rng), [])
  add(wiki[2]["text"], ["exact_duplicate"], dup_of="wiki-2")
  add(web[0]["text"], ["exact_duplicate"], dup_of="web-0")
  near = web[1]["text"].split(" ")
  near[10:14] = ["quietly", "and", "slowly", "again"]
  add(" ".join(near), ["near_duplicate"], dup_of="web-1")
  add("Der Müller trug am frühen Morgen frisches Brot zum Markt, weil die "
      "Bäckerei des Dorfes nach dem Sturm geschlossen war und alle Familien "
      "auf ihn warteten.", ["non_english"])
  add("Home | Shop | About\n" + _page(rng) + "\nThis site uses cookies to "
      "give you a better experience.", ["boilerplate"],
      boilerplate_lines=["Home | Shop | About",
                         "This site uses cookies to give you a better "
                         "experience."])
  add(" ".join(["Buy cheap pills now."] * 30), ["low_quality"])
  add(_page(rng) + " Write to mary.hill@example.org or call (555) 201-3344.",
      ["pii"], pii=[{"kind": "email", "value": "mary.hill@example.org"},
                    {"kind": "phone", "value": "(555) 201-3344"}])
  add(_page(rng) + " Quiz: " + _QUESTION, ["contamination"], leaks=["q1"])
  root.mkdir(parents=True)
  with open(root / "wiki.jsonl", "w", encoding="utf-8") as f:
    for d in wiki:
      f.write(json.dumps(d) + "\n")
  with open(root / "web.jsonl", "wb") as f:
    for d in web:
      f.write(json.dumps(d).encode() + b"\n")
    f.write(b"{not json\n")
    f.write(json.dumps({"id": "e1", "text": "   "}).encode() + b"\n")
    f.write(json.dumps({"id": "b1", "text": "ab\x00cd" * 20}).encode() + b"\n")
    f.write(json.dumps({"id": "h1", "text": "word " * 3000}).encode() + b"\n")
    f.write(json.dumps({"id": "m1", "body": "no text"}).encode() + b"\n")
    f.write(json.dumps(["a", "list"]).encode() + b"\n")
    f.write(b'{"id": "u1", "text": "bad \xff\xfe bytes"}\n')
  return root


_CONFIG = CurationConfig(
    input=InputConfig(shard_docs=6, max_chars=10_000),
    near_dedup=NearDedupConfig(minhash=MinHashConfig(
        bands=28, rows=4, verify_threshold=0.5)),
    mix=MixConfig(weights=(("wiki", 2.0),)),
    keep_priority=("wiki",),
)
_EVAL = {"quiz": [_QUESTION]}


def _outputs(out: Path) -> dict[str, bytes]:
  """Every output shard and ledger file, by relative path."""
  files = {}
  for path in sorted(out.rglob("*.jsonl")):
    rel = path.relative_to(out).as_posix()
    if rel.startswith("_work/") and not rel.startswith("_work/ledger/"):
      continue
    files[rel] = path.read_bytes()
  return files


def _stable(report):
  return {k: v for k, v in report.items() if k not in ("runner", "work")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return _corpus(tmp_path_factory.mktemp("curation") / "corpus")


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("local")
  report = run_curation(corpus, out, _CONFIG, eval_sets=_EVAL, num_workers=1)
  return out, report


def test_local_run_writes_clean_shards(local_run):
  out, report = local_run
  docs = [json.loads(line) for p in sorted(out.glob("*/*.jsonl"))
          for line in p.read_text().splitlines()]
  ids = {d["id"] for d in docs}
  assert {"wiki-2", "web-0", "web-1"} <= ids  # kept originals
  assert not ids & {"web-8", "web-9", "web-10", "web-11", "web-13", "web-15"}
  by_id = {d["id"]: d for d in docs}
  assert "<EMAIL>" in by_id["web-14"]["text"]
  assert "<PHONE>" in by_id["web-14"]["text"]
  assert "mary.hill" not in json.dumps(docs)  # no raw PII, not even labels
  assert "Home | Shop" not in by_id["web-12"]["text"]
  assert "cookies" not in by_id["web-12"]["text"]
  for d in docs:
    assert set(d) >= {"id", "text", "source"}
    assert not set(d) & {"defects", "pii", "dup_of", "boilerplate_lines"}
  assert sorted(p.parent.name for p in out.glob("*/*.jsonl")) == (
      ["web"] * 4 + ["wiki"] * 3)  # 23 and 14 lines in shards of 6
  assert report["totals"]["docs_out"] == len(docs)


def test_report_counts_every_step_and_bad_record(local_run):
  out, report = local_run
  assert (out / "curation_report.md").read_text().startswith(
      "# Curation report")
  saved = json.loads((out / "curation_report.json").read_text())
  assert saved["totals"] == report["totals"]
  steps = {s["step"]: s for s in report["steps"]}
  assert steps["input"]["removed_by_reason"] == {
      "bad_utf8": 1, "binary": 1, "empty": 1, "malformed_json": 1,
      "missing_text": 1, "not_a_dict": 1, "too_large": 1}
  assert report["totals"]["docs_in"] == 14 + 16 + 7
  # Flow is conserved: what leaves one step enters the next.
  names = [s["step"] for s in report["steps"]]
  for a, b in zip(names, names[1:]):
    assert steps[a]["docs_out"] == steps[b]["docs_in"]
  assert steps["langid"]["removed_by_reason"] == {
      "lang_de": 1, "low_confidence_en": 1}  # German page, spam page
  assert steps["exact_dedup"]["docs_removed"] == 2
  assert steps["near_dedup"]["docs_removed"] == 1
  assert steps["decontam"]["removed_by_reason"] == {"overlap:quiz": 1}
  assert report["pii"] == {"email": {"redactions": 1, "docs": 1},
                           "ip": {"redactions": 0, "docs": 0},
                           "phone": {"redactions": 1, "docs": 1}}
  assert report["contamination"]["quiz"]["docs"] == 1
  assert report["duplicate_clusters"] == {"exact": {"2": 2},
                                          "near": {"2": 1}}
  assert report["boilerplate_lines_removed"] == {"no_terminal_punct": 1,
                                                 "policy": 1}
  mix = {r["source"]: r for r in report["mix"]}
  assert mix["wiki"]["weight"] == 2.0
  assert sum(r["share"] for r in report["mix"]) == pytest.approx(1.0)
  assert mix["wiki"]["share"] == pytest.approx(
      2 * mix["wiki"]["words"] / (2 * mix["wiki"]["words"] +
                                  mix["web"]["words"]))


def test_scores_against_planted_labels(local_run):
  _, report = local_run
  rows = {r["defect"]: r for r in report["scores"]["rows"]}
  for kind in ("boilerplate", "exact_duplicate", "near_duplicate",
               "contamination", "pii"):
    assert rows[kind]["recall"] == 1.0, kind
    assert rows[kind]["precision"] == 1.0, kind
  assert rows["exact_duplicate"]["tp"] == 2
  # The spam page is caught by language ID (low English confidence) before
  # the quality filters see it: a false positive that has another defect.
  assert rows["non_english"]["recall"] == 1.0
  assert rows["non_english"]["fp"] == rows["non_english"]["fp_other"] == 1
  assert rows["low_quality"]["preempted"] == 1
  items = {r["item"].split()[0]: r for r in report["scores"]["items"]}
  assert items["PII"]["recall"] == 1.0
  assert items["boilerplate"]["recall"] == 1.0


def test_resume_skips_completed_work(corpus, local_run, tmp_path,
                                     monkeypatch):
  out = tmp_path / "out"
  real_phase1 = local.phase1_job
  calls = []

  def crash_on_third(spec, config, work):
    calls.append(spec.name)
    if len(calls) == 3:
      raise RuntimeError("simulated crash")
    return real_phase1(spec, config, work)

  monkeypatch.setattr(local, "phase1_job", crash_on_third)
  with pytest.raises(RuntimeError, match="simulated crash"):
    run_curation(corpus, out, _CONFIG, eval_sets=_EVAL, num_workers=1)
  monkeypatch.setattr(local, "phase1_job", real_phase1)
  report = run_curation(corpus, out, _CONFIG, eval_sets=_EVAL, num_workers=1)
  assert report["work"]["phase1"] == {"run": 5, "skipped": 2}
  first = _outputs(out)
  # Interrupted and resumed == never interrupted, byte for byte.
  assert first == _outputs(local_run[0])
  assert _stable(report) == _stable(local_run[1])

  again = run_curation(corpus, out, _CONFIG, eval_sets=_EVAL, num_workers=1)
  assert again["work"] == {"phase1": {"run": 0, "skipped": 7},
                           "dedup": {"run": 0, "skipped": 1},
                           "phase2": {"run": 0, "skipped": 7}}
  (out / "_work" / "p2" / "web-00001.done").unlink()
  (out / "web" / "web-00001.jsonl").unlink()
  third = run_curation(corpus, out, _CONFIG, eval_sets=_EVAL, num_workers=1)
  assert third["work"]["phase2"] == {"run": 1, "skipped": 6}
  assert _outputs(out) == first
  assert _stable(third) == _stable(report)
  other = dataclasses.replace(_CONFIG, examples_per_reason=1)
  with pytest.raises(ValueError, match="different config"):
    run_curation(corpus, out, other, eval_sets=_EVAL, num_workers=1)


def test_parallel_and_beam_match_local(corpus, local_run, tmp_path):
  out_local, report_local = local_run
  parallel = run_curation(corpus, tmp_path / "par", _CONFIG, eval_sets=_EVAL,
                          num_workers=2)
  assert _outputs(tmp_path / "par") == _outputs(out_local)
  assert _stable(parallel) == _stable(report_local)
  beam = run_curation(corpus, tmp_path / "beam", _CONFIG, eval_sets=_EVAL,
                      runner="beam")
  assert _outputs(tmp_path / "beam") == _outputs(out_local)
  assert _stable(beam) == _stable(report_local)


def test_iterable_input_counts_unusable_items(tmp_path):
  rng = random.Random(3)
  docs = [{"id": f"d{i}", "source": "notes", "text": _page(rng)}
          for i in range(5)]
  docs.append(dict(docs[0], id="copy"))
  docs += ["just a string", {"id": "x", "text": object()}]
  report = run_curation(iter(docs), tmp_path / "out", CurationConfig(),
                        num_workers=1)
  steps = {s["step"]: s for s in report["steps"]}
  assert steps["input"]["removed_by_reason"] == {"not_a_dict": 1,
                                                 "not_serializable": 1}
  assert steps["exact_dedup"]["docs_removed"] == 1
  assert report["totals"]["docs_out"] == 5
  assert len((tmp_path / "out" / "notes" / "notes-00000.jsonl").read_text()
             .splitlines()) == 5
  # Default config (no candidate verification) through Beam: same result.
  beam = run_curation(iter(docs), tmp_path / "beam", CurationConfig(),
                      runner="beam")
  assert _outputs(tmp_path / "beam") == _outputs(tmp_path / "out")
  assert _stable(beam) == _stable(report)


# -- kill -9 and resume --------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _launch(corpus_dir, out):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, "curation_driver.py"),
       str(corpus_dir), str(out)], cwd=REPO, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _newest_mtime(out) -> float:
  # The running launch renames its temporary files into place while this
  # walks: a file listed a moment ago may be gone by the stat.
  times = []
  for d, _, fs in os.walk(out):
    for f in fs:
      try:
        times.append(os.path.getmtime(os.path.join(d, f)))
      except FileNotFoundError:
        continue
  return max(times, default=0.0)


def _wait_for_work(proc, out, since, timeout=120):
  """Until the launch writes its first file (imports are done)."""
  t0 = time.monotonic()
  while proc.poll() is None and time.monotonic() - t0 < timeout:
    if _newest_mtime(out) > since:
      return True
    time.sleep(0.005)
  return False


def test_curation_killed_at_random_points_resumes_byte_identical(
    corpus, tmp_path):
  ref = tmp_path / "ref"
  proc = _launch(corpus, ref)
  _wait_for_work(proc, ref, 0.0)
  t_work = time.monotonic()
  assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  t_work = time.monotonic() - t_work  # from the first file to the end
  rng = np.random.default_rng(0)
  outs, kills, launches = [tmp_path / "killed0"], 0, 0
  # 4 launches, and on until 2 kills have landed (a busy machine can make a
  # launch finish before its kill): a launch that finishes must equal the
  # reference, and the next one starts a fresh output.
  while launches < 4 or kills < 2:
    assert launches < 12, (launches, kills)
    out, since = outs[-1], time.time()
    proc = _launch(corpus, out)
    launches += 1
    if _wait_for_work(proc, out, since):
      time.sleep(float(rng.uniform(0.0, 0.8 * t_work)))
      proc.send_signal(signal.SIGKILL)
    rc = proc.wait(timeout=300)
    if rc == -signal.SIGKILL:
      kills += 1
      continue
    assert rc == 0, proc.stderr.read()[-3000:]
    assert _outputs(out) == _outputs(ref)
    outs.append(tmp_path / f"killed{len(outs)}")
  print(f"\ncuration: {kills} kills in {launches} launches, work takes "
        f"{t_work:.2f} s")
  out = outs[-1]
  proc = _launch(corpus, out)
  assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  assert _outputs(out) == _outputs(ref)
