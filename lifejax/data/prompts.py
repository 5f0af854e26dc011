"""Prompts of records: record -> prompt messages -> token ids -> left-padded
(B, P) arrays.

Two record kinds carry a prompt: an instruction (SFT) record's "messages"
end with the reference assistant answer, which the prompt leaves out; a
preference record's "prompt" is the message list up to the last user turn.
Every stage and evaluation that generates from a record renders its prompt
here, so a policy is sampled, scored and judged on the same ids.
`load_prompts` reads a JSONL file of such records, each checked as it is
read (validation.py's skip policy, errors at `path:line`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lifejax.data import chat, chat_render, jsonl, validation

Record = Mapping[str, Any]


def drop_answer(messages: Sequence[Any]) -> list[Any]:
  """`messages` without their trailing assistant turns (the answer).

  Anything that is not a message mapping is kept, so that rendering reports
  it as a malformed conversation instead of failing here.
  """
  msgs = list(messages)
  while (msgs and isinstance(msgs[-1], Mapping)
         and msgs[-1].get("role") == "assistant"):
    msgs.pop()
  return msgs


def prompt_messages(record: Record) -> list[dict[str, str]]:
  """A record's prompt: a preference record's "prompt" messages, or an
  instruction record's "messages" without the final assistant answer.
  ConversationError ("missing_field") if it has neither list."""
  if isinstance(record, Mapping) and isinstance(record.get("prompt"), list):
    return list(record["prompt"])
  if isinstance(record, Mapping) and isinstance(record.get("messages"), list):
    return drop_answer(record["messages"])
  raise chat.ConversationError(
      "missing_field", "a prompt record needs a 'prompt' or a 'messages' "
      "list of messages")


def check_prompt(template: chat.ChatTemplate, record: Record) -> None:
  """Raises an (unlocated) validation.RecordError unless `template` can
  render `record`'s prompt for generation (roles, non-empty turns, order)."""
  messages = prompt_messages(record)
  if not messages:
    raise chat.ConversationError("empty_prompt", "the prompt has no "
                                 "messages")
  chat_render.validate_conversation(template, messages, mode="prompt")


def load_prompts(path: str, template: chat.ChatTemplate, *,
                 policy: str = validation.TRAIN_POLICY
                 ) -> tuple[list[dict[str, Any]], validation.FileCounts]:
  """One JSONL file's prompt records (whole records, `check_prompt`ed) and
  counts. Length bounds are the caller's (rl_common keeps those that fit
  in prompt_len)."""
  records, _, counts = jsonl.read_checked(
      path, lambda r: check_prompt(template, r), policy=policy,
      what="prompts")
  return records, counts


def prompt_ids(template: chat.ChatTemplate, tokenizer: chat_render.Tokenizer,
               record: Record) -> list[int]:
  """Ids of a record's prompt with the chat template, ending with the
  assistant prefix (the generation prompt)."""
  return chat_render.render_prompt(template, tokenizer, prompt_messages(record))


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
  """Token rows right-aligned in (B, length) int32 ids and an int32 mask (1
  on real tokens); rows longer than `length` keep their last tokens."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = list(r)[-length:]
    ids[i, length - len(r):] = r
    mask[i, length - len(r):] = 1
  return ids, mask
