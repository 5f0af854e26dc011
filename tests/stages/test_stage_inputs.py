"""Stages validate their input files (data/validation.py): training data is
skip-and-count by default, eval sets strict; the counts land in
summary.json's input_records."""

import json
import shutil

import pytest

from lifejax import stages
from lifejax.data import validation
from lifejax.train.checkpoint import CheckpointConfig


def _summary(run_dir):
  with open(run_dir / "summary.json", encoding="utf-8") as f:
    return json.load(f)


def test_tiny_runs_report_what_they_read(tiny_runs):
  root, world = tiny_runs
  base = _summary(root / "base")["input_records"]
  wiki = str(world / "corpus" / "wiki.jsonl")
  assert base[wiki]["kind"] == "documents" and base[wiki]["policy"] == "skip"
  assert base[wiki]["read"] > 0 and base[wiki]["skipped"] == {}
  sft = _summary(root / "sft")["input_records"]
  train = str(world / "instructions" / "train.jsonl")
  val = str(world / "instructions" / "validation.jsonl")
  assert sft[train]["policy"] == "skip" and sft[val]["policy"] == "strict"
  assert sft[train]["read"] == sft[train]["kept"] > 0


def _bad_copy(src, dst):
  """`src` with a bad line of each kind before its last line."""
  lines = src.read_text(encoding="utf-8").splitlines()
  good = json.loads(lines[0])
  bad = ['{"messages": [', json.dumps({"id": "no-messages"}),
         json.dumps({"id": "str", "messages": "hello"}),
         json.dumps({**good, "messages": [{"role": "robot",
                                           "content": "beep"}]
                     + good["messages"][1:]})]
  dst.write_text("\n".join(lines[:-1] + bad + lines[-1:]) + "\n",
                 encoding="utf-8")
  return len(lines) - 1  # line number of the first bad line, minus one


def test_sft_skip_bad_skips_and_counts_bad_records(tiny_runs, kit, tmp_path):
  root, world = tiny_runs
  train = tmp_path / "train.jsonl"
  before = _bad_copy(world / "instructions" / "train.jsonl", train)
  common = dict(
      model=kit.TINY, init_from=str(root / "base"), train_files=[str(train)],
      mesh=kit.MESH1, optimizer=kit.opt(1), loop=kit.loop(1),
      checkpoint=CheckpointConfig(every_steps=100), batch_size=4,
      seq_len=384, eval_generation_records=0)
  with pytest.raises(validation.RecordError,
                     match=f"^{train}:{before + 1}: bad_json"):
    stages.sft(run_dir=str(tmp_path / "strict"), skip_bad=False, **common)
  stages.sft(run_dir=str(tmp_path / "skip"), skip_bad=True, **common)
  counts = _summary(tmp_path / "skip")["input_records"][str(train)]
  assert counts["skipped"] == {"bad_json": 1, "missing_field": 1,
                               "wrong_type": 1, "unknown_role": 1}
  assert counts["kept"] == counts["read"] - 4 == before + 1


@pytest.mark.parametrize("policy", validation.POLICIES)
def test_an_empty_training_file_is_an_error(tiny_runs, kit, tmp_path, policy):
  _, world = tiny_runs
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  wiki = tmp_path / "wiki.jsonl"
  shutil.copy(world / "corpus" / "wiki.jsonl", wiki)
  with pytest.raises(validation.RecordError,
                     match=f"^{empty}: empty_file: the file has no records"):
    stages.pretrain(
        run_dir=str(tmp_path / "run"), model=kit.TINY,
        train_files=[str(wiki), str(empty)], mesh=kit.MESH1,
        optimizer=kit.opt(1), loop=kit.loop(1), batch_size=2, seq_len=32,
        eval_holdout=0.1, bad_records=policy)
