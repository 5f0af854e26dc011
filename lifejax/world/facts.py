"""The fictional company behind the synthetic world: its entities and facts.

Entities (employees, departments, products, vendors) are drawn from fixed name
pools by a seeded RNG; every attribute that a document may state is also a
`Fact` with a stable id, so corpora, questions and tasks can refer to it.
Employees' private email and phone are attributes but never facts: they are
the personal data that curation must scrub and the assistant must not reveal.
"""

import collections
import dataclasses
import functools
import random
import re
from typing import Any, Sequence

from lifejax.world import text as wt

FIRST_NAMES = (
    "Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hugo",
    "Ines", "Jonas", "Kaia", "Luca", "Mira", "Nils", "Olga", "Pavel", "Quinn",
    "Rosa", "Soren", "Talia", "Umar", "Vera", "Wren", "Xavier", "Yara", "Zane",
    "Amara", "Bodhi", "Celia", "Dario", "Esme", "Felix", "Gwen", "Hana", "Ivo",
    "Juno", "Kenji", "Lena", "Milo", "Nadia", "Oscar", "Petra", "Rafael",
    "Selma", "Tomas", "Una", "Viktor", "Willa", "Yusuf", "Zora", "Anton",
    "Beatrix", "Cyrus", "Delia", "Emil", "Fiona", "Gideon", "Helga", "Idris",
    "Jasmin")
_SURNAME_HEADS = ("Ash", "Bel", "Cor", "Dun", "Elm", "Fen", "Gar", "Hol", "Ire",
                  "Kes", "Lor", "Mar", "Nor", "Orm", "Pel", "Quar", "Ros",
                  "Sel", "Tam", "Vel", "Wyn", "Brack", "Crom", "Dray")
_SURNAME_TAILS = ("by", "dale", "ford", "gate", "holm", "ley", "mere", "ton",
                  "well", "wick", "worth", "ridge")
_COMPANY_HEADS = ("Blue", "Silver", "North", "Amber", "Cedar", "Iron", "Maple",
                  "Harbor", "Willow", "Copper", "Bright", "Stone")
_COMPANY_TAILS = ("fern", "field", "brook", "crest", "leaf", "gate", "wind",
                  "vale")
_COMPANY_KINDS = ("Works", "Labs", "Goods", "Trading", "Supply Co")
CITIES = ("Port Alder", "Westmere", "Kingsreach", "Lowbridge", "Fairhollow",
          "Eastwick", "Stonebay", "Millbrook", "Redcliff", "Ashport",
          "Greyford", "Sunmoor", "Oakhaven", "Brightwater", "Coldspring",
          "Highmarsh")
DEPARTMENTS = {
    "Sales": ("account manager", "sales analyst", "sales representative"),
    "Support": ("support agent", "support specialist", "help desk lead"),
    "Engineering": ("software engineer", "test engineer", "hardware engineer"),
    "Finance": ("accountant", "financial analyst", "payroll officer"),
    "Marketing": ("content writer", "brand manager", "campaign planner"),
    "Logistics": ("warehouse planner", "shipping coordinator", "stock clerk"),
    "Research": ("research scientist", "lab technician", "data analyst"),
    "Legal": ("contract lawyer", "compliance officer", "paralegal"),
    "Design": ("product designer", "graphic designer", "user researcher"),
    "Operations": ("office manager", "facilities planner", "project manager"),
}
BUILDINGS = ("Cedar Hall", "Birch House", "Oak Court", "Elm Tower", "Pine Wing",
             "Maple Block", "Willow Hall", "Aspen House", "Larch Court",
             "Rowan Tower")
_BRAND_HEADS = ("Lu", "Bri", "Ta", "Ze", "Ko", "Ve", "Ni", "Que", "So", "Pa",
                "Ra", "Du", "Fi", "Ga", "Mo")
_BRAND_TAILS = ("mo", "vo", "nta", "rix", "xa", "lin", "ro", "ne", "dex", "ska")
ITEMS = ("Kettle", "Desk Lamp", "Backpack", "Headset", "Blender",
         "Water Bottle", "Notebook", "Desk Fan", "Toaster", "Umbrella",
         "Speaker", "Keyboard", "Thermos", "Camera", "Wall Clock",
         "Rice Cooker", "Bike Light", "Yoga Mat", "Lunch Box", "Coffee Grinder")
_VENDOR_HEADS = ("Summit", "Keystone", "Meridian", "Pioneer", "Beacon", "Atlas",
                 "Crescent", "Sterling", "Vantage", "Trident", "Granite",
                 "Lantern", "Orchard", "Falcon")
_VENDOR_TAILS = ("Supply", "Components", "Materials", "Parts", "Packaging",
                 "Manufacturing")
MAIL_DOMAINS = ("inbox.example", "mailhub.example", "postbox.example",
                "homemail.example")
REFUND_DAYS = (14, 30, 45, 60, 90)
WARRANTY_MONTHS = (6, 12, 18, 24, 36)


@dataclasses.dataclass(frozen=True)
class Employee:
  """A staff member; `email` and `phone` are private contact details."""
  id: str
  first: str
  last: str
  department: str
  role: str
  office: str
  start_month: int
  start_year: int
  email: str
  phone: str

  @property
  def name(self) -> str:
    return f"{self.first} {self.last}"

  start = wt.month_year_property("start")  # "March 2019"


@dataclasses.dataclass(frozen=True)
class Department:
  id: str
  name: str
  head: str  # full name of the employee who leads it
  building: str
  founded: int


@dataclasses.dataclass(frozen=True)
class Product:
  id: str
  name: str
  item: str
  price_cents: int
  launch_month: int
  launch_year: int
  refund_days: int
  warranty_months: int
  vendor: str
  team: str  # owning department

  @property
  def price(self) -> str:
    return f"${self.price_cents // 100}.{self.price_cents % 100:02d}"

  launch = wt.month_year_property("launch")


@dataclasses.dataclass(frozen=True)
class Vendor:
  id: str
  name: str
  city: str
  since: int


@dataclasses.dataclass(frozen=True)
class Fact:
  """One checkable statement: `subject`'s `relation` is `value`."""
  id: str
  entity_type: str  # employee | department | product | vendor
  entity_id: str
  subject: str
  relation: str  # e.g. "product.refund"
  value: str


@dataclasses.dataclass(frozen=True)
class Facts:
  """All entities of one world plus the flat fact table."""
  company: str
  offices: tuple[str, ...]
  employees: tuple[Employee, ...]
  departments: tuple[Department, ...]
  products: tuple[Product, ...]
  vendors: tuple[Vendor, ...]
  facts: tuple[Fact, ...]

  @functools.cached_property
  def _index(self) -> dict[str, dict[str, list[Fact]]]:
    index = {"relation": collections.defaultdict(list),
             "entity": collections.defaultdict(list)}
    for f in self.facts:
      index["relation"][f.relation].append(f)
      index["entity"][f.entity_id].append(f)
    return index

  def by_relation(self, relation: str) -> list[Fact]:
    """All facts of `relation` (a fresh list)."""
    return list(self._index["relation"].get(relation, ()))

  def facts_of(self, entity_id: str) -> list[Fact]:
    """All facts about entity `entity_id` (a fresh list)."""
    return list(self._index["entity"].get(entity_id, ()))

  def employee(self, name: str) -> Employee:
    for e in self.employees:
      if e.name == name:
        return e
    raise KeyError(f"no employee named {name!r}")

  def department(self, name: str) -> Department:
    for d in self.departments:
      if d.name == name:
        return d
    raise KeyError(f"no department named {name!r}")


def _count(base: int, scale: float, minimum: int, maximum: int) -> int:
  return max(minimum, min(maximum, round(base * scale)))


def random_phone(rng: random.Random) -> str:
  """A North-American style phone number such as "(415) 555-0132"."""
  return (f"({rng.randint(201, 989)}) {rng.randint(200, 989)}-"
          f"{rng.randint(0, 9999):04d}")


def _employees(rng: random.Random, n: int, departments: list[str],
               offices: list[str]) -> list[Employee]:
  firsts = rng.sample(FIRST_NAMES, min(n, len(FIRST_NAMES)))
  while len(firsts) < n:
    firsts.append(rng.choice(FIRST_NAMES))
  lasts = [h + t for h in _SURNAME_HEADS for t in _SURNAME_TAILS]
  rng.shuffle(lasts)
  if n > len(lasts):
    raise ValueError(f"scale too large: {n} employees exceed the name pool")
  out = []
  for i in range(n):
    # Round-robin so every department has people (and a head) at any scale.
    dept = departments[i % len(departments)]
    first, last = firsts[i], lasts[i]
    out.append(Employee(
        id=f"emp{i:03d}", first=first, last=last, department=dept,
        role=rng.choice(DEPARTMENTS[dept]), office=rng.choice(offices),
        start_month=rng.randint(1, 12), start_year=rng.randint(2008, 2023),
        email=f"{first.lower()}.{last.lower()}@{rng.choice(MAIL_DOMAINS)}",
        phone=random_phone(rng)))
  return out


def build_facts(seed: int, scale: float, entity_scale: float = 1.0) -> Facts:
  """Draws the company, its entities and the fact table for (seed, scale).

  entity_scale multiplies the entity counts alone: below 1 the same corpus
  states fewer facts, each more often (denser knowledge)."""
  scale = scale * entity_scale
  rng = wt.stream(seed, "facts")
  company = (f"{rng.choice(_COMPANY_HEADS)}{rng.choice(_COMPANY_TAILS)} "
             f"{rng.choice(_COMPANY_KINDS)}")
  cities = list(CITIES)
  rng.shuffle(cities)
  offices, vendor_cities = cities[:3], cities[3:]
  n_dept = _count(6, scale ** 0.5, 3, len(DEPARTMENTS))
  dept_names = rng.sample(sorted(DEPARTMENTS), n_dept)
  employees = _employees(rng, _count(48, scale, 8, 280), dept_names, offices)
  # The department head is its first employee, with the title "director"
  # (not "Sales director": a role must not give the department away).
  heads = {}
  for i, e in enumerate(employees):
    if e.department not in heads:
      heads[e.department] = e.name
      employees[i] = dataclasses.replace(e, role="director")
  buildings = rng.sample(BUILDINGS, n_dept)
  departments = [
      Department(id=f"dep{i:02d}", name=d, head=heads[d], building=buildings[i],
                 founded=rng.randint(1995, 2015))
      for i, d in enumerate(dept_names)]
  n_vendor = _count(8, scale, 3, len(_VENDOR_HEADS) * len(_VENDOR_TAILS))
  vendor_names = rng.sample(
      [f"{h} {t}" for h in _VENDOR_HEADS for t in _VENDOR_TAILS], n_vendor)
  vendors = [Vendor(id=f"ven{i:02d}", name=v, city=rng.choice(vendor_cities),
                    since=rng.randint(2005, 2022))
             for i, v in enumerate(vendor_names)]
  n_prod = _count(16, scale, 4, len(_BRAND_HEADS) * len(_BRAND_TAILS))
  brands = rng.sample([h + t for h in _BRAND_HEADS for t in _BRAND_TAILS],
                      n_prod)
  products = []
  for i, brand in enumerate(brands):
    item = ITEMS[i % len(ITEMS)] if i < len(ITEMS) else rng.choice(ITEMS)
    products.append(Product(
        id=f"prd{i:03d}", name=f"{brand} {item}", item=item,
        price_cents=rng.randint(12, 480) * 100 + rng.choice((0, 50, 99)),
        launch_month=rng.randint(1, 12), launch_year=rng.randint(2012, 2024),
        refund_days=rng.choice(REFUND_DAYS),
        warranty_months=rng.choice(WARRANTY_MONTHS),
        vendor=rng.choice(vendors).name, team=rng.choice(dept_names)))
  facts = []

  def add(entity_type: str, entity_id: str, subject: str, relation: str,
          value: str) -> None:
    facts.append(Fact(f"fact{len(facts):04d}", entity_type, entity_id, subject,
                      f"{entity_type}.{relation}", value))

  for e in employees:
    add("employee", e.id, e.name, "department", e.department)
    add("employee", e.id, e.name, "role", e.role)
    add("employee", e.id, e.name, "office", e.office)
    add("employee", e.id, e.name, "start", e.start)
  for d in departments:
    add("department", d.id, d.name, "head", d.head)
    add("department", d.id, d.name, "building", d.building)
    add("department", d.id, d.name, "founded", str(d.founded))
  for p in products:
    add("product", p.id, p.name, "price", p.price)
    add("product", p.id, p.name, "launch", p.launch)
    add("product", p.id, p.name, "refund", f"{p.refund_days} days")
    add("product", p.id, p.name, "warranty", f"{p.warranty_months} months")
    add("product", p.id, p.name, "vendor", p.vendor)
    add("product", p.id, p.name, "team", p.team)
  for v in vendors:
    add("vendor", v.id, v.name, "city", v.city)
    add("vendor", v.id, v.name, "since", str(v.since))
  return Facts(company=company, offices=tuple(offices),
               employees=tuple(employees), departments=tuple(departments),
               products=tuple(products), vendors=tuple(vendors),
               facts=tuple(facts))


def _shifted(value: str) -> list[str]:
  """Copies of `value` with its first number moved up or down a little."""
  m = re.search(r"\d+", value)
  if m is None:
    return []
  n = int(m.group())
  return [value[:m.start()] + str(n + d) + value[m.end():]
          for d in (-2, -1, 1, 2, 3) if n + d > 0]


def distractors(facts: Facts, fact: Fact, rng: random.Random,
                k: int = 4) -> list[str]:
  """`k` plausible wrong values for `fact` (same relation, else same kind)."""
  pools = {
      "employee.department": list(DEPARTMENTS),
      "product.team": list(DEPARTMENTS),
      "employee.office": list(CITIES), "vendor.city": list(CITIES),
      "department.building": list(BUILDINGS),
      "employee.role": [r for roles in DEPARTMENTS.values() for r in roles],
      "department.head": [e.name for e in facts.employees],
      "product.vendor": [v.name for v in facts.vendors],
  }
  same = {f.value for f in facts.by_relation(fact.relation)} - {fact.value}
  values = sorted(same)
  if len(values) < k:
    extra = set(pools.get(fact.relation, _shifted(fact.value))) - same
    extra.discard(fact.value)
    values += rng.sample(sorted(extra), min(k - len(values), len(extra)))
  if not values:
    raise ValueError(f"no wrong value available for {fact.id}")
  return rng.sample(values, min(k, len(values)))


def entities_record(facts: Facts) -> dict[str, Any]:
  """All entities as JSON-ready dicts, private contacts included (the truth)."""
  def rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(x) for x in items]
  emps = rows(facts.employees)
  for row, e in zip(emps, facts.employees):
    row["name"], row["start"] = e.name, e.start
  prods = rows(facts.products)
  for row, p in zip(prods, facts.products):
    row["price"], row["launch"] = p.price, p.launch
  return {"company": facts.company, "offices": list(facts.offices),
          "employees": emps, "departments": rows(facts.departments),
          "products": prods, "vendors": rows(facts.vendors)}
