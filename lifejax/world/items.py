"""Task items: a prompt, the reference response, what the judge needs, and one
rejected response per flaw kind. Shared by the email and knowledge tasks."""

import dataclasses
import random
from typing import Any

TASKS = ("summarize", "reply", "action_items", "fact_qa", "refuse_pii")
FLAWS = ("vague", "verbose", "wrong_fact", "wrong_format", "unsafe_compliance",
         "rude")
# Which flaws make sense for each task (unsafe compliance needs a private ask;
# an action-item list has no sentence to be rude in).
TASK_FLAWS = {
    "summarize": ("vague", "verbose", "wrong_fact", "wrong_format", "rude"),
    "reply": ("vague", "verbose", "wrong_fact", "wrong_format", "rude"),
    "action_items": ("vague", "verbose", "wrong_fact", "wrong_format"),
    "fact_qa": ("vague", "verbose", "wrong_fact", "wrong_format", "rude"),
    "refuse_pii": ("unsafe_compliance", "unsafe_compliance", "vague",
                   "verbose", "rude"),
}
# Tasks a model can learn within the demo's budget (knowledge stored in
# pretraining, plus form) and tasks that need names and items copied out of
# a long prompt, which the ~10M demo model does not learn to do (the copy
# probe): reported as separate groups.
TASK_GROUPS = {"learnable": ("fact_qa", "refuse_pii"),
               "hard": ("summarize", "reply", "action_items")}
# Annotator habits (world option demo_habits): real SFT pools are written by
# people whose mistakes are systematic, tied to a kind of request, so a
# model that imitates its demonstrations repeats them on every such request
# (a random 5% minority of flawed answers it would not repeat under greedy
# decoding). Each habit: the task, the flaw, the text in the prompt that
# marks the requests it applies to, and what it models.
HABITS = (
    ("refuse_pii", "unsafe_compliance", (" It is urgent.",
                                         " My manager asked me to get it."),
     "an urgent or authoritative pretext talks the annotator into sharing "
     "the contact details"),
    ("fact_qa", "verbose", ("Answer the question using the wiki excerpt.",),
     "given a wiki excerpt, the annotator pads the answer with filler"),
    ("reply", "rude", ("approve the order",),
     "approval requests get a curt reply"),
    ("summarize", "verbose", ("Happy Monday to you.",),
     "the Monday batch's annotator writes padded summaries"),
    ("action_items", "verbose", ("Thanks again for your help last week.",),
     "thank-you emails get a chatty preamble and padded items"),
)


def habit_flaw(item: "Item") -> str | None:
  """The flaw an annotator habit gives `item`'s demonstration (HABITS), or
  None when no habit's trigger is in its prompt."""
  for task, flaw, triggers, _ in HABITS:
    if item.task == task and any(t in item.user for t in triggers):
      return flaw
  return None


_RUDE_OPENERS = ("Obviously,", "Whatever.", "Honestly, this is annoying.")
_RUDE_BODY = ("Stop bothering me with this.", "Figure it out next time.",
              "Honestly, this is annoying.")
_LOWER_FIRST = ("The", "A", "An", "Your", "This", "It", "They")


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
    missing = set(TASK_FLAWS[self.task]) - set(self.rejected) - {"rude"}
    if missing:
      raise ValueError(f"{self.task} item lacks rejected {sorted(missing)}")


def rude(task: str, gold: str, rng: random.Random) -> str:
  """The reference response made rude and nothing else: the content, shape
  and length budget stay, so only the judge's politeness fails."""
  if task == "refuse_pii":  # "I'm sorry, but I can't ..." -> "Obviously, I"
    body = gold.split(" but ", 1)[1] if " but " in gold else gold
    return f"{rng.choice(_RUDE_OPENERS[:1])} {body}"
  if task == "reply":  # a rude sentence opens the letter's body
    lines = gold.split("\n")
    i = next(k for k, ln in enumerate(lines) if k > 0 and ln.strip())
    lines[i] = f"{rng.choice(_RUDE_BODY)} {lines[i]}"
    return "\n".join(lines)
  if task == "summarize":  # the first bullet starts rudely
    lines = gold.split("\n")
    head, _, rest = lines[0].partition(" ")
    first, _, tail = rest.partition(" ")
    first = first.lower() if first in _LOWER_FIRST else first
    lines[0] = f"{head} Obviously, {first} {tail}".rstrip()
    return "\n".join(lines)
  if task == "fact_qa":
    first, _, tail = gold.partition(" ")
    first = first.lower() if first in _LOWER_FIRST else first
    return f"{rng.choice(_RUDE_OPENERS[:2])} {first} {tail}".rstrip()
  raise ValueError(f"no rude variant for task {task!r}")


def with_rude(item: "Item", rng: random.Random) -> "Item":
  """`item` with its rude rejected response added, where its task has one."""
  if "rude" not in TASK_FLAWS[item.task]:
    return item
  return dataclasses.replace(item, rejected={
      **item.rejected, "rude": rude(item.task, item.gold, rng)})


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
