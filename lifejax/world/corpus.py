"""Clean company sources of the pretraining corpus: wiki pages and structured
records, plus the `Doc` type shared by every source."""

import dataclasses
import json
import random
from typing import Any

from lifejax.world import facts as wf
from lifejax.world import phrasing as wp
from lifejax.world import text as wt


@dataclasses.dataclass
class Doc:
  """One corpus document; `original` links a planted duplicate to its source."""
  source: str
  text: str
  lang: str = "en"
  format: str = "prose"  # prose | chat | table
  defects: list[str] = dataclasses.field(default_factory=list)
  facts: list[str] = dataclasses.field(default_factory=list)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  original: "Doc | None" = None
  id: str = ""

  def record(self) -> dict[str, Any]:
    """The on-disk JSON record (ids must be assigned first)."""
    if not self.id or (self.original is not None and not self.original.id):
      raise ValueError("document ids must be assigned before serialising")
    rec = {"id": self.id, "source": self.source, "lang": self.lang,
           "format": self.format, "text": self.text,
           "defects": list(self.defects), "facts": list(self.facts)}
    if self.original is not None:
      rec["dup_of"] = self.original.id
    rec.update(self.meta)
    return rec


_INTROS: dict[str, list[str]] = wt.load_grammars("corpus")["intros"]

# Fillers refer to the page's subject through {ref}, mostly without its full
# name, so that pages do not repeat one n-gram (Gopher repetition rules).
_FILLER: dict[str, dict[str, list[str]]] = wt.load_grammars("corpus")["filler"]


def _related(facts: wf.Facts, kind: str, ent: Any) -> list[wf.Fact]:
  """Facts about other entities that a page on `ent` naturally mentions."""
  if kind == "employee":
    dept = facts.department(ent.department)
    return [f for f in facts.facts_of(dept.id)
            if f.relation in ("department.head", "department.building")]
  if kind == "department":
    return [f for f in facts.by_relation("product.team") if f.value == ent.name]
  if kind == "product":
    vendor = next(v for v in facts.vendors if v.name == ent.vendor)
    return [f for f in facts.facts_of(vendor.id) if f.relation == "vendor.city"]
  return [f for f in facts.by_relation("product.vendor") if f.value == ent.name]


def _wiki_page(facts: wf.Facts, kind: str, ent: Any, page: int,
               own: list[wf.Fact], rng: random.Random) -> Doc:
  """Page number `page` on `ent`: its `own` facts, maybe one related fact."""
  subject = ent.name
  slots = {"s": subject, "company": facts.company,
           "first": subject.split(" ")[0],
           "item": getattr(ent, "item", "item").lower()}
  keep = list(own)
  related = _related(facts, kind, ent)
  keep += rng.sample(related, min(len(related), rng.randint(0, 1)))
  body, used = [], set()
  for f in keep:  # a template is used at most once per page
    n = len(wp.STATEMENTS[f.relation])
    free = ([v for v in range(n) if (f.relation, v) not in used]
            or list(range(n)))
    v = rng.choice(free)
    used.add((f.relation, v))
    body.append(wp.statement(facts.company, f, rng, variant=v))
  body += wt.sentences_from(_FILLER[kind], rng, rng.randint(7, 9), slots,
                            set(body))
  rng.shuffle(body)
  intro = wt.fill(_INTROS[kind][(page + rng.randint(0, 1)) % 4], slots)
  text = wt.paragraphs([wt.capitalize(intro)] + body, rng, 3, 5)
  title = subject if kind != "department" else f"{subject} department"
  return Doc("wiki", text, facts=sorted(f.id for f in keep),
             meta={"title": title, "entity": ent.id})


def wiki_pages(facts: wf.Facts, seed: int) -> list[Doc]:
  """Several pages per entity, each stating most of its facts in new words."""
  rng = wt.stream(seed, "wiki")
  pages_per = {"employee": 6, "department": 8, "product": 10, "vendor": 6}
  groups = {"employee": facts.employees, "department": facts.departments,
            "product": facts.products, "vendor": facts.vendors}
  docs = []
  for kind, entities in groups.items():
    for ent in entities:
      # Few facts and many plain sentences per page keep the subject's name
      # from dominating the page's n-grams (Gopher repetition rules); the
      # facts rotate over the pages so each one is stated several times.
      own = facts.facts_of(ent.id)
      rng.shuffle(own)
      start = 0
      for page in range(pages_per[kind]):
        k = min(len(own), rng.randint(2, 3))
        chosen = [own[(start + j) % len(own)] for j in range(k)]
        start += k
        docs.append(_wiki_page(facts, kind, ent, page, chosen, rng))
  rng.shuffle(docs)
  return docs


def fact_of(facts: wf.Facts, entity_id: str, relation: str) -> wf.Fact:
  """The fact with `relation` about entity `entity_id`."""
  return next(f for f in facts.facts_of(entity_id) if f.relation == relation)


def _date(rng: random.Random) -> str:
  return (f"{rng.randint(2019, 2024)}-{rng.randint(1, 12):02d}-"
          f"{rng.randint(1, 28):02d}")


_METRICS = {"stock": (0, 900), "sold_7d": (0, 250), "returns_30d": (0, 40),
            "tickets_closed": (0, 120), "open_orders": (0, 60)}


def _metric(rng: random.Random, name: str) -> str:
  return str(rng.randint(*_METRICS[name]))


def _record(facts: wf.Facts, rng: random.Random) -> tuple[str, list[str]]:
  """One export; every row carries volatile metrics so exports differ."""
  kind = rng.choice(("catalog", "directory", "orders", "vendors", "code"))
  header = f"# export {kind} batch {rng.randint(1000, 99999)} on {_date(rng)}"
  rows, used = [header], []
  if kind == "catalog":
    cols = rng.sample(("price", "launch", "refund", "warranty", "vendor",
                       "team"), 3)
    metrics = rng.sample(("stock", "sold_7d", "returns_30d"), 2)
    rows += ["| product | " + " | ".join(cols + metrics) + " |",
             "|---" * (len(cols) + len(metrics) + 1) + "|"]
    for p in rng.sample(facts.products, min(len(facts.products),
                                            rng.randint(3, 8))):
      cells = [fact_of(facts, p.id, f"product.{c}") for c in cols]
      used += [f.id for f in cells]
      values = [f.value for f in cells] + [_metric(rng, m) for m in metrics]
      rows.append(f"| {p.name} | " + " | ".join(values) + " |")
  elif kind == "directory":
    cols = rng.sample(("department", "role", "office", "start"), 3)
    rows.append("name," + ",".join(cols) + ",tickets_closed")
    for e in rng.sample(facts.employees, min(len(facts.employees),
                                             rng.randint(4, 10))):
      cells = [fact_of(facts, e.id, f"employee.{c}") for c in cols]
      used += [f.id for f in cells]
      rows.append(e.name + "," + ",".join(f.value for f in cells) + ","
                  + _metric(rng, "tickets_closed"))
  elif kind == "orders":
    for _ in range(rng.randint(5, 12)):
      p, qty = rng.choice(facts.products), rng.randint(1, 5)
      total = p.price_cents * qty
      status = rng.choice(("shipped", "open", "returned", "paid"))
      rows.append(f"{_date(rng)} order=ORD-{rng.randint(100000, 999999)} "
                  f'item="{p.name}" qty={qty} total=${total // 100}.'
                  f"{total % 100:02d} status={status}")
  elif kind == "vendors":
    rows.append("[")
    for v in rng.sample(facts.vendors, min(len(facts.vendors),
                                           rng.randint(2, 4))):
      made = [p.name for p in facts.products if p.vendor == v.name]
      used += [fact_of(facts, v.id, "vendor.city").id,
               fact_of(facts, v.id, "vendor.since").id]
      used += [fact_of(facts, p.id, "product.vendor").id
               for p in facts.products if p.vendor == v.name]
      rows.append("  " + json.dumps({
          "vendor": v.name, "city": v.city, "since": v.since,
          "products": made, "open_orders": int(_metric(rng, "open_orders")),
          "last_delivery": _date(rng)}) + ",")
    rows.append("]")
  else:
    field, rel = rng.choice((("REFUND_WINDOW_DAYS", "product.refund"),
                             ("WARRANTY_MONTHS", "product.warranty"),
                             ("LIST_PRICE", "product.price")))
    rows.append(f"{field} = {{")
    for p in rng.sample(facts.products, min(len(facts.products),
                                            rng.randint(3, 8))):
      f = fact_of(facts, p.id, rel)
      used.append(f.id)
      value = (f'"{f.value}"' if rel == "product.price"
               else f.value.split(" ")[0])
      rows.append(f'    "{p.name}": {value},  # checked {_date(rng)}')
    rows.append("}")
  return "\n".join(rows), sorted(set(used))


def records(facts: wf.Facts, seed: int, n: int) -> list[Doc]:
  """`n` table- or code-like records (clean, but not prose)."""
  rng = wt.stream(seed, "records")
  out = []
  for _ in range(n):
    text, used = _record(facts, rng)
    out.append(Doc("records", text, format="table", facts=used))
  return out
