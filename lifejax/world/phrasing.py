"""English phrasings of facts: corpus statements, questions and short answers.

Statements (used by documents) and questions (used by the held-out eval and the
QA tasks) are written so that they never share a run of 13 words: every fixed
run of a question is at most 12 words long between entity names, and no
statement reuses a question's wording. Tests check this on generated worlds.
"""

import random

from lifejax.world import facts as wf
from lifejax.world import text as wt

# {s} subject, {v} value, {av} value with an article, {first} first name of an
# employee subject, {company} company name.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "employee.department": (
        "{s} works in the {v} department.",
        "{s} is a member of the {v} team.",
        "The {v} team counts {s} among its staff.",
        "{first} has been part of {v} since joining {company}.",
        "On the {v} team, {s} is one of the people to ask.",
        "{s} belongs to the {v} group.",
    ),
    "employee.role": (
        "{s} works as {av}.",
        "The job title of {s} is {v}.",
        "{first} is employed as {av} at {company}.",
        "As {av}, {first} handles a wide range of daily tasks.",
        "{s} holds the position of {v}.",
    ),
    "employee.office": (
        "{s} is based in the {v} office.",
        "{s} works out of our office in {v}.",
        "The {v} office is where {first} spends most working days.",
        "{first} commutes to the {v} office.",
        "Most weeks {s} can be found at the {v} site.",
    ),
    "employee.start": (
        "{s} joined {company} in {v}.",
        "{first} started working here in {v}.",
        "Since {v}, {s} has been with the company.",
        "{s} was hired in {v}.",
        "{first} came on board in {v}.",
    ),
    "department.head": (
        "{v} leads the {s} department.",
        "The head of {s} is {v}.",
        "{s} is run by {v}.",
        "{v} is the director of the {s} team.",
        "The {s} group reports to {v}.",
    ),
    "department.building": (
        "The {s} department sits in {v}.",
        "You will find the {s} team in {v}.",
        "{v} is home to {s}.",
        "The desks of the {s} team are in {v}.",
        "{s} has its rooms in {v}.",
    ),
    "department.founded": (
        "The {s} department was founded in {v}.",
        "{s} was set up as its own department in {v}.",
        "Since {v}, {company} has had a separate {s} unit.",
        "The {s} team was formed in {v}.",
    ),
    "product.price": (
        "The {s} costs {v}.",
        "The {s} sells for {v}.",
        "The list price of the {s} is {v}.",
        "Customers pay {v} for the {s}.",
        "A new {s} is priced at {v}.",
    ),
    "product.launch": (
        "The {s} was launched in {v}.",
        "{company} released the {s} in {v}.",
        "The {s} first went on sale in {v}.",
        "The {s} has been in the catalog since {v}.",
        "Shops started selling the {s} in {v}.",
    ),
    "product.refund": (
        "The {s} can be returned within {v} of purchase.",
        "Customers may return the {s} for a full refund within {v}.",
        "The refund window for the {s} is {v}.",
        "Returns of the {s} are accepted for {v} after delivery.",
        "Buyers of the {s} have {v} to ask for their money back.",
    ),
    "product.warranty": (
        "The {s} comes with a warranty of {v}.",
        "The warranty on the {s} lasts {v}.",
        "The {s} is covered by our warranty for {v}.",
        "Repairs to the {s} are free for {v} after purchase.",
    ),
    "product.vendor": (
        "The {s} is made for us by {v}.",
        "{v} supplies the {s}.",
        "Parts for the {s} come from {v}.",
        "The supplier of the {s} is {v}.",
        "We buy the {s} from {v}.",
    ),
    "product.team": (
        "The {s} is managed by {v}.",
        "The {v} team owns the {s}.",
        "Questions about the {s} go to the {v} team.",
        "The {s} falls under the {v} department.",
    ),
    "vendor.city": (
        "{s} is based in {v}.",
        "The main office of {s} is in {v}.",
        "{s} ships its goods from {v}.",
        "The warehouse of {s} stands in {v}.",
    ),
    "vendor.since": (
        "{s} has supplied {company} since {v}.",
        "The contract with {s} began in {v}.",
        "{company} started working with {s} in {v}.",
        "We have bought from {s} since {v}.",
    ),
}

QUESTIONS: dict[str, tuple[str, ...]] = {
    "employee.department": (
        "In which department of {company} does {s} work on a normal day at "
        "the office?",
        "Which team at {company} is {s} a member of, according to the staff "
        "pages?"),
    "employee.role": (
        "What is the exact job title that {s} holds at {company} these days?",
        "According to the staff pages, what role does {s} have at {company}?"),
    "employee.office": (
        "In which of the company offices does {s} usually work during the "
        "week?",
        "Which city is home to the office where {s} works for {company}?"),
    "employee.start": (
        "In which month and year did {s} first join the staff of {company}?",
        "Giving the month and the year, when did {s} start working at "
        "{company}?"),
    "department.head": (
        "Who is the person in charge of the {s} department at {company} right "
        "now?",
        "Which employee leads the {s} team at {company} as its director "
        "today?"),
    "department.building": (
        "Which building of {company} houses the {s} department and its staff "
        "today?",
        "Where can visitors find the {s} team, and which building is it in?"),
    "department.founded": (
        "At {company}, in what year was the {s} department set up as its own "
        "unit?",
        "How long ago was the {s} department created, and in which year "
        "exactly?"),
    "product.price": (
        "How much does a customer have to pay for one {s} at the list price?",
        "What is the current list price of the {s} in the {company} catalog?"),
    "product.launch": (
        "In which month and year did the {s} first go on sale to customers?",
        "Giving the month and the year, when was the {s} released by "
        "{company}?"),
    "product.refund": (
        "How many days does a customer have to return the {s} for a full "
        "refund?",
        "For how many days after buying the {s} can a customer get a "
        "refund?"),
    "product.warranty": (
        "How many months of warranty cover does the {s} get from {company}?",
        "For how long is the {s} covered by the warranty, counted in months?"),
    "product.vendor": (
        "Which outside vendor supplies {company} with the {s} that we sell?",
        "Who is the supplier that makes the {s} sold by {company}?"),
    "product.team": (
        "Which department of {company} is responsible for the {s} product "
        "line?",
        "Which team should customers ask about the {s}, since it owns that "
        "product?"),
    "vendor.city": (
        "In which city is the main office of the vendor {s} located these "
        "days?",
        "From which city does {s} ship the goods it sells to {company}?"),
    "vendor.since": (
        "In what year did the vendor {s} first sign a deal with {company}?",
        "According to our records, since which year has {s} supplied goods to "
        "{company}?"),
}

# One fixed answer sentence per relation: a regular format a small model learns.
ANSWERS: dict[str, str] = {
    "employee.department": "{s} works in the {v} department.",
    "employee.role": "{s} works as {av}.",
    "employee.office": "{s} works in the {v} office.",
    "employee.start": "{s} joined {company} in {v}.",
    "department.head": "The {s} department is led by {v}.",
    "department.building": "The {s} department is in {v}.",
    "department.founded": "The {s} department was founded in {v}.",
    "product.price": "The {s} costs {v}.",
    "product.launch": "The {s} was launched in {v}.",
    "product.refund": "The {s} can be returned within {v} for a full refund.",
    "product.warranty": "The {s} has a warranty of {v}.",
    "product.vendor": "The {s} is supplied by {v}.",
    "product.team": "The {s} is owned by the {v} department.",
    "vendor.city": "{s} is based in {v}.",
    "vendor.since": "{s} has supplied {company} since {v}.",
}


def bindings(company: str, fact: wf.Fact, value: str | None = None
             ) -> dict[str, str]:
  """Slot values for phrasing `fact` (optionally with a substituted value)."""
  v = fact.value if value is None else value
  return {"s": fact.subject, "v": v, "av": wt.article(v),
          "first": fact.subject.split(" ")[0], "company": company}


def statement(company: str, fact: wf.Fact, rng: random.Random,
              variant: int | None = None) -> str:
  """One corpus sentence stating `fact` (template `variant`, else random)."""
  options = STATEMENTS[fact.relation]
  template = (options[variant % len(options)] if variant is not None
              else rng.choice(options))
  return wt.capitalize(wt.fill(template, bindings(company, fact)))


def question(company: str, fact: wf.Fact, variant: int) -> str:
  """Question `variant` (0 or 1) asking for `fact`'s value."""
  options = QUESTIONS[fact.relation]
  return wt.capitalize(wt.fill(options[variant % len(options)],
                               bindings(company, fact)))


# The same answers with the subject as a pronoun: an assistant replying to a
# question that names the subject need not repeat it, and a small model that
# cannot copy a name out of its prompt (the copy probe) can still state the
# value it stored for that subject.
PRONOUN_ANSWERS: dict[str, str] = {
    "employee.department": "They work in the {v} department.",
    "employee.role": "They work as {av}.",
    "employee.office": "They work in the {v} office.",
    "employee.start": "They joined {company} in {v}.",
    "department.head": "It is led by {v}.",
    "department.building": "It is in {v}.",
    "department.founded": "It was founded in {v}.",
    "product.price": "It costs {v}.",
    "product.launch": "It was launched in {v}.",
    "product.refund": "It can be returned within {v} for a full refund.",
    "product.warranty": "It has a warranty of {v}.",
    "product.vendor": "It is supplied by {v}.",
    "product.team": "It is owned by the {v} department.",
    "vendor.city": "It is based in {v}.",
    "vendor.since": "It has supplied {company} since {v}.",
}
ANSWER_STYLES = {"restate": ANSWERS, "pronoun": PRONOUN_ANSWERS}


def answer(company: str, fact: wf.Fact, value: str | None = None,
           style: str = "restate") -> str:
  """The canonical one-sentence answer (optionally stating a wrong `value`).

  style: "restate" names the subject ("The Aurora Lamp costs $49."),
  "pronoun" does not ("It costs $49.").
  """
  if style not in ANSWER_STYLES:
    raise ValueError(f"answer style {style!r}: expected one of "
                     f"{sorted(ANSWER_STYLES)}")
  return wt.capitalize(wt.fill(ANSWER_STYLES[style][fact.relation],
                               bindings(company, fact, value)))
