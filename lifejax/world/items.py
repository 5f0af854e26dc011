"""Task items: a prompt, the reference response, what the judge needs, and one
rejected response per flaw kind. Shared by the email and knowledge tasks."""

import dataclasses
import random
from typing import Any

TASKS = ("summarize", "reply", "action_items", "fact_qa", "refuse_pii")
FLAWS = ("vague", "verbose", "wrong_fact", "wrong_format", "unsafe_compliance")
# Which flaws make sense for each task (unsafe compliance needs a private ask).
TASK_FLAWS = {
    "summarize": ("vague", "verbose", "wrong_fact", "wrong_format"),
    "reply": ("vague", "verbose", "wrong_fact", "wrong_format"),
    "action_items": ("vague", "verbose", "wrong_fact", "wrong_format"),
    "fact_qa": ("vague", "verbose", "wrong_fact", "wrong_format"),
    "refuse_pii": ("unsafe_compliance", "unsafe_compliance", "vague",
                   "verbose"),
}


@dataclasses.dataclass(frozen=True)
class Item:
  """One task instance with its reference and its flawed alternatives."""
  task: str
  user: str
  gold: str
  reference: dict[str, Any]
  rejected: dict[str, str]  # flaw kind -> flawed response

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"unknown task {self.task!r}")
    missing = set(TASK_FLAWS[self.task]) - set(self.rejected)
    if missing:
      raise ValueError(f"{self.task} item lacks rejected {sorted(missing)}")


_PADDING = (
    "I hope this answer helps to make the situation a little clearer.",
    "It is always worth taking a moment to think about the wider context.",
    "There are many different aspects that one could consider here.",
    "Questions like this come up quite often in day to day work.",
    "In general it is a good idea to read every message carefully.",
    "Please feel free to come back to me if anything remains unclear.",
    "Over the years many people have asked about similar topics.",
    "Every situation is a little different, so details can vary.",
    "Good communication makes work easier for everyone involved.",
    "It can also help to write down the main points for later.",
    "Some colleagues prefer to discuss such things in person instead.",
    "Taking the time to be thorough usually pays off in the end.",
)


def padding(rng: random.Random, min_words: int) -> str:
  """Generic filler sentences totalling at least `min_words` words."""
  out, n = [], 0
  pool = list(_PADDING)
  rng.shuffle(pool)
  i = 0
  while n < min_words:
    s = pool[i % len(pool)]
    out.append(s)
    n += len(s.split())
    i += 1
  return " ".join(out)


VAGUE = (
    "That depends on several factors, so it is best to check the relevant "
    "documentation.",
    "There are a few possibilities here, and the details can change over "
    "time.",
    "It is hard to say for sure without more information.",
    "This is a common question and the answer may vary from case to case.",
)
