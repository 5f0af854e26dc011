"""Checks serving prompts against the chat template a model was trained with.

  python tools/check_template.py --run_dir=runs/sft --prompts=prompts.jsonl
  python tools/check_template.py --template=chatml --tokenizer=sp.model \
      --prompts=prompts.jsonl --system_prompt="You are a helpful assistant."

The template comes from the run directory's chat_template.json (or
--template: a registered name or a chat_template.json path); the tokenizer
from --tokenizer (a SentencePiece .model), else the run directory's (the
file its lineage names, else its own tokenizer files). Each line of the prompts file is one prompt: a JSON string,
a JSON list of token ids, or an object with "text"/"prompt" (string) or
"ids"/"prompt_ids"/"tokens" (token ids).

Prints one line per finding and a summary explaining each kind found. Exit
status: 0 all prompts match, 1 findings, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any

from lifejax.data import chat
from lifejax.data import chat_parity
from lifejax.data import tokenizer as tokenizer_lib
from lifejax.run import artifacts

_TEXT_KEYS = ("text", "prompt")
_ID_KEYS = ("ids", "prompt_ids", "tokens")


def _prompt(value: Any, where: str) -> str | list[int]:
  if isinstance(value, dict):
    for key in _TEXT_KEYS + _ID_KEYS:
      if key in value:
        return _prompt(value[key], f"{where} field {key!r}")
    raise ValueError(f"{where}: an object needs one of "
                     f"{list(_TEXT_KEYS + _ID_KEYS)}")
  if isinstance(value, str):
    return value
  if isinstance(value, list) and all(
      isinstance(i, int) and not isinstance(i, bool) for i in value):
    return value
  raise ValueError(f"{where}: a prompt is text or a list of token ids, got "
                   f"{type(value).__name__}")


def read_prompts(path: str) -> list[str | list[int]]:
  """The prompts of a JSONL file (blank lines skipped)."""
  prompts = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: bad JSON: {e}") from None
      prompts.append(_prompt(value, f"{path}:{line_no}"))
  return prompts


def _template(args: argparse.Namespace) -> chat.ChatTemplate:
  if args.template:
    if os.path.isfile(args.template):
      with open(args.template, encoding="utf-8") as f:
        return chat.ChatTemplate.from_json(f.read())
    return chat.get_template(args.template)
  return artifacts.load_template(args.run_dir)


def _tokenizer(args: argparse.Namespace) -> Any:
  if args.tokenizer:
    return tokenizer_lib.load_tokenizer(args.tokenizer)
  if args.run_dir:
    return artifacts.load_tokenizer(args.run_dir)
  raise ValueError("no tokenizer: pass --tokenizer (or a --run_dir with "
                   "its tokenizer)")


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run_dir", default=None,
                 help="SFT run directory holding chat_template.json")
  p.add_argument("--template", default=None,
                 help="registered template name or chat_template.json path")
  p.add_argument("--tokenizer", default=None, help="SentencePiece .model")
  p.add_argument("--prompts", required=True, help="JSONL file of prompts")
  p.add_argument("--system_prompt", action="append", default=[],
                 help="a system prompt used in training (repeatable)")
  p.add_argument("--json", default=None, help="also write findings here")
  args = p.parse_args(argv)
  if not args.run_dir and not args.template:
    p.error("pass --run_dir or --template")
  try:
    template = _template(args)
    tokenizer = _tokenizer(args)
    prompts = read_prompts(args.prompts)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  findings = chat_parity.check_parity(template, tokenizer, prompts,
                                      system_prompts=args.system_prompt)
  for f in findings:
    print(f)
  kinds = collections.Counter(f.kind for f in findings)
  if findings:
    print(f"\n{len(findings)} findings in {len(prompts)} prompts "
          f"(template {template.name!r}):")
    for kind, n in sorted(kinds.items()):
      print(f"  {kind} x{n}: {chat_parity.FINDING_KINDS[kind]}")
  else:
    print(f"OK: all {len(prompts)} prompts match template {template.name!r}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"template": template.name, "num_prompts": len(prompts),
                 "findings": [dict(kind=x.kind, index=x.index,
                                   detail=x.detail) for x in findings],
                 "counts": dict(kinds)}, f, indent=2)
  return 1 if findings else 0


if __name__ == "__main__":
  sys.exit(main())
