"""lifejax.run.lineage: the one writer and reader of lineage.json."""

import dataclasses
import json
import os

import pytest

from lifejax.model.config import TransformerConfig
from lifejax.run.layout import RunDir
from lifejax.run.lineage import (
    LINEAGE_VERSION, Lineage, LineageVersionError, TokenizerRef, file_digest,
    file_inputs, read_lineage, write_lineage)

MODEL = TransformerConfig(
    vocab_size=300, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
    mlp_dim=64, max_seq_len=128, rope_theta=500000.0, tie_embeddings=True,
    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64},
    param_dtype="bfloat16")


def _full(tmp_path) -> Lineage:
  data = tmp_path / "train.jsonl"
  data.write_text('{"text": "a"}\n')
  return Lineage(
      stage="dpo", model_kind="policy", model=MODEL,
      init_from=str(tmp_path / "sft"), reference=str(tmp_path / "sft"),
      tokenizer=TokenizerRef(str(tmp_path / "tokenizer.model"), 300,
                             "0123456789abcdef"),
      chat_template={"name": "lifejax", "alternate": True},
      inputs={"train_files": file_inputs([str(data)])},
      details={"loss": "dpo", "loss_hparams": {"beta": 0.1},
               "train_pairs": 12, "reward": {"run": None, "kind": "judge"}})


def test_round_trip_is_exact(tmp_path):
  lineage = _full(tmp_path)
  path = write_lineage(str(tmp_path / "run"), lineage)
  assert path == RunDir(tmp_path / "run").lineage
  back = read_lineage(str(tmp_path / "run"))
  assert back == lineage
  assert back.model.rope_scaling == MODEL.rope_scaling
  assert isinstance(back.model.rope_scaling, tuple)  # hashable, as built
  assert back.model.rope_scaling_dict == MODEL.rope_scaling_dict
  assert isinstance(back.tokenizer, TokenizerRef)
  with open(path) as f:
    raw = json.load(f)
  assert next(iter(raw)) == "version" and raw["version"] == LINEAGE_VERSION
  assert raw["model"]["param_dtype"] == "bfloat16"


def test_minimal_lineage_round_trips(tmp_path):
  lineage = Lineage(stage="rlaif", model_kind="preference_data")
  write_lineage(str(tmp_path), lineage)
  back = read_lineage(str(tmp_path))
  assert back == lineage
  assert back.model is None and back.inputs == {} and back.details == {}


def test_defaults_are_not_shared():
  a, b = Lineage("sft", "lm"), Lineage("sft", "lm")
  a.inputs["train_files"] = {"/x": "y"}
  assert b.inputs == {}


def test_model_kind_is_checked():
  with pytest.raises(ValueError, match="model_kind='critic'"):
    Lineage(stage="ppo", model_kind="critic")


@pytest.mark.parametrize("version,who", [(None, "older"), (0, "older"),
                                         (LINEAGE_VERSION + 1, "newer")])
def test_other_versions_are_refused(tmp_path, version, who):
  d = _full(tmp_path).to_json()
  if version is None:
    del d["version"]  # what the stages wrote before lineage was versioned
  else:
    d["version"] = version
  path = RunDir(tmp_path).lineage
  with open(path, "w") as f:
    json.dump(d, f)
  with pytest.raises(LineageVersionError) as e:
    read_lineage(str(tmp_path))
  msg = str(e.value)
  found = "no version" if version is None else f"version {version!r}"
  assert path in msg and found in msg
  assert f"reads lineage version {LINEAGE_VERSION}" in msg
  assert f"{who} lifejax" in msg and "rerunning its stage" in msg


def test_old_flat_lineage_is_refused(tmp_path):
  with open(RunDir(tmp_path).lineage, "w") as f:
    json.dump({"stage": "sft", "model": dataclasses.asdict(MODEL),
               "train_files": {}}, f, default=str)
  with pytest.raises(LineageVersionError, match="older lifejax"):
    read_lineage(str(tmp_path))


def test_garbage_and_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="lineage.json"):
    read_lineage(str(tmp_path))
  path = RunDir(tmp_path).lineage
  with open(path, "w") as f:
    f.write('{"version": 1, "stage": ')
  with pytest.raises(ValueError, match="not valid JSON") as e:
    read_lineage(str(tmp_path))
  assert path in str(e.value) and not isinstance(e.value,
                                                 LineageVersionError)
  with open(path, "w") as f:
    json.dump([1, 2], f)
  with pytest.raises(ValueError, match="expected a JSON object"):
    read_lineage(str(tmp_path))
  with open(path, "w") as f:
    json.dump({"version": 1, "stage": "sft", "model_kind": "lm",
               "extra_field": 1}, f)
  with pytest.raises(ValueError, match=r"malformed lineage.*extra_field"):
    read_lineage(str(tmp_path))
  with open(path, "w") as f:
    json.dump({"version": 1, "stage": "sft", "model_kind": "lm",
               "model": {"d_model": 32, "no_such_field": 1}}, f)
  with pytest.raises(ValueError, match="malformed lineage"):
    read_lineage(str(tmp_path))


def test_file_inputs(tmp_path):
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  a.write_text("one\n")
  b.write_text("two\n")
  got = file_inputs([str(a), os.path.relpath(b)])
  assert list(got) == [str(a), str(b)]
  assert got[str(a)] == file_digest(str(a)) != got[str(b)]
  assert got[str(a)] == "2c8b08da5ce60398"  # sha256("one\n")[:16]
