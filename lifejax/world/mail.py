"""The company mail archive: email threads as a pretraining source.

A real company corpus holds its mail, and mail restates itself: a reply
acknowledges the points of the email it answers, quotes it, or grants its
request; a follow-up reminds the team who does what by when. Without mail,
pretraining never shows an email, and SFT has to teach the genre and the
answer format at once. The restatements are also in-context repetition, the
kind of text from which models learn to copy names, days and numbers out of
their context (what the email tasks test). At the demo's budget the 10M
model learns the genre from them but not the copying
(experiments/copy_probe/).

Archive emails come from the same builders as the task emails
(`emails`), drawn from their own random stream. A thread whose email
equals a task email (sender, recipient and body) is drawn again, so no
instruction or preference prompt appears in pretraining; the archive never
uses the task instructions ("Summarize ...", "Extract ...") nor the task
answer formats (dash bullets, "Owner: task (due day)" lists).
"""

from __future__ import annotations

import random
from collections.abc import Set

from lifejax.world import corpus as wc
from lifejax.world import emails as we
from lifejax.world import facts as wf
from lifejax.world import text as wt

THREAD_KINDS = ("updates", "team", "request")
_ACKS = ("Thanks for the update.", "Thank you for letting me know.",
         "Many thanks for the news.", "Thanks, this is helpful.")
_NOTED = ("Just to confirm what I have noted:", "Here is what I noted:",
          "I have put these in my calendar:", "Noted, thank you:")
_REMINDERS = ("A short reminder of who does what:",
              "Here is the plan we agreed on:",
              "To keep us on track, the tasks again:")
# Replies quote the email they answer this often (mail clients do so by
# default); a quote repeats the email verbatim, a copy a model can learn.
QUOTE_SHARE = 0.8
_SIGN = ("Best regards", "Kind regards", "Many thanks", "Best wishes",
         "Thanks")


def _header(sender: str, to: str, subject: str) -> str:
  return f"From: {sender}\nTo: {to}\nSubject: {subject}"


def _letter(header: str, greeting: str, body: str, signoff: str,
            signer: str) -> str:
  return f"{header}\n\n{greeting}\n\n{body}\n\n{signoff},\n{signer}"


def _quoted(email: str, writer: str, rng: random.Random) -> str:
  """`email` as quoted under a reply ("On Monday, X wrote:" + "> " lines)."""
  lines = email.split("\n\n", 1)[1].splitlines()  # drop the header block
  day = rng.choice(wt.WEEKDAYS)
  return f"On {day}, {writer} wrote:\n" + "\n".join(
      f"> {ln}" if ln else ">" for ln in lines)


def _updates_thread(facts: wf.Facts, rng: random.Random) -> tuple[str, str]:
  """An update email and the recipient's reply restating 2-3 of its points."""
  u = we.updates_email(facts, rng)
  shorts = [pt[1] for pt in u.points]
  kept = rng.sample(shorts, rng.choice((2, 3, 3)))
  reply = _letter(
      _header(u.recipient.name, u.sender.name, "Re: A few updates"),
      f"Hi {u.sender.first},",
      f"{rng.choice(_ACKS)} {rng.choice(_NOTED)} {' '.join(kept)}",
      rng.choice(_SIGN), u.recipient.first)
  if rng.random() < QUOTE_SHARE:
    reply += "\n\n" + _quoted(u.email, u.sender.name, rng)
  return u.email, f"{u.email}\n\n{reply}"


def _team_thread(facts: wf.Facts, rng: random.Random) -> tuple[str, str]:
  """A team email assigning tasks, then a reminder (from the sender) or an
  owner's confirmation that restates the assignments."""
  t = we.team_email(facts, rng)
  if rng.random() < 0.5:
    rows = " ".join(f"{it['owner']} will {it['task']} by {it['due']}."
                    for it in t.items)
    follow = _letter(_header(t.sender.name, "Team", "Re: Next steps"),
                     "Hi team,", f"{rng.choice(_REMINDERS)} {rows}",
                     rng.choice(_SIGN), t.sender.first)
  else:
    k = rng.randrange(len(t.items))
    it, owner = t.items[k], t.owners[k]
    follow = _letter(_header(owner.name, t.sender.name, "Re: Next steps"),
                     f"Hi {t.sender.first},",
                     f"Noted, I will {it['task']} by {it['due']}.",
                     rng.choice(_SIGN), owner.first)
  if rng.random() < QUOTE_SHARE:
    follow += "\n\n" + _quoted(t.email, t.sender.name, rng)
  return t.email, f"{t.email}\n\n{follow}"


def _request_thread(facts: wf.Facts, rng: random.Random) -> tuple[str, str]:
  """A request email and the reply that grants (or declines) it."""
  r = we.request_email(facts, rng)
  reply = _letter(_header(r.me.name, r.sender.name, "Re: Quick question"),
                  f"{rng.choice(('Hi', 'Hello', 'Dear'))} {r.sender.first},",
                  r.body, rng.choice(_SIGN), r.me.first)
  if rng.random() < QUOTE_SHARE:
    reply += "\n\n" + _quoted(r.email, r.sender.name, rng)
  return r.email, f"{r.email}\n\n{reply}"


_BUILDERS = {"updates": _updates_thread, "team": _team_thread,
             "request": _request_thread}


def mail_archive(facts: wf.Facts, seed: int, n: int,
                 task_emails: Set[str] = frozenset()) -> list[wc.Doc]:
  """`n` email threads, none starting with an email in `task_emails`.

  Raises:
    ValueError: `n` is negative, or the world is too small to draw `n`
      threads that avoid `task_emails`.
  """
  if n < 0:
    raise ValueError(f"mail_archive: n must be >= 0, got {n}")
  rng = wt.stream(seed, "mail_archive")
  docs: list[wc.Doc] = []
  for _ in range(n * 20):
    if len(docs) == n:
      return docs
    kind = THREAD_KINDS[len(docs) % len(THREAD_KINDS)]
    email, text = _BUILDERS[kind](facts, rng)
    if email in task_emails:
      continue
    docs.append(wc.Doc("mail", text, format="email", meta={"thread": kind}))
  if len(docs) < n:
    raise ValueError(f"mail_archive: drew only {len(docs)} of {n} threads "
                     "that avoid the task emails")
  return docs
