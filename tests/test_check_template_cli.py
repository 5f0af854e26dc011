"""tools/check_template.py: run directory / template name inputs, output and
exit status."""

import importlib.util
import json
import os

import pytest

from lifejax.data import chat, chat_render
from lifejax.data import tokenizer as tokenizer_lib
from lifejax.run import artifacts
from lifejax.run.layout import RunDir

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "tools", "check_template.py")
_spec = importlib.util.spec_from_file_location("check_template", _PATH)
check_template = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_template)

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there!"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """An SFT-like run directory: chat_template.json + tokenizer.model."""
  d = tmp_path_factory.mktemp("sft_run")
  tokenizer_lib.train_sentencepiece(
      ["Be brief. Hi there! Hello."] * 30, d / "tokenizer", 300)
  artifacts.save_template(str(d), chat.LIFEJAX)
  return d


def _write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    for x in lines:
      f.write(json.dumps(x) + "\n")
  return str(path)


def test_clean_prompts_pass(run_dir, tmp_path, capsys):
  tok = tokenizer_lib.load_tokenizer(RunDir(run_dir).tokenizer_model)
  prompts = _write(tmp_path / "p.jsonl", [
      chat_render.render_text(chat.LIFEJAX, CONV, add_generation_prompt=True),
      chat_render.render_prompt(chat.LIFEJAX, tok, CONV),
      {"ids": chat_render.render_prompt(chat.LIFEJAX, tok, CONV[1:])},
      {"text": chat_render.render_text(chat.LIFEJAX, CONV[1:],
                                       add_generation_prompt=True)}])
  assert check_template.main([f"--run_dir={run_dir}",
                              f"--prompts={prompts}"]) == 0
  assert "OK: all 4 prompts match template 'lifejax'" in capsys.readouterr().out


def test_findings_fail_and_are_explained(run_dir, tmp_path, capsys):
  tok = tokenizer_lib.load_tokenizer(RunDir(run_dir).tokenizer_model)
  ids = chat_render.render_prompt(chat.LIFEJAX, tok, CONV)
  prompts = _write(tmp_path / "p.jsonl", [
      ids, [tok.bos_id] + ids, ids[:-1],
      chat_render.render_text(chat.CHATML, CONV, add_generation_prompt=True)])
  out_json = tmp_path / "findings.json"
  assert check_template.main([f"--run_dir={run_dir}", f"--prompts={prompts}",
                              f"--json={out_json}"]) == 1
  out = capsys.readouterr().out
  assert "prompt 1: duplicated_bos" in out
  assert "prompt 2: missing_generation_prompt" in out
  assert "prompt 3: mixed_templates" in out
  assert "prompt 0:" not in out
  assert "twice" in out or "more than one BOS" in out  # the explanation
  report = json.loads(out_json.read_text())
  assert report["counts"] == {"duplicated_bos": 1,
                              "missing_generation_prompt": 1,
                              "mixed_templates": 1}


def test_template_by_name_and_bad_input(run_dir, tmp_path, capsys):
  text = chat_render.render_text(chat.CHATML, CONV, add_generation_prompt=True)
  prompts = _write(tmp_path / "p.jsonl", [{"prompt": text}])
  tok = RunDir(run_dir).tokenizer_model
  assert check_template.main(["--template=chatml", f"--tokenizer={tok}",
                              f"--prompts={prompts}"]) == 0
  assert check_template.main([
      f"--template={RunDir(run_dir).chat_template}", f"--tokenizer={tok}",
      f"--prompts={prompts}"]) == 1
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "ok"}\n{"nothing": 1}\n')
  capsys.readouterr()
  assert check_template.main(["--template=chatml", f"--tokenizer={tok}",
                              f"--prompts={bad}"]) == 2
  assert "bad.jsonl:2" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    check_template.main([f"--prompts={prompts}"])
