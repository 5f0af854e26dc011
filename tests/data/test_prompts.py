"""data/prompts.py: which messages are a record's prompt, and left padding."""

from __future__ import annotations

import numpy as np

from lifejax.data import prompts

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi?"}
ANSWER = {"role": "assistant", "content": "Hello."}


def test_prompt_messages_of_instruction_and_preference_records():
  # An instruction record's reference answer is not part of its prompt.
  assert prompts.prompt_messages(
      {"messages": [SYSTEM, USER, ANSWER]}) == [SYSTEM, USER]
  assert prompts.prompt_messages({"messages": [SYSTEM, USER]}) == [SYSTEM,
                                                                   USER]
  # A preference record carries its prompt as is.
  assert prompts.prompt_messages(
      {"prompt": [SYSTEM, USER], "chosen": "a", "rejected": "b"}) == [
          SYSTEM, USER]
  # A malformed last message is left for the renderer to report.
  assert prompts.drop_answer([USER, "junk"]) == [USER, "junk"]


def test_left_pad_right_aligns_and_keeps_the_end_of_long_rows():
  ids, mask = prompts.left_pad([[5, 6], [1, 2, 3, 4, 7], []], 4, pad_id=9)
  np.testing.assert_array_equal(ids, [[9, 9, 5, 6], [2, 3, 4, 7],
                                      [9, 9, 9, 9]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 1, 1, 1],
                                       [0, 0, 0, 0]])
  assert ids.dtype == mask.dtype == np.int32
