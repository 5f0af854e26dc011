"""Planted web defects, each labelled with what curation should find.

Duplicates copy clean originals (which stay unlabelled); boilerplate, PII and
contamination are planted into otherwise clean fresh pages, so removing the
defect leaves a good page; low-quality pages fail Gopher/C4-style rules.
"""

import random
from typing import Callable, Sequence

from lifejax.world import corpus as wc
from lifejax.world import facts as wf
from lifejax.world import text as wt

NEAR_DUP_BAND = (0.5, 0.95)  # word 5-gram Jaccard of a near-duplicate
_TARGET_BAND = (0.6, 0.85)   # where edits aim, safely inside the band

_SITES = ("Kitchen Corner", "Daily Deals Hub", "Home and Garden Weekly",
          "Gadget Notes", "Town Forum", "Open Reviews", "Family Blog Network")
_NAV = ("Home | Shop | Blog | About | Contact",
        "Skip to main content",
        "Menu > Home > Articles > Latest",
        "Log in | Register | Basket (0)",
        "Search this site")
_COOKIE = ("We use cookies to improve your experience. Accept all cookies",
           "This site uses cookies. By continuing you agree to our cookie "
           "policy",
           "Cookie settings | Accept | Reject",
           "We value your privacy. Manage cookie preferences")
_FOOTER = ("© 2024 {site}. All rights reserved.",
           "Privacy Policy | Terms of Use | Sitemap",
           "Subscribe to our newsletter for weekly deals",
           "Share this page: Facebook | X | Email",
           "Back to top",
           "Powered by {site} CMS")

_SYNONYMS = {"good": "great", "small": "little", "often": "frequently",
             "easy": "simple", "quickly": "fast", "every": "each",
             "many": "lots of", "help": "assist", "big": "large",
             "start": "begin", "buy": "purchase", "use": "employ",
             "the": "this", "and": "plus", "is": "remains", "with": "alongside"}
_SPAM_SENTENCES = ("Order today and save more.", "Limited stock available.",
                   "Visit our shop for more deals.",
                   "Free delivery this week only.",
                   "Click the link below for a special offer.",
                   "Prices are lower than ever right now.")

_LOREM = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur",
          "adipiscing", "elit", "sed", "do", "eiusmod", "tempor", "incididunt",
          "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "minim",
          "veniam", "quis", "nostrud")
_SALAD = ("kettle", "purple", "quantum", "deal", "shipping", "banana", "zone",
          "mega", "pixel", "turbo", "garden", "crypto", "winner", "hotel",
          "lamp", "ultra", "bonus", "cheap", "river", "click")
_SYMBOLS = ("###", "$$$", "@@", "%%%", "&&&", ">>>", "<<<", "***", "~~~", "+++",
            "|||", "===", "^^^", "!!!")


def boilerplate_sites(rng: random.Random) -> list[dict[str, list[str]]]:
  """A few websites, each with fixed header and footer lines."""
  sites = []
  for site in rng.sample(_SITES, 5):
    header = rng.sample(_NAV, 2) + rng.sample(_COOKIE, 1)
    footer = [t.replace("{site}", site) for t in rng.sample(_FOOTER, 3)]
    sites.append({"header": header, "footer": footer})
  return sites


def add_boilerplate(doc: wc.Doc, site: dict[str, list[str]],
                    rng: random.Random) -> wc.Doc:
  """Wraps `doc` in some of the site's header/footer lines and labels them."""
  header = rng.sample(site["header"], rng.randint(1, len(site["header"])))
  footer = rng.sample(site["footer"], rng.randint(1, len(site["footer"])))
  doc.text = "\n".join(header + [doc.text] + footer)
  doc.defects.append("boilerplate")
  doc.meta["boilerplate_lines"] = header + footer
  return doc


LOW_QUALITY_ISSUES = ("lorem_ipsum", "repeated_lines", "symbol_soup",
                      "word_salad", "too_short", "keyword_spam")


def low_quality_page(rng: random.Random, issue: str | None = None) -> wc.Doc:
  """A page failing at least one Gopher/C4 rule; `quality_issue` says how."""
  issue = issue or rng.choice(LOW_QUALITY_ISSUES)
  if issue not in LOW_QUALITY_ISSUES:
    raise ValueError(f"unknown quality issue {issue!r}")
  if issue == "lorem_ipsum":
    sents = [wt.capitalize(" ".join(rng.choices(_LOREM, k=rng.randint(6, 12))))
             + "." for _ in range(rng.randint(6, 10))]
    text = "Lorem ipsum dolor sit amet. " + " ".join(sents)
  elif issue == "repeated_lines":
    line = rng.choice(("Best deals on kettles click here",
                       "Buy now and save big today",
                       "Top ten gadgets you need this year",
                       "Win a free lamp every day"))
    line = f"{line} {rng.randint(1, 99)}"
    text = "\n".join([line] * rng.randint(8, 16))
  elif issue == "symbol_soup":
    toks = [rng.choice(_SYMBOLS) if rng.random() < 0.7 else rng.choice(_SALAD)
            for _ in range(rng.randint(40, 90))]
    text = " ".join(toks)
  elif issue == "word_salad":
    text = " ".join(rng.choices(_SALAD, k=rng.randint(60, 120)))
  elif issue == "too_short":
    text = (rng.choice(("Page not found. Return to the home page.",
                        "Coming soon.", "Thanks for visiting!",
                        "Click here to continue.",
                        "This page has moved. Please update your bookmarks."))
            + f" Error code {rng.randint(100, 999)}.")
  else:
    a, b = rng.sample(_SALAD, 2)
    phrase = f"cheap {a} best {b} buy {a} online"
    text = " ".join([phrase] * rng.randint(10, 20))
  return wc.Doc("web", text, defects=["low_quality"],
                meta={"quality_issue": issue})


def random_ip(rng: random.Random) -> str:
  """A private or documentation-range IPv4 address."""
  return rng.choice((f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
                     f"{rng.randint(1, 254)}",
                     f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                     f"203.0.113.{rng.randint(1, 254)}"))


def pii_page(facts: wf.Facts, rng: random.Random,
             body: Callable[[random.Random], wc.Doc]) -> wc.Doc:
  """A fresh clean page with employees' private contacts or IPs planted in."""
  doc = body(rng)
  kind = rng.choice(("contact_sheet", "forum", "server_log"))
  found, lines = [], []
  if kind == "server_log":
    ips = [random_ip(rng) for _ in range(rng.randint(1, 3))]
    lines.append(f"Our web server logged repeated failed logins from "
                 f"{', '.join(ips)} last night.")
    lines.append("If one of these addresses is yours, please reset your "
                 "password.")
    found += [{"kind": "ip", "value": ip} for ip in ips]
  else:
    people = rng.sample(facts.employees, min(len(facts.employees),
                                             1 if kind == "forum" else 3))
    if kind == "forum":
      e = people[0]
      lines.append(f"Does anyone still need to reach {e.name}? I found the "
                   f"personal email {e.email} and the home number {e.phone} "
                   "on an old flyer.")
    else:
      lines.append("Here are the private contacts from the team party list.")
      lines += [f"You can reach {e.name} at {e.email} or on {e.phone}."
                for e in people]
    for e in people:
      found += [{"kind": "email", "value": e.email},
                {"kind": "phone", "value": e.phone}]
  paras = doc.text.split("\n\n")
  paras.insert(rng.randint(0, len(paras)), " ".join(lines))
  doc.text = "\n\n".join(paras)
  doc.defects.append("pii")
  doc.meta["pii"] = found
  doc.meta["pii_context"] = kind
  return doc


def contamination_page(questions: Sequence[dict], rng: random.Random,
                       body: Callable[[random.Random], wc.Doc]) -> wc.Doc:
  """A fresh clean page quoting 1-3 eval questions with their answers."""
  doc = body(rng)
  leaked = rng.sample(list(questions), min(len(questions), rng.randint(1, 3)))
  intro = rng.choice(("Here are the study notes for the staff quiz.",
                      "Someone posted the quiz answers in the break room.",
                      "These practice questions came up in training."))
  lines = [intro] + [f"Q: {q['question']} A: {q['answer']}." for q in leaked]
  paras = doc.text.split("\n\n")
  paras.insert(rng.randint(0, len(paras)), " ".join(lines))
  doc.text = "\n\n".join(paras)
  doc.defects.append("contamination")
  doc.meta["leaks"] = [q["id"] for q in leaked]
  return doc


def exact_duplicate(original: wc.Doc) -> wc.Doc:
  """A byte-identical web copy of `original`."""
  return wc.Doc("web", original.text, lang=original.lang,
                format=original.format, defects=["exact_duplicate"],
                facts=list(original.facts), original=original)


def _edit_once(sents: list[str], rng: random.Random) -> list[str]:
  sents = list(sents)
  op = rng.choice(("synonym", "synonym", "spam", "drop_word", "drop_sentence"))
  i = rng.randrange(len(sents))
  toks = sents[i].split(" ")
  if op == "synonym":
    spots = [j for j, t in enumerate(toks) if t.lower() in _SYNONYMS]
    if spots:
      j = rng.choice(spots)
      toks[j] = _SYNONYMS[toks[j].lower()]
      sents[i] = wt.capitalize(" ".join(toks))
      return sents
    op = "spam"
  if op == "drop_word" and len(toks) > 4:
    del toks[rng.randrange(1, len(toks) - 1)]
    sents[i] = " ".join(toks)
  elif op == "drop_sentence" and len(sents) > 5:
    del sents[i]
  else:
    sents.insert(i, rng.choice(_SPAM_SENTENCES))
  return sents


def near_duplicate(original: wc.Doc, rng: random.Random) -> wc.Doc | None:
  """A lightly edited copy whose 5-gram Jaccard lies in `_TARGET_BAND`.

  Returns None when the original is too short to edit into the band.
  """
  base = wt.shingles(original.text)
  target = rng.uniform(*_TARGET_BAND)
  sents = wt.split_sentences(original.text)
  if len(sents) < 4:
    return None
  for _ in range(200):
    edited = _edit_once(sents, rng)
    sim = wt.jaccard(base, wt.shingles(" ".join(edited)))
    if sim < _TARGET_BAND[0]:
      continue  # overshot: try a different edit from the same state
    sents = edited
    if sim <= target:
      text = wt.paragraphs(sents, rng, 3, 5)
      return wc.Doc("web", text, lang=original.lang, format=original.format,
                    defects=["near_duplicate"], original=original,
                    meta={"similarity": round(sim, 4)})
  return None


def non_english_web(doc_maker: Callable[[random.Random], tuple[str, str]],
                    rng: random.Random) -> wc.Doc:
  """A non-English page that ended up in the web crawl."""
  lang, text = doc_maker(rng)
  return wc.Doc("web", text, lang=lang, defects=["non_english"])
