"""The stage audit card of a real tiny lifecycle and tools/audit.py."""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import gin
import yaml

from lifejax.eval import card, card_audit
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.run.lineage import read_lineage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
AUDIT = os.path.join(REPO, "tools", "audit.py")


def _sha(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _read(path: str):
  with open(path, encoding="utf-8") as f:
    return yaml.safe_load(f) if path.endswith(".yaml") else json.load(f)


def _runs(root: str) -> dict[str, str]:
  # The ledger names run directories relative to the root.
  return {s["name"]: os.path.join(root, s["run_dir"])
          for s in _read(LifecycleRoot(root).ledger)["stages"]}


def _audit_cli(card_path: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, AUDIT, card_path], cwd=REPO,
                        capture_output=True, text=True, check=False)


def test_card_is_filled_from_the_runs(tiny_lifecycle):
  runs = _runs(tiny_lifecycle)
  path = card.write_model_card(tiny_lifecycle, "dpo")
  assert path == RunDir(runs["dpo"]).model_card
  c = _read(path)
  assert set(card_audit.SECTIONS) <= set(c)
  assert [e["stage"] for e in c["lineage"]] == ["dpo", "sft", "pretrain"]
  here = os.path.dirname(path)

  def resolve(p):
    return os.path.normpath(os.path.join(here, p))

  # Config hashes are the sha256 of each run's operative config.
  for entry in c["lineage"]:
    cfg = resolve(entry["config"]["path"])
    assert cfg == RunDir(runs[entry["stage"]]).operative_gin
    assert entry["config"]["sha256"] == _sha(cfg)
  # Data manifests name the files each stage read, with full hashes that
  # extend the digests the stages recorded.
  sft_inputs = read_lineage(runs["sft"]).inputs
  files = {resolve(f["path"]): f for f in c["sft_dataset"]["files"]}
  # Every input role the lineage records (train, general, eval and the
  # forgetting panel's general_eval_files).
  assert set(sft_inputs["train_files"]) and set(sft_inputs["general_files"])
  assert set(files) == set().union(*sft_inputs.values())
  for p, f in files.items():
    assert f["sha256"] == _sha(p)
    assert f["sha256"].startswith(f["recorded_sha256_16"])
  pre_lineage = read_lineage(runs["pretrain"])
  assert {resolve(f["path"]) for f in c["base_model"]["pretraining_data"]
          } == set(pre_lineage.inputs["train_files"])
  assert c["base_model"]["stage"] == "pretrain"
  assert c["base_model"]["tokenizer"]["sha256"] == _sha(
      pre_lineage.tokenizer.path)
  assert c["preference_dataset"]["loss"] == "dpo"
  assert [(r["role"], r["stage"]) for r in c["related_runs"]] == [
      ("reference", "sft")]
  assert c["chat_template"]["template"] == _read(
      RunDir(runs["sft"]).chat_template)
  # The evaluation and the safety report come from the stage's eval.json.
  ev = _read(RunDir(runs["dpo"]).eval)
  assert c["eval_report"]["metrics"]["win_rate_vs_ref"] == ev[
      "win_rate_vs_ref"]
  assert c["safety_report"]["refusal_correctness"] == ev["instruct/refusal"]
  assert c["safety_report"]["over_refusal"] == ev["instruct/over_refusal"]
  leak = c["safety_report"]["pii_leakage"]
  assert leak["answers_judged"] > 0 and 0 <= leak["leaks"] <= leak[
      "answers_judged"]
  # Rollback: the earlier stages' latest checkpoints, hashed as trees.
  assert [r["stage"] for r in c["rollback_artifacts"]] == ["sft", "pretrain"]
  for r in c["rollback_artifacts"]:
    ck = r["checkpoint"]
    run = RunDir(runs[r["stage"]])
    assert resolve(ck["path"]) == os.path.join(
        run.checkpoints, str(run.checkpoint_steps()[-1]))
    assert ck["sha256"] == card_audit.sha256_dir(resolve(ck["path"]))
    assert f"--run_dir={runs[r['stage']]}" in r["restore"]["export_hf"]


def test_restore_commands_run(tiny_lifecycle, tmp_path):
  runs = _runs(tiny_lifecycle)
  c = _read(card.write_model_card(tiny_lifecycle, "dpo"))
  sft = c["rollback_artifacts"][0]
  # The rerun command's gin bindings parse and point at the SFT checkpoint.
  argv = shlex.split(sft["restore"]["rerun_dpo"])
  assert argv[:3] == ["python", "-m", "lifejax.main"]
  from lifejax import main as main_lib  # pylint: disable=g-import-not-at-top
  try:
    main_lib.parse_gin(
        [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")],
        [a.split("=", 1)[1] for a in argv if a.startswith("--gin_param=")])
    assert gin.query_parameter("dpo.init_from") == runs["sft"]
    assert gin.query_parameter("TransformerConfig.d_model") == read_lineage(
        runs["sft"]).model.d_model
  finally:
    gin.clear_config()
  # The export command writes a HF checkpoint of exactly that step.
  argv = shlex.split(sft["restore"]["export_hf"])
  hf_dir = str(tmp_path / "hf")
  argv = [a if not a.startswith("--hf_dir=") else f"--hf_dir={hf_dir}"
          for a in argv]
  assert argv[0] == "python"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  subprocess.run([sys.executable] + argv[1:], cwd=REPO, env=env, check=True,
                 capture_output=True)
  assert os.path.isfile(os.path.join(hf_dir, "config.json"))
  assert any(f.endswith(".safetensors") for f in os.listdir(hf_dir))


def test_audit_passes_then_names_tampered_and_missing(lifecycle_copy):
  root = lifecycle_copy(heavy=True)  # a relocated root: relative paths
  lr = LifecycleRoot(root)
  path = lr.stage("dpo").model_card
  assert os.path.isfile(path)  # written by the lifecycle itself
  assert card_audit.audit_card(path) == []
  out = _audit_cli(path)
  assert out.returncode == 0, out.stderr
  assert "artifacts intact" in out.stdout

  ckpt = lr.stage("sft").checkpoints
  step_dir = os.path.join(ckpt, max(os.listdir(ckpt), key=int))
  victim = next(os.path.join(d, f) for d, _, fs in sorted(os.walk(step_dir))
                for f in sorted(fs))
  with open(victim, "ab") as f:
    f.write(b"\0")
  problems = card_audit.audit_card(path)
  rel = os.path.relpath(step_dir, os.path.dirname(path))
  # Named wherever the card references it (rollback, DPO's reference).
  assert {(p.status, p.path) for p in problems} == {("tampered", rel)}
  assert "rollback_artifacts[0].checkpoint" in {p.where for p in problems}
  out = _audit_cli(path)
  assert out.returncode == 1
  assert f"tampered: {rel}" in out.stderr

  os.remove(lr.world_preferences("train"))
  problems = card_audit.audit_card(path)
  missing = {p.path for p in problems if p.status == "missing"}
  assert missing == {"../world/preferences/train.jsonl"}
  out = _audit_cli(path)
  assert out.returncode == 1 and "missing: ../world/preferences" in out.stderr

  shutil.rmtree(lr.stage("pretrain").best)
  assert {p.path for p in card_audit.audit_card(path)
          if p.status == "missing"} > {"../world/preferences/train.jsonl"}


def test_sha256_dir_sees_names_and_contents(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for d in (a, b):
    (d / "sub").mkdir(parents=True)
    (d / "x.bin").write_bytes(b"123")
    (d / "sub" / "y.bin").write_bytes(b"456")
  assert card_audit.sha256_dir(str(a)) == card_audit.sha256_dir(str(b))
  (b / "sub" / "y.bin").rename(b / "sub" / "z.bin")
  assert card_audit.sha256_dir(str(a)) != card_audit.sha256_dir(str(b))
  (b / "sub" / "z.bin").rename(b / "sub" / "y.bin")
  (b / "x.bin").write_bytes(b"124")
  assert card_audit.sha256_dir(str(a)) != card_audit.sha256_dir(str(b))


def test_audit_flags_unhashed_sections_and_data_changed_since_training(
    tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text('{"text": "a"}\n')
  digest = card_audit.sha256_file(str(data))
  doc = {"lineage": [{"data": [
      {"path": "train.jsonl", "sha256": digest,
       "recorded_sha256_16": digest[:16]}]}]}
  path = tmp_path / "model_card.yaml"
  path.write_text(yaml.safe_dump(doc))
  problems = card_audit.audit_card(str(path))
  assert {p.where for p in problems if p.status == "missing_section"} == (
      set(card_audit.SECTIONS) - {"lineage"})
  assert [p for p in problems if p.status != "missing_section"] == []
  # The card was written after the file changed: its hash agrees, but the
  # stage trained on other bytes.
  data.write_text('{"text": "b"}\n')
  doc["lineage"][0]["data"][0]["sha256"] = card_audit.sha256_file(str(data))
  doc["lineage"][0]["data"].append({"path": "nothing_here.bin",
                                    "sha256": None})
  path.write_text(yaml.safe_dump(doc))
  statuses = {p.path: p.status for p in card_audit.audit_card(str(path))
              if p.status != "missing_section"}
  assert statuses == {"train.jsonl": "changed_since_training",
                      "nothing_here.bin": "missing"}
