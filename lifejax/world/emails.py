"""Email tasks: summarize in 3 bullets, draft a polite reply, extract action
items. Emails are built from structured points, so the reference knows exactly
which names, days and numbers a correct response must contain. Emails never
state company facts, so they cannot leak held-out knowledge."""

import dataclasses
import random
from typing import Any

from lifejax.world import facts as wf
from lifejax.world import items as wi
from lifejax.world import text as wt

_REPORTS = ("quarterly sales report", "stock count summary", "budget forecast",
            "customer survey summary", "supplier review", "safety checklist")
_TOPICS = ("the new booking tool", "first aid", "customer calls",
           "fire safety", "the expense system", "writing clear emails")
_TIMES = ("9 am", "10 am", "11 am", "2 pm", "3 pm", "4 pm")
_EVENTS = ("team lunch", "summer party", "charity run", "book club",
           "product fair", "welcome breakfast")
_OPENERS = ("I hope your week is going well.", "I hope you are doing well.",
            "Just a quick update from my side.", "Happy Monday to you.",
            "Thanks again for your help last week.")
_CHATTER = ("The coffee machine on the second floor works again.",
            "{other} did a great job on the demo last week.",
            "{other} is back from holiday and says hello.",
            "The car park will be repainted next month.",
            "The new plants in the lobby look lovely.",
            "{other} brought cake for everyone on Friday.")
_SIGNOFFS = ("Best regards", "Kind regards", "Many thanks", "Best wishes")


def _people(facts: wf.Facts, rng: random.Random, k: int) -> list[wf.Employee]:
  """`k` employees with distinct first names."""
  pool, seen, out = list(facts.employees), set(), []
  rng.shuffle(pool)
  for e in pool:
    if e.first not in seen:
      seen.add(e.first)
      out.append(e)
    if len(out) == k:
      return out
  raise ValueError(f"world has fewer than {k} distinct first names")


def _point(kind: str, facts: wf.Facts, rng: random.Random, day: str,
           other_day: str) -> tuple[str, str, list[str], str]:
  """Returns (email sentence, bullet, keywords, bullet with one wrong value)."""
  p = rng.choice(facts.products)
  d = rng.choice(facts.departments).name
  if kind == "meeting":
    t = rng.choice(_TIMES)
    long = (f"I would like to let you know that the {d} review meeting will "
            f"take place on {day} at {t}.")
    short = "The {d} review meeting is on {day} at {t}."
    return (long, short.format(d=d, day=day, t=t), [d, day, t],
            short.format(d=d, day=other_day, t=t))
  if kind == "order":
    n, m = rng.sample(range(20, 400, 10), 2)
    long = (f"After some discussion we have decided to order {n} more units "
            f"of the {p.name} for the shops.")
    short = "We will order {n} more units of the {p}."
    return (long, short.format(n=n, p=p.name), [str(n), p.name],
            short.format(n=m, p=p.name))
  if kind == "deadline":
    r = rng.choice(_REPORTS)
    long = f"Please remember that the {r} has to be finished by {day}."
    short = "The {r} is due on {day}."
    return (long, short.format(r=r, day=day), [r, day],
            short.format(r=r, day=other_day))
  if kind == "visit":
    v = rng.choice(facts.vendors).name
    o1, o2 = rng.sample(list(facts.offices), 2)
    long = (f"A small group from {v} is planning to visit our {o1} office "
            f"on {day}.")
    short = "{v} visits the {o} office on {day}."
    return (long, short.format(v=v, o=o1, day=day), [v, o1],
            short.format(v=v, o=o2, day=day))
  if kind == "training":
    topic = rng.choice(_TOPICS)
    b1, b2 = rng.sample([x.building for x in facts.departments], 2)
    long = (f"There will be a training session on {topic} in {b1} on "
            f"{day} morning.")
    short = "A training on {topic} is held in {b} on {day}."
    return (long, short.format(topic=topic, b=b1, day=day), [topic, b1],
            short.format(topic=topic, b=b2, day=day))
  n, m = rng.sample(range(2, 14), 2)  # never a refund window (14+ days)
  long = (f"Unfortunately the next shipment of the {p.name} is running {n} "
          "days late.")
  short = "The {p} shipment is {n} days late."
  return (long, short.format(p=p.name, n=n), [p.name, f"{n} days"],
          short.format(p=p.name, n=m))


def _email(sender: wf.Employee, to: str, subject: str, greeting: str,
           body: list[str], signoff: str) -> str:
  return (f"From: {sender.name}\nTo: {to}\nSubject: {subject}\n\n"
          f"{greeting}\n\n{' '.join(body)}\n\n{signoff},\n{sender.first}")


@dataclasses.dataclass(frozen=True)
class Updates:
  """An email with three key points (see `_point`) and one line of chatter."""
  sender: wf.Employee
  recipient: wf.Employee
  points: list[tuple[str, str, list[str], str]]
  email: str


def updates_email(facts: wf.Facts, rng: random.Random) -> Updates:
  """The email of a summarize item (also the start of an archive thread)."""
  sender, recipient, other = _people(facts, rng, 3)
  kinds = rng.sample(("meeting", "order", "deadline", "visit", "training",
                      "shipment"), 3)
  days = rng.sample(wt.WEEKDAYS, 4)
  points = [_point(k, facts, rng, days[i], days[3]) for i, k in
            enumerate(kinds)]
  body = [rng.choice(_OPENERS)] + [pt[0] for pt in points]
  body.insert(rng.randint(1, 3),
              rng.choice(_CHATTER).format(other=other.first))
  email = _email(sender, recipient.name, "A few updates",
                 f"Hi {recipient.first},", body, rng.choice(_SIGNOFFS))
  return Updates(sender, recipient, points, email)


def summarize_item(facts: wf.Facts, rng: random.Random) -> wi.Item:
  """An email with three key points and chatter; the answer is 3 bullets."""
  updates = updates_email(facts, rng)
  points, email = updates.points, updates.email
  bullets = [pt[1] for pt in points]
  gold = "\n".join(f"- {b}" for b in bullets)
  j = rng.randrange(3)
  wrong = "\n".join(f"- {points[i][3] if i == j else b}"
                    for i, b in enumerate(bullets))
  prose = "The email says three things. " + " ".join(bullets)
  verbose = ("Here is a complete and detailed summary of the email.\n"
             + "\n".join(f"- {pt[0]} {wi.padding(rng, 20)}" for pt in points))
  vague = "\n".join(f"- {s}" for s in rng.sample((
      "The email shares some updates.", "Several topics are mentioned.",
      "Some follow-up may be needed.", "The sender has a few requests.",
      "Dates and plans are discussed."), 3))
  reference = {"points": [{"text": pt[1], "keywords": pt[2]} for pt in points],
               "n_bullets": 3, "max_words": 45}
  return wi.Item("summarize",
                 "Summarize the following email in exactly 3 bullet points."
                 f"\n\n{email}", gold, reference,
                 {"vague": vague, "verbose": verbose, "wrong_fact": wrong,
                  "wrong_format": prose})


def _request(facts: wf.Facts, rng: random.Random
             ) -> tuple[str, str, str, list[str], str]:
  """Returns (email ask, instruction, reply body, must-mention, wrong body)."""
  kind = rng.choice(("meeting", "report", "approval", "decline"))
  p = rng.choice(facts.products)
  d1, d2 = rng.sample(wt.WEEKDAYS, 2)
  if kind == "meeting":
    t = rng.choice(_TIMES)
    body = ("Thank you for reaching out. I would be glad to meet about the "
            "{p}. Would {d} at {t} work for you?")
    return (f"Could we meet this week to talk about the {p.name}? I have a "
            "few ideas for the next steps.",
            f"agree to meet and suggest {d1} at {t}",
            body.format(p=p.name, d=d1, t=t), [p.name, d1, t],
            body.format(p=p.name, d=d2, t=t))
  if kind == "report":
    r = rng.choice(_REPORTS)
    body = "Thank you for your message. I will send you the {r} on {d}."
    return (f"Could you send me the {r} when it is ready? I need it for the "
            "planning session.", f"say that you will send the {r} on {d1}",
            body.format(r=r, d=d1), [r, d1], body.format(r=r, d=d2))
  if kind == "approval":
    n, m = rng.sample(range(20, 400, 10), 2)
    body = ("Thank you for preparing this. I approve the order of {n} units "
            "of the {p}.")
    return (f"Could you approve the order of {n} units of the {p.name}? The "
            "supplier needs an answer soon.",
            "approve the order", body.format(n=n, p=p.name),
            [str(n), p.name, "approve"], body.format(n=m, p=p.name))
  event = rng.choice(_EVENTS)
  c1, c2 = rng.sample(list(facts.offices), 2)
  body = ("Thank you for the kind invitation. Unfortunately I cannot join the "
          "{e} on {d}, because I will be travelling to {c}.")
  return (f"Would you like to join the {event} on {d1}? It would be great to "
          "see you there.",
          f"decline, because you will be travelling to {c1} that day",
          body.format(e=event, d=d1, c=c1), [event, c1],
          body.format(e=event, d=d1, c=c2))


@dataclasses.dataclass(frozen=True)
class Request:
  """An email with one request and the body of a reply that grants it."""
  sender: wf.Employee
  me: wf.Employee
  instruction: str
  body: str  # the reply's body
  must_mention: list[str]
  wrong_body: str
  email: str


def request_email(facts: wf.Facts, rng: random.Random) -> Request:
  """The email of a reply item (also the start of an archive thread)."""
  sender, me = _people(facts, rng, 2)
  ask, instruction, body, must, wrong_body = _request(facts, rng)
  email = _email(sender, me.name, "Quick question", f"Hi {me.first},",
                 [rng.choice(_OPENERS), ask], rng.choice(_SIGNOFFS))
  return Request(sender, me, instruction, body, must, wrong_body, email)


def reply_item(facts: wf.Facts, rng: random.Random) -> wi.Item:
  """An email with one request; the answer is a polite, signed reply."""
  req = request_email(facts, rng)
  sender, me, email = req.sender, req.me, req.email
  instruction, body, must, wrong_body = (req.instruction, req.body,
                                         req.must_mention, req.wrong_body)
  greet = rng.choice(("Hi", "Hello", "Dear"))
  sign = rng.choice(_SIGNOFFS)

  def letter(text: str) -> str:
    return f"{greet} {sender.first},\n\n{text}\n\n{sign},\n{me.first}"

  reference = {"sender_first": sender.first, "signer": me.first,
               "must_mention": must, "max_words": 70}
  return wi.Item(
      "reply",
      f"You are {me.name}. Draft a polite reply to the email below: "
      f"{instruction}.\n\n{email}",
      letter(body), reference,
      {"vague": letter("Thanks for your email. I will look into it and get "
                       "back to you."),
       "verbose": letter(f"{body} {wi.padding(rng, 150)}"),
       "wrong_fact": letter(wrong_body),
       "wrong_format": body})


_TASKS = (("send the updated price list for the {p}", ["{p}", "price list"]),
          ("book a room for the {d} review", ["{d}", "room"]),
          ("call {v} about the late delivery", ["{v}"]),
          ("draft the launch post for the {p}", ["{p}", "launch post"]),
          ("check the stock of the {p}", ["{p}", "stock"]),
          ("update the {d} budget sheet", ["{d}", "budget"]),
          ("ask {v} for a new quote", ["{v}", "quote"]),
          ("write the minutes of the {d} meeting", ["{d}", "minutes"]))
_ASKS = ("{o}, could you please {t} by {due}?",
         "{o} will {t} before {due}.",
         "I have asked {o} to {t} by {due}.",
         "Could {o} {t} by {due}, please?")


@dataclasses.dataclass(frozen=True)
class TeamEmail:
  """A team email assigning 2-4 tasks; `items` as in the judge reference."""
  sender: wf.Employee
  owners: list[wf.Employee]  # one per item
  items: list[dict[str, Any]]  # owner (first name), task, due, keywords
  email: str


def team_email(facts: wf.Facts, rng: random.Random) -> TeamEmail:
  """The email of an action-items item (also the start of an archive
  thread)."""
  n = rng.randint(2, 4)
  sender, other, *owners = _people(facts, rng, n + 2)
  dues = rng.sample(wt.WEEKDAYS, n)
  items, sentences = [], []
  for owner, due, (task_t, kws) in zip(owners, dues, rng.sample(_TASKS, n)):
    slots = {"p": rng.choice(facts.products).name,
             "d": rng.choice(facts.departments).name,
             "v": rng.choice(facts.vendors).name}
    task = task_t.format(**slots)
    items.append({"owner": owner.first, "task": task, "due": due,
                  "keywords": [k.format(**slots) for k in kws]})
    sentences.append(wt.capitalize(rng.choice(_ASKS).format(
        o=owner.first, t=task, due=due)))
  body = [rng.choice(_OPENERS)] + sentences
  body.insert(rng.randint(1, len(body)),
              rng.choice(_CHATTER).format(other=other.first))
  email = _email(sender, "Team", "Next steps", "Hi team,", body,
                 rng.choice(_SIGNOFFS))
  return TeamEmail(sender, owners, items, email)


def action_items_item(facts: wf.Facts, rng: random.Random) -> wi.Item:
  """Team email with 2-4 assigned tasks; the answer is a numbered list."""
  team = team_email(facts, rng)
  items, email, n = team.items, team.email, len(team.items)

  def listing(rows: list[dict]) -> str:
    return "\n".join(f"{i + 1}. {r['owner']}: {r['task']} (due {r['due']})"
                     for i, r in enumerate(rows))

  swapped = [dict(r) for r in items]
  swapped[0]["due"], swapped[1]["due"] = items[1]["due"], items[0]["due"]
  prose = " ".join(f"{r['owner']} needs to {r['task']} by {r['due']}."
                   for r in items)
  verbose = ("Thank you for sharing this email. After reading it closely, "
             "these are all the action items I could find.\n"
             + "\n".join(f"{i + 1}. {r['owner']}: {r['task']} (due {r['due']})"
                         f" {wi.padding(rng, 15)}"
                         for i, r in enumerate(items)))
  reference = {"items": items, "max_words": 14 * n + 6}
  return wi.Item(
      "action_items",
      "Extract the action items from this email as a numbered list, one per "
      f"line, in the form 'Owner: task (due day)'.\n\n{email}",
      listing(items), reference,
      {"vague": "1. Team: follow up on the points in the email (due soon)",
       "verbose": verbose, "wrong_fact": listing(swapped),
       "wrong_format": prose})
