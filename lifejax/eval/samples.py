"""Eval samples a trainer writes into its run directory: the generated
answers of an eval step (samples/step_<step>.jsonl, one JSON object a line)
and the base-vs-final side-by-side page (side_by_side.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lifejax.data import prompts
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.run.layout import RunDir
from lifejax.world import judge

Record = Mapping[str, Any]


def write_step_samples(run_dir: str, step: int,
                       rows: Iterable[Mapping[str, Any]]) -> str:
  """samples/step_<step>.jsonl with one row a line; returns its path."""
  return write_jsonl(RunDir(run_dir).sample_file(step), rows)


def write_samples(run_dir: str, step: int, records: Sequence[Record],
                  responses: Sequence[str]) -> str:
  """Each record's id, task, prompt messages and generated response."""
  return write_step_samples(run_dir, step, (
      {"id": r.get("id"), "task": r.get("task"),
       "prompt": prompts.prompt_messages(r), "response": resp}
      for r, resp in zip(records, responses)))


def write_policy_answers(run_dir: str, step: int, records: Sequence[Record],
                         answers: Sequence[str],
                         reference_answers: Sequence[str]) -> str:
  """Each record's id, task, the policy's answer and the reference's."""
  return write_step_samples(run_dir, step, (
      {"id": rec.get("id"), "task": rec.get("task"), "response": ans,
       "reference_response": ref}
      for rec, ans, ref in zip(records, answers, reference_answers)))


def write_side_by_side(run_dir: str, records: Sequence[Record]) -> str | None:
  """side_by_side.md: the model SFT started from (the step-0 eval samples)
  next to the final SFT model, on the same prompts, each scored by the
  world's judge. Returns its path, or None without step-0 and later samples.
  """
  run = RunDir(run_dir)
  steps = run.sample_steps()
  if len(steps) < 2 or steps[0] != 0:
    return None

  def load(step):
    return {r["id"]: r for r in read_jsonl(run.sample_file(step))}

  base, last = load(0), load(steps[-1])
  by_id = {r.get("id"): r for r in records}
  lines = ["# Base vs SFT on the same prompts", "",
           f"Base: the model SFT started from (step 0). SFT: step "
           f"{steps[-1]}. Greedy generations; judge = the world's judge "
           "(0-1, correctness, format, politeness, length, safety).", ""]

  def quote(text: str) -> list[str]:
    rows = (text or "(empty)").split("\n")
    return [f"> {ln}" if ln else ">" for ln in rows]

  for rid, b in base.items():
    if rid not in last:
      continue
    rec = by_id.get(rid)
    prompt = b["prompt"][-1]["content"] if b.get("prompt") else ""
    lines += [f"## {rid} ({b.get('task')})", "", "Prompt (last user turn):",
              ""] + quote(prompt) + [""]
    for name, r in (("Base", b), ("SFT", last[rid])):
      tag = ""
      if rec is not None:
        tag = f" (judge {judge.score(rec, r['response']).total:.2f})"
      lines += [f"**{name}**{tag}:", ""] + quote(r["response"]) + [""]
  path = run.side_by_side
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path
