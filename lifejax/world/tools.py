"""Tools a policy can call in the embedded world: the company directory.

A tool call is an assistant turn whose text starts with `<name>:` (e.g.
"lookup: Selma Holley"); the environment answers with an observation turn
(a user turn, so every chat template can carry it) and the policy writes
its next assistant turn. `Directory` is the company directory: it returns
the statements the world's fact table holds about every entity named in
the query, held-out facts included (a tool reaches what pretraining never
stated; facts/facts.jsonl is the world's ground truth).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Tool(Protocol):
  """A callable tool: `parse` finds a call in an assistant turn's text
  (None: the turn is an answer), `__call__` runs it, `observation` words
  the result as the observation turn's content."""

  name: str

  def parse(self, text: str) -> str | None: ...

  def __call__(self, query: str) -> str: ...

  def observation(self, query: str, result: str) -> str: ...


def _norm(text: str) -> str:
  return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@dataclasses.dataclass(frozen=True)
class Directory:
  """The company directory over a fact table.

  facts: rows with "subject" and "statement" (facts/facts.jsonl's). A query
  matches every subject whose words all occur in it, as a phrase; the
  result lists each matched subject's statements in table order, the
  longest subjects first (so "Finance department budget" finds Finance),
  at most `max_facts` of them.
  """

  facts: tuple[Mapping[str, Any], ...]
  max_facts: int = 6
  name: str = "lookup"

  def __post_init__(self):
    for i, f in enumerate(self.facts):
      if not isinstance(f.get("subject"), str) or not isinstance(
          f.get("statement"), str):
        raise ValueError(f"directory fact {i}: needs string 'subject' and "
                         f"'statement', got {sorted(f)}")

  @classmethod
  def from_world(cls, world_dir: str, **kwargs: Any) -> Directory:
    """The directory of a generated world (its facts/facts.jsonl)."""
    path = os.path.join(world_dir, "facts", "facts.jsonl")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: the directory tool reads "
                              "a generated world's fact table")
    rows = []
    with open(path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except ValueError as e:
            raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
    return cls(tuple(rows), **kwargs)

  def parse(self, text: str) -> str | None:
    head, sep, rest = text.strip().partition(":")
    if not sep or head.strip().lower() != self.name:
      return None
    query = rest.strip().splitlines()[0].strip() if rest.strip() else ""
    return query or None

  @functools.cached_property
  def _index(self) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """([(subject, its normalized words)] longest first, {subject: its
    statements in table order}), built once."""
    statements: dict[str, list[str]] = {}
    for f in self.facts:
      statements.setdefault(f["subject"], []).append(f["statement"])
    subjects = sorted(statements, key=lambda s: (-len(s), s))
    return [(s, _norm(s)) for s in subjects if _norm(s)], statements

  def matches(self, query: str) -> list[str]:
    """Subjects named in `query`, longest first."""
    q = f" {_norm(query)} "
    return [s for s, norm in self._index[0] if f" {norm} " in q]

  def __call__(self, query: str) -> str:
    statements = self._index[1]
    out: list[str] = []
    for subject in self.matches(query):
      out += statements[subject]
    if not out:
      return ""
    return " ".join(out[:self.max_facts])

  def observation(self, query: str, result: str) -> str:
    if not result:
      return f"Directory: no entry matches \"{query}\"."
    return f"Directory: {result}"


def call_text(tool: Tool, query: str) -> str:
  """The assistant turn that calls `tool` with `query`."""
  return f"{tool.name}: {query}"


def tool_use_messages(tool: Tool, question: str, query: str, answer: str
                      ) -> list[dict[str, str]]:
  """A worked tool-use conversation (for SFT): the question, the call, the
  observation, the answer."""
  return [{"role": "user", "content": question},
          {"role": "assistant", "content": call_text(tool, query)},
          {"role": "user", "content": tool.observation(query, tool(query))},
          {"role": "assistant", "content": answer}]


TOOLS = ("directory",)


def make_tool(name: str, world_dir: str) -> Tool:
  """A tool by name for a generated world."""
  if name == "directory":
    return Directory.from_world(world_dir)
  raise KeyError(f"unknown tool {name!r}; choose one of {TOOLS}")


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def tool_use_sets(world_dir: str, out_dir: str,
                  splits: Sequence[str] = ("train", "validation", "test")
                  ) -> dict[str, dict[str, int]]:
  """Tool-use data from a generated world's closed-book fact questions:

    tool_use_<split>.jsonl  SFT conversations: the question, the call
      ("lookup: <subject>"), the directory's observation, the record's
      answer (messages; task, reference and id kept, so the judge scores
      the final answer); only records whose answer is a clean
      demonstration (no `flaw`).
    fact_qa_<split>.jsonl   the same questions as prompt records (the
      RL task: reward on the final answer).

  Returns per split the counts written and skipped (open-book questions
  carry their excerpt, flawed demonstrations teach the wrong answer).
  """
  directory = Directory.from_world(world_dir)
  by_id = {f["id"]: f for f in _read_jsonl(
      os.path.join(world_dir, "facts", "facts.jsonl"))}
  os.makedirs(out_dir, exist_ok=True)
  counts = {}
  for split in splits:
    path = os.path.join(world_dir, "instructions", f"{split}.jsonl")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing (a generated world's "
                              "instruction split)")
    sft, prompts = [], []
    skipped = {"open_book": 0, "flawed": 0}
    for rec in _read_jsonl(path):
      if rec.get("task") != "fact_qa":
        continue
      ref = rec["reference"]
      if ref.get("open_book"):
        skipped["open_book"] += 1
        continue
      prompts.append(rec)
      if rec.get("flaw"):
        skipped["flawed"] += 1
        continue
      msgs = rec["messages"]
      system = [m for m in msgs if m["role"] == "system"]
      question = next(m["content"] for m in msgs if m["role"] == "user")
      answer = msgs[-1]["content"]
      subject = by_id[ref["fact_id"]]["subject"]
      sft.append({**{k: v for k, v in rec.items() if k != "messages"},
                  "id": f"tool-{rec['id']}",
                  "messages": system + tool_use_messages(
                      directory, question, subject, answer)})
    for name, rows in ((f"tool_use_{split}.jsonl", sft),
                       (f"fact_qa_{split}.jsonl", prompts)):
      with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
        for r in rows:
          f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts[split] = {"tool_use": len(sft), "fact_qa": len(prompts),
                     **skipped}
  return counts


def main(argv: Sequence[str]) -> int:
  if len(argv) != 3:
    print("usage: python -m lifejax.world.tools WORLD_DIR OUT_DIR\n"
          + (tool_use_sets.__doc__ or ""), file=sys.stderr)
    return 2
  print(json.dumps(tool_use_sets(argv[1], argv[2]), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
