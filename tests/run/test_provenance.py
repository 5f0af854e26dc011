"""A recording's code fingerprint, and the check that tells a stale
recording from a fresh one (tools/check_recording.py)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from lifejax.run import provenance

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "check_recording.py")


def _tool():
  spec = importlib.util.spec_from_file_location("check_recording", TOOL)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _tree(root):
  files = {"lifejax/a.py": "x = 1\n", "lifejax/world/grammars/g.json": "{}",
           "gin_configs/m.gin": "a.b = 1\n", "lifejax/notes.txt": "n",
           "README.md": "r"}
  for rel, text in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w") as f:
      f.write(text)


def test_fingerprint_tracks_code_data_and_configs_only(tmp_path):
  _tree(tmp_path)
  fp = provenance.code_fingerprint(str(tmp_path))
  assert sorted(fp["files"]) == ["gin_configs/m.gin", "lifejax/a.py",
                                 "lifejax/world/grammars/g.json"]
  assert fp["git_commit"] is None  # not a git checkout
  assert provenance.stale_files(fp, str(tmp_path)) == {
      "changed": [], "added": [], "removed": []}
  # Files that cannot change a run do not make it stale.
  (tmp_path / "README.md").write_text("changed")
  assert provenance.code_fingerprint(str(tmp_path))["sha256"] == fp["sha256"]


def test_changed_added_and_removed_files_are_named(tmp_path):
  _tree(tmp_path)
  fp = provenance.code_fingerprint(str(tmp_path))
  (tmp_path / "lifejax" / "a.py").write_text("x = 2\n")
  (tmp_path / "gin_configs" / "new.gin").write_text("c.d = 2\n")
  os.remove(tmp_path / "lifejax" / "world" / "grammars" / "g.json")
  assert provenance.stale_files(fp, str(tmp_path)) == {
      "changed": ["lifejax/a.py"], "added": ["gin_configs/new.gin"],
      "removed": ["lifejax/world/grammars/g.json"]}
  assert provenance.code_fingerprint(str(tmp_path))["sha256"] != fp["sha256"]
  with pytest.raises(ValueError, match="no code fingerprint"):
    provenance.stale_files(None, str(tmp_path))


def test_check_recording_on_this_tree(tmp_path):
  tool = _tool()
  fp = provenance.code_fingerprint()
  assert "lifejax/stages/lifecycle.py" in fp["files"]
  with open(tmp_path / "lifecycle.json", "w") as f:
    json.dump({"stages": [], "code": fp}, f)
  fresh, message = tool.check(str(tmp_path))
  assert fresh, message
  fp["files"]["lifejax/stages/lifecycle.py"] = "0" * 16
  with open(tmp_path / "lifecycle.json", "w") as f:
    json.dump({"stages": [], "code": fp}, f)
  fresh, message = tool.check(str(tmp_path))
  assert not fresh and "changed: lifejax/stages/lifecycle.py" in message
  with open(tmp_path / "lifecycle.json", "w") as f:
    json.dump({"stages": []}, f)
  fresh, message = tool.check(str(tmp_path))
  assert not fresh and "no code fingerprint" in message
  assert tool.main(["check_recording.py", str(tmp_path)]) == 1
