"""The mail archive: email threads whose replies restate their emails."""

import collections
import re

import pytest

from lifejax.world import facts as wf
from lifejax.world import generator
from lifejax.world import mail as wm

SEED = 3


@pytest.fixture(scope="module")
def facts() -> wf.Facts:
  return wf.build_facts(SEED, 0.5)


@pytest.fixture(scope="module")
def world() -> generator.World:
  return generator.build_world(seed=SEED, scale=0.3)


def _emails(text: str) -> list[str]:
  """The messages of a thread (each starts with a From: header)."""
  return ["From: " + m for m in re.split(r"(?:^|\n\n)From: ", text) if m]


def test_threads_cover_every_kind_and_are_deterministic(facts):
  docs = wm.mail_archive(facts, SEED, 30)
  again = wm.mail_archive(facts, SEED, 30)
  assert [d.text for d in docs] == [d.text for d in again]
  assert collections.Counter(d.meta["thread"] for d in docs) == {
      k: 10 for k in wm.THREAD_KINDS}
  for d in docs:
    assert d.source == "mail" and not d.defects
    assert len(_emails(d.text)) == 2, d.text  # an email and its answer


def test_replies_copy_names_days_and_numbers_from_the_email(facts):
  """What makes the archive useful: every restated value is in the email."""
  for d in wm.mail_archive(facts, SEED, 60):
    first, answer = _emails(d.text.split("\n\nOn ")[0])
    sender = re.search(r"^From: (.+)$", first, re.M).group(1)
    to = re.search(r"^To: (.+)$", first, re.M).group(1)
    assert f"To: {sender}" in answer or d.meta["thread"] == "team"
    if to != "Team":
      assert answer.startswith(f"From: {to}\n")
    body = answer.split("\n\n")[2]
    if d.meta["thread"] == "request":
      # Replies that propose a day choose it; approvals and declines copy.
      if "cannot join" not in body and "approve" not in body:
        continue
      body = body.split(", because")[0]  # the reason is the replier's own
    values = re.findall(r"\b(?:Monday|Tuesday|Wednesday|Thursday|Friday|"
                        r"\d+ (?:am|pm|days|more units|units))\b", body)
    assert values, body
    for v in values:
      assert v.replace("more units", "").strip() in first, (v, d.text)


def test_quoted_emails_repeat_the_original_lines(facts):
  quoted = [d for d in wm.mail_archive(facts, SEED, 60) if "\n> " in d.text]
  assert quoted
  for d in quoted:
    first = _emails(d.text)[0]
    lines = first.split("\n\n", 1)[1].splitlines()
    tail = d.text.split(" wrote:\n", 1)[1].splitlines()
    assert [ln[2:] if ln != ">" else "" for ln in tail] == lines


def test_task_emails_are_drawn_again(facts):
  docs = wm.mail_archive(facts, SEED, 6)
  banned = {_emails(d.text)[0] for d in docs[:3]}
  redrawn = wm.mail_archive(facts, SEED, 6, task_emails=banned)
  assert len(redrawn) == 6
  assert not banned & {_emails(d.text)[0] for d in redrawn}


def test_bad_count_is_rejected(facts):
  with pytest.raises(ValueError, match="n must be >= 0"):
    wm.mail_archive(facts, SEED, -1)


def test_world_has_mail_and_no_task_email_in_it(world):
  mail = world.corpus["mail"]
  assert len(mail) == max(10, round(generator.BASE_COUNTS["mail"] * 0.3))
  assert world.manifest()["counts"]["corpus"]["mail"] == len(mail)
  firsts = {_emails(d["text"])[0] for d in mail}
  task_users = [r["messages"][1]["content"] for s in generator.SPLITS
                for r in world.instructions[s]]
  task_users += [r["prompt"][1]["content"] for s in generator.SPLITS
                 for r in world.preferences[s]]
  task_emails = {u[u.index("From: "):] for u in task_users if "From: " in u}
  assert len(task_emails) > 50
  assert not firsts & task_emails
  # No task instruction wording leaks into pretraining either.
  text = "\n".join(d["text"] for d in mail)
  for phrase in ("Summarize the following email", "Extract the action items",
                 "Draft a polite reply", "(due "):
    assert phrase not in text
