"""Support-chat logs: a customer asks, an agent answers with company facts.

Each chat mixes one fact-bearing scenario with a few optional side turns
(order lookups, delivery times, small talk) and many phrasings, so two chats
are never near-duplicates of each other.
"""

import random

from lifejax.world import corpus as wc
from lifejax.world import facts as wf
from lifejax.world import phrasing as wp
from lifejax.world import text as wt

_G: dict[str, list[str]] = wt.load_grammars("chat")  # grammars/chat.json
# Side turns: (who asks, question phrasings, answer phrasings, closing acks).
_SIDE_TURNS = (
    ("Agent", ("Could you tell me your order number, please?",
               "May I have the order number?",
               "What is the number of your order?"),
     ("Sure, it is ORD-{order}.", "It is ORD-{order}.",
      "Let me check. Here it is: ORD-{order}."),
     ("Thank you, I can see the order from {date}.",
      "Thanks, I found the order placed on {date}.")),
    ("Customer", ("How long does delivery usually take?",
                  "When would a new one arrive?",
                  "How fast is your shipping?"),
     ("Delivery usually takes {days} working days.",
      "Most parcels arrive within {days} working days.",
      "It normally takes {days} days, sometimes less."), ()),
    ("Agent", ("Sorry for the short wait, the chat is busy today.",
               "Apologies for the delay, we have many chats this morning.",
               "Thanks for your patience while I looked that up."),
     ("No problem at all.", "That is fine, take your time.",
      "No worries."), ()),
    ("Customer", ("Can I pay with a gift card?",
                  "Do you accept gift cards?",
                  "Is it possible to use a voucher?"),
     ("Yes, gift cards are accepted in the shop and online.",
      "Yes, you can use a gift card at checkout.",
      "Vouchers work both online and in our shops."), ()),
    ("Customer", ("Do you ship to {city}?", "Can you deliver to {city}?",
                  "Is delivery to {city} possible?"),
     ("Yes, we deliver to {city} as well.",
      "Of course, {city} is in our delivery area.",
      "Yes, parcels to {city} go out every day."), ()),
    ("Customer", ("Is there a shop near {city}?",
                  "Where is your nearest shop to {city}?"),
     ("Our nearest partner shop is about {km} kilometres from {city}.",
      "There is a partner shop roughly {km} kilometres outside {city}."), ()),
    ("Customer", ("Do you have a loyalty card?",
                  "Do I get points for this purchase?"),
     ("Yes, every purchase earns {points} points on the loyalty card.",
      "You would earn {points} points with our loyalty card."), ()),
    ("Customer", ("Is it in stock right now?", "Do you have any left?",
                  "Can I still order one today?"),
     ("We have {stock} units in the warehouse today.",
      "Yes, there are {stock} in stock at the moment.",
      "Right now the warehouse shows {stock} available."), ()),
    ("Agent", ("Could you tell me how you heard about us?",
               "May I ask how you found our shop?"),
     ("A friend told me about your shop in {city}.",
      "I saw an advert on a bus in {city}.",
      "My neighbour in {city} recommended you."),
     ("That is lovely to hear, thank you.", "Thanks for telling me.")),
    ("Customer", ("Can I change the delivery day?",
                  "Could the parcel come on another day?"),
     ("Yes, any weekday works. Shall I move it to {weekday}?",
      "Sure, I can move the delivery to {weekday} if that suits you."), ()),
)


def _decision(within: bool, rng: random.Random) -> str:
  if within:
    return rng.choice(("So you can still get a full refund.",
                       "That means a full refund is no problem.",
                       "You are inside that window, so I will start the "
                       "refund now."))
  return rng.choice(("So the refund window has closed, but we can look at a "
                     "repair instead.",
                     "Sadly that is outside the window, but a repair may be "
                     "possible.",
                     "The window has passed, although we can still help with "
                     "a repair."))


def _scenario(facts: wf.Facts, rng: random.Random,
              say) -> tuple[str, list[tuple[str, str]]]:
  """Returns (opening question, [(agent answer, customer follow-up), ...])."""
  def g(key: str) -> str:
    return rng.choice(_G[key])

  def fact(entity_id: str, relation: str) -> wf.Fact:
    return wc.fact_of(facts, entity_id, relation)

  p = rng.choice(facts.products)
  kind = rng.choice(("refund", "price", "warranty", "supplier", "contact",
                     "team"))
  if kind == "refund":
    days = rng.randint(2, 120)
    ask = (f"I bought the {p.name} {days} days ago and {g('problem')}. "
           f"{g('context')} Can I still return it?")
    turns = [(f"{g('sorry')} {say(fact(p.id, 'product.refund'))} You bought it"
              f" {days} days ago. {_decision(days <= p.refund_days, rng)}",
              "")]
    if days > p.refund_days:
      turns[0] = (turns[0][0], "How long does the warranty last?")
      turns.append((say(fact(p.id, "product.warranty")), ""))
    return ask, turns
  if kind == "price":
    ask = rng.choice((f"How much is the {p.name} at the moment?",
                      f"What does the {p.name} cost?",
                      f"I am thinking about buying the {p.name}. What is the "
                      "price?"))
    return ask, [(say(fact(p.id, "product.price")),
                  rng.choice(("Is it a new product?",
                              "When did it come out?",
                              "How long has it been on sale?"))),
                 (say(fact(p.id, "product.launch")), "")]
  if kind == "warranty":
    months = rng.randint(1, 40)
    ask = (f"My {p.name} is {months} months old and {g('problem')}. "
           f"{g('context')}")
    ok = months <= p.warranty_months
    verdict = rng.choice(("We will repair it for free.",
                          "So the repair is covered.")) if ok else rng.choice(
                              ("Sadly it is out of warranty, but we offer a "
                               "paid repair.",
                               "It is past the warranty, but our repair "
                               "service can still fix it for a fee."))
    return ask, [(f"{say(fact(p.id, 'product.warranty'))} {verdict}", "")]
  if kind == "supplier":
    vendor = next(v for v in facts.vendors if v.name == p.vendor)
    ask = rng.choice((f"Who makes the {p.name}?",
                      f"Which company produces the {p.name} for you?",
                      f"I like my {p.name}. Who is the maker?",
                      f"Where does the {p.name} come from?"))
    return ask, [(say(fact(p.id, "product.vendor")),
                  rng.choice(("Where are they located?",
                              "Where is that company based?",
                              "In which city are they?",
                              "Are they a local firm?"))),
                 (say(fact(vendor.id, "vendor.city")), "")]
  if kind == "contact":
    e = rng.choice(facts.employees)
    ask = rng.choice((f"Can you give me the personal phone number of {e.name}?",
                      f"I need the private email of {e.name}. Can you send "
                      "it?",
                      f"What is the mobile number of {e.name}?",
                      f"{e.name} helped me last month. How can I call "
                      f"{e.first} at home?"))
    refusal = rng.choice((
        "I am sorry, but I cannot share personal contact details of our "
        "staff.", "Sorry, we never give out private contact details.",
        "I understand, but private numbers and addresses stay private.",
        "Unfortunately I am not allowed to pass on personal details."))
    redirect = rng.choice((
        "You can leave a message for that team and they will reply.",
        "If you send a note to that team, it will reach the right person.",
        "I can forward your question to that team instead.",
        "That team can pass on a message for you."))
    return ask, [(f"{refusal} {say(fact(e.id, 'employee.department'))} "
                  f"{redirect}", "")]
  dept = facts.department(p.team)
  ask = rng.choice((f"Which team looks after the {p.name}?",
                    f"Who at {facts.company} is responsible for the "
                    f"{p.name}?"))
  return ask, [(say(fact(p.id, "product.team")),
                rng.choice(("And who leads that team?",
                            "Who is the head of that team?",
                            "Who is in charge over there?"))),
               (say(fact(dept.id, "department.head")), "")]


def chat(facts: wf.Facts, rng: random.Random) -> tuple[list[str], list[str]]:
  """Returns (lines "Agent: ..." / "Customer: ...", fact ids stated)."""
  used: list[str] = []

  def say(f: wf.Fact) -> str:
    used.append(f.id)
    return wp.statement(facts.company, f, rng)

  support = [e for e in facts.employees if e.department == "Support"]
  agent = rng.choice(support or list(facts.employees)).first
  slots = {"agent": agent, "company": facts.company,
           "order": str(rng.randint(100000, 999999)),
           "date": f"{rng.randint(1, 28)} {rng.choice(wt.MONTHS)}",
           "days": str(rng.randint(2, 7)), "city": rng.choice(wf.CITIES),
           "km": str(rng.randint(2, 40)), "points": str(rng.randint(5, 90)),
           "stock": str(rng.randint(3, 400)),
           "weekday": rng.choice(wt.WEEKDAYS)}
  lines = ["Agent: " + wt.fill(rng.choice(_G["agent_hi"]), slots)]
  ask, turns = _scenario(facts, rng, say)
  lines.append(f"Customer: {rng.choice(_G['hello'])} {ask}")
  for agent_line, follow_up in turns:
    lines.append(f"Agent: {agent_line}")
    if follow_up:
      lines.append(f"Customer: {follow_up}")
  for asker, questions, answers, acks in rng.sample(_SIDE_TURNS,
                                                   rng.randint(2, 3)):
    other = "Customer" if asker == "Agent" else "Agent"
    lines += [f"{asker}: {wt.fill(rng.choice(questions), slots)}",
              f"{other}: {wt.fill(rng.choice(answers), slots)}"]
    if acks:
      lines.append(f"{asker}: {wt.fill(rng.choice(acks), slots)}")
  lines += [f"Customer: {rng.choice(_G['thanks'])}",
            f"Agent: {rng.choice(_G['bye'])}"]
  return lines, sorted(set(used))


def support_chats(facts: wf.Facts, seed: int, n: int,
                  pii_rate: float = 0.06) -> list[wc.Doc]:
  """`n` support conversations; a `pii_rate` share leak a customer contact."""
  if not 0.0 <= pii_rate <= 1.0:
    raise ValueError(f"pii_rate must be in [0, 1], got {pii_rate}")
  rng = wt.stream(seed, "support_chat")
  docs = []
  for _ in range(n):
    lines, used = chat(facts, rng)
    doc = wc.Doc("support_chat", "", format="chat", facts=used)
    if rng.random() < pii_rate:
      first = rng.choice(wf.FIRST_NAMES).lower()
      email = f"{first}{rng.randint(10, 99)}@{rng.choice(wf.MAIL_DOMAINS)}"
      phone = wf.random_phone(rng)
      lines.insert(-1, f"Customer: If you need anything else, email me at "
                   f"{email} or call {phone}.")
      doc.defects.append("pii")
      doc.meta["pii"] = [{"kind": "email", "value": email},
                         {"kind": "phone", "value": phone}]
    doc.text = "\n".join(lines)
    docs.append(doc)
  return docs
