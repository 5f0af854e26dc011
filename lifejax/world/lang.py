"""Non-English pages (Spanish, French, German) about the company.

They restate company facts in another language, so a language filter that
drops them also drops (redundant) knowledge; every such page is labelled
`non_english` with its ISO code in `lang`.
"""

import random

from lifejax.world import facts as wf
from lifejax.world import text as wt

LANGS = ("es", "fr", "de")

# The word tables (grammars/lang.json), by language: month names; product,
# employee and vendor sentences (slots: {s} subject, {price}, {refund},
# {warranty}, {month}, {year}, {vendor}, {dept}, {office}, {city}); and a
# filler grammar for `text.sentences_from`.
_TABLES = wt.load_grammars("lang")
_MONTHS, _PRODUCT = _TABLES["months"], _TABLES["product"]
_EMPLOYEE, _VENDOR, _FILLER = (_TABLES["employee"], _TABLES["vendor"],
                               _TABLES["filler"])


def non_english_page(facts: wf.Facts, rng: random.Random,
                     lang: str | None = None) -> tuple[str, str]:
  """Returns (ISO language code, text) of a page restating company facts."""
  lang = lang or rng.choice(LANGS)
  if lang not in LANGS:
    raise ValueError(f"unsupported language {lang!r}; expected one of {LANGS}")
  sentences = []
  for p in rng.sample(facts.products, min(2, len(facts.products))):
    slots = {"s": p.name, "price": p.price, "refund": str(p.refund_days),
             "warranty": str(p.warranty_months), "vendor": p.vendor,
             "month": _MONTHS[lang][p.launch_month - 1],
             "year": str(p.launch_year)}
    for t in rng.sample(_PRODUCT[lang], 3):
      sentences.append(wt.fill(t, slots))
  e = rng.choice(facts.employees)
  sentences.append(wt.fill(rng.choice(_EMPLOYEE[lang]), {
      "s": e.name, "dept": e.department, "office": e.office}))
  v = rng.choice(facts.vendors)
  sentences.append(wt.fill(rng.choice(_VENDOR[lang]),
                           {"s": v.name, "city": v.city}))
  grammar = _FILLER[lang]
  sentences += wt.sentences_from(grammar, rng, rng.randint(3, 5),
                                 {"company": facts.company}, set(sentences))
  rng.shuffle(sentences)
  return lang, wt.paragraphs(sentences, rng)
