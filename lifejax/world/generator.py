"""The embedded world: a procedurally generated company, built from a seed.

`build_world(seed, scale)` returns a `World` in memory; `generate_world` writes
it as JSONL plus `manifest.json`; `load_world` reads it back. The default
(scale=1) is ~3.5k documents (~2.5 MB of text) and builds in a few seconds;
`scale` multiplies document, task and entity counts.

On-disk layout (the contract other modules code against):

  manifest.json                     seed, scale, counts, per-file sha256
  corpus/<source>.jsonl             wiki | support_chat | records | web |
                                    non_english (| digest, when
                                    fact_restatements > 0); records carry
                                    `defects`
  eval/fact_questions.jsonl         held-out fact questions (decontaminate!)
  eval/general_holdout.jsonl        general text (forgetting panel)
  eval/general_instructions.jsonl   general instructions (messages format)
  instructions/<split>.jsonl        SFT tasks with judge references
  preferences/<split>.jsonl         chosen/rejected pairs with the flaw kind
  facts/facts.jsonl, facts/entities.json   ground truth (incl. private data)
"""

import argparse
import collections
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence, Set
from typing import Any

from lifejax.data.jsonl import read_jsonl
from lifejax.world import chat as wchat
from lifejax.world import corpus as wc
from lifejax.world import digest as wd
from lifejax.world import facts as wf
from lifejax.world import items as wi
from lifejax.world import junk as wj
from lifejax.world import lang as wl
from lifejax.world import mail as wm
from lifejax.world import phrasing as wp
from lifejax.world import tasks as wtask
from lifejax.world import text as wt
from lifejax.world import web as ww

SOURCES = ("wiki", "support_chat", "records", "mail", "web", "non_english")
DEFECTS = ("exact_duplicate", "near_duplicate", "boilerplate", "low_quality",
           "pii", "non_english", "contamination")
SPLITS = wtask.SPLITS
FORMAT_VERSION = 3  # 2: the `mail` source; 3: held-out page templates,
# the rude flaw and flawed SFT demonstrations
MAX_SCALE = 20.0
# The share of SFT training demonstrations written with a flaw (world config:
# the demo, the tests and the experiments share it).
DEMO_FLAW_SHARE = 0.25

# Document and item counts at scale 1.
BASE_COUNTS = {
    "support_chat": 700, "records": 250, "mail": 500, "non_english": 220,
    "web_clean": 900,
    "exact_duplicate": 120, "near_duplicate": 150, "boilerplate": 100,
    "low_quality": 120, "pii": 80, "contamination": 40, "web_non_english": 30,
    # SFT instructions per task: training, and validation and test (each).
    "train_instructions_per_task": 192, "eval_instructions_per_task": 44,
    "preferences_per_task": 200,
    "general_holdout": 120, "general_instructions": 150,
}


# World options a manifest records only when they differ from these (so that
# every default world's manifest and files stay byte-identical).
OPTIONAL_DEFAULTS: dict[str, Any] = {"fact_restatements": 0,
                                     "answer_style": "restate",
                                     "digest_qa": 0, "heldout_qa": False,
                                     "demo_habits": False}


@dataclasses.dataclass(frozen=True)
class World:
  """Everything the lifecycle needs, as JSON-ready records."""
  seed: int
  scale: float
  company: str
  entities: dict[str, Any]
  facts: list[dict[str, Any]]
  corpus: dict[str, list[dict[str, Any]]]
  eval: dict[str, list[dict[str, Any]]]
  instructions: dict[str, list[dict[str, Any]]]
  preferences: dict[str, list[dict[str, Any]]]
  demo_flaw_share: float = 0.0
  entity_scale: float = 1.0
  fact_restatements: int = 0
  answer_style: str = "restate"
  digest_qa: int = 0
  heldout_qa: bool = False
  demo_habits: bool = False

  @property
  def sources(self) -> tuple[str, ...]:
    """The corpus sources this world has: SOURCES, plus the digest when
    fact_restatements or digest_qa > 0."""
    return SOURCES + ((wd.SOURCE,) if wd.SOURCE in self.corpus else ())

  def files(self) -> dict[str, list[dict[str, Any]]]:
    """Relative JSONL path -> records."""
    out = {f"corpus/{s}.jsonl": self.corpus[s] for s in self.sources}
    out.update({f"eval/{k}.jsonl": v for k, v in self.eval.items()})
    out.update({f"instructions/{s}.jsonl": self.instructions[s]
                for s in SPLITS})
    out.update({f"preferences/{s}.jsonl": self.preferences[s]
                for s in SPLITS})
    out["facts/facts.jsonl"] = self.facts
    return out

  def manifest(self) -> dict[str, Any]:
    """Seed, scale and counts (without file hashes)."""
    defects = collections.Counter(k for docs in self.corpus.values()
                                  for d in docs for k in d["defects"])
    tasks = {s: dict(sorted(collections.Counter(
        r["task"] for r in self.instructions[s]).items())) for s in SPLITS}
    flaws = collections.Counter(r["flaw"] for s in SPLITS
                                for r in self.preferences[s])
    demo = collections.Counter(r["flaw"] for r in self.instructions["train"]
                               if r.get("flaw"))
    leaked = {q for docs in self.corpus.values() for d in docs
              for q in d.get("leaks", ())}
    out = {
        "format_version": FORMAT_VERSION, "seed": self.seed,
        "scale": self.scale, "company": self.company,
        "entities": {k: len(v) for k, v in self.entities.items()
                     if isinstance(v, list)},
        "counts": {
            "facts": len(self.facts),
            "corpus": {s: len(self.corpus[s]) for s in self.sources},
            "corpus_chars": {s: sum(len(d["text"]) for d in self.corpus[s])
                             for s in self.sources},
            "clean_docs": sum(not d["defects"] for docs in self.corpus.values()
                              for d in docs),
            "defects": {k: defects.get(k, 0) for k in DEFECTS},
            "eval": {**{k: len(v) for k, v in self.eval.items()},
                     "leaked_questions": len(leaked)},
            "instructions": {s: len(self.instructions[s]) for s in SPLITS},
            "instruction_tasks": tasks,
            "preferences": {s: len(self.preferences[s]) for s in SPLITS},
            "flaws": {k: flaws.get(k, 0) for k in wi.FLAWS},
            # The SFT demonstrations that carry a flaw (train split only).
            "demo_flaws": {k: demo.get(k, 0) for k in wi.FLAWS},
        },
        "demo_flaw_share": self.demo_flaw_share,
        "entity_scale": self.entity_scale,
    }
    out.update({k: getattr(self, k) for k, v in OPTIONAL_DEFAULTS.items()
                if getattr(self, k) != v})
    return out


def _n(key: str, scale: float, minimum: int = 3) -> int:
  return max(minimum, round(BASE_COUNTS[key] * scale))


def _check_args(seed: int, scale: float) -> None:
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise TypeError(f"seed must be an int, got {seed!r}")
  if (isinstance(scale, bool) or not isinstance(scale, (int, float))
      or not math.isfinite(scale) or not 0 < scale <= MAX_SCALE):
    raise ValueError(f"scale must be a number in (0, {MAX_SCALE}], got "
                     f"{scale!r}")


def _web(facts: wf.Facts, seed: int, scale: float, originals: list[wc.Doc],
         questions: list[dict], seen: set[str]) -> list[wc.Doc]:
  """Clean web pages plus every planted web defect."""
  rng = wt.stream(seed, "web_junk")
  clean = _drop_repeats(
      ww.clean_web_pages(facts, seed, _n("web_clean", scale, 20)), seen)
  fresh = ww.clean_page_maker(facts)
  docs = list(clean)
  pool = [d for d in originals + clean if not d.defects]
  n_exact = _n("exact_duplicate", scale)
  while n_exact > 0:
    original = rng.choice(pool)
    for _ in range(min(n_exact, rng.randint(1, 3))):
      docs.append(wj.exact_duplicate(original))
      n_exact -= 1
  n_near, near_pool = _n("near_duplicate", scale), list(clean)
  rng.shuffle(near_pool)
  for original in near_pool:
    for _ in range(rng.randint(1, 3)):
      if n_near == 0:
        break
      copy = wj.near_duplicate(original, rng)
      if copy is not None:
        docs.append(copy)
        n_near -= 1
  sites = wj.boilerplate_sites(rng)
  for _ in range(_n("boilerplate", scale)):
    docs.append(wj.add_boilerplate(fresh(rng), rng.choice(sites), rng))
  issues = wj.LOW_QUALITY_ISSUES
  docs += [wj.low_quality_page(rng, issues[i % len(issues)])
           for i in range(_n("low_quality", scale, len(issues)))]
  for _ in range(_n("pii", scale)):
    doc = wj.pii_page(facts, rng, fresh)
    if rng.random() < 0.25:
      wj.add_boilerplate(doc, rng.choice(sites), rng)
    docs.append(doc)
  leakable = rng.sample(questions, max(1, len(questions) // 2))
  docs += [wj.contamination_page(leakable, rng, fresh)
           for _ in range(_n("contamination", scale))]
  docs += [wj.non_english_web(lambda r: wl.non_english_page(facts, r), rng)
           for _ in range(_n("web_non_english", scale))]
  # Only planted exact duplicates may repeat an existing text.
  exact = [d for d in docs if "exact_duplicate" in d.defects]
  docs = clean + exact + _drop_repeats(
      [d for d in docs[len(clean):] if "exact_duplicate" not in d.defects],
      seen)
  rng.shuffle(docs)
  return docs


def _drop_repeats(docs: list[wc.Doc], seen: set[str]) -> list[wc.Doc]:
  """Keeps docs whose text is new; random collisions must not be unlabelled."""
  out = []
  for d in docs:
    if d.text not in seen:
      seen.add(d.text)
      out.append(d)
  return out


def _corpus(facts: wf.Facts, seed: int, scale: float, questions: list[dict],
            task_emails: Set[str], fact_restatements: int = 0,
            faq: tuple[Sequence[str], int, str] = ((), 0, "restate")
            ) -> dict[str, list[wc.Doc]]:
  """faq: (fact ids, repeats, answer style) of the digest's staff FAQ."""
  seen: set[str] = set()
  wiki = _drop_repeats(wc.wiki_pages(facts, seed), seen)
  chats = _drop_repeats(
      wchat.support_chats(facts, seed, _n("support_chat", scale, 10)), seen)
  records = _drop_repeats(
      wc.records(facts, seed, _n("records", scale, 10)), seen)
  mail = _drop_repeats(wm.mail_archive(facts, seed, _n("mail", scale, 10),
                                       task_emails), seen)
  rng = wt.stream(seed, "non_english")
  foreign = []
  for _ in range(_n("non_english", scale, 10)):
    lang, text = wl.non_english_page(facts, rng)
    foreign.append(wc.Doc("non_english", text, lang=lang,
                          defects=["non_english"]))
  foreign = _drop_repeats(foreign, seen)
  web = _web(facts, seed, scale, wiki, questions, seen)
  out = {"wiki": wiki, "support_chat": chats, "records": records,
         "mail": mail, "web": web, "non_english": foreign}
  if fact_restatements or faq[1]:
    posts = wd.digest_posts(facts, seed, fact_restatements)
    qa = wd.faq_posts(facts, seed, *faq)
    if qa:  # FAQ posts among the statements (the statements' order as before)
      posts += qa
      wt.stream(seed, wd.SOURCE, "mix").shuffle(posts)
    out[wd.SOURCE] = _drop_repeats(posts, seen)
  for source, docs in out.items():
    for i, d in enumerate(docs):
      d.id = f"{source}-{i:05d}"
  return out


def _demo_flaws(items: list[wi.Item], share: float, seed: int,
                habits: bool = False) -> list[str | None]:
  """The flaw each SFT training demonstration carries (None: the reference):
  round(share * n) of them, drawn at random, each flaw kind from its task's
  TASK_FLAWS. Real SFT pools are of mixed quality; the preference data then
  targets the same flaws. habits: besides, every demonstration whose prompt
  triggers an annotator habit (items.HABITS) carries that habit's flaw."""
  rng = wt.stream(seed, "demonstrations")
  flawed = set(rng.sample(range(len(items)), round(share * len(items))))
  out = [rng.choice(wi.TASK_FLAWS[it.task]) if i in flawed else None
         for i, it in enumerate(items)]
  if habits:
    out = [wi.habit_flaw(it) or f for it, f in zip(items, out)]
  return out


def _tasks(facts: wf.Facts, seed: int, scale: float, heldout: set[str],
           demo_flaw_share: float, answer_style: str = "restate",
           heldout_qa: bool = False, demo_habits: bool = False
           ) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
  buckets = wtask.task_items(facts, seed, heldout,
                           (_n("train_instructions_per_task", scale, 8),
                            _n("eval_instructions_per_task", scale, 1)),
                           _n("preferences_per_task", scale, 10),
                           answer_style, heldout_qa)
  rng = wt.stream(seed, "task_records")
  instructions, preferences = {}, {}
  for split in SPLITS:
    items = [it for task in wi.TASKS for it in buckets[f"instr/{split}"][task]]
    rng.shuffle(items)
    # Only the training demonstrations are of mixed quality: validation
    # and test keep the references (their judge references are what count).
    flaws = (_demo_flaws(items, demo_flaw_share, seed, demo_habits)
             if split == "train"
             else [None] * len(items))
    instructions[split] = [
        wtask.instruction_record(facts.company, it, f"sft-{split}-{k:05d}",
                                 flaw)
        for k, (it, flaw) in enumerate(zip(items, flaws))]
    pairs = []
    for task in wi.TASKS:
      allowed = wi.TASK_FLAWS[task]
      offset = rng.randrange(len(allowed))
      pairs += [(it, allowed[(i + offset) % len(allowed)])
                for i, it in enumerate(buckets[f"pref/{split}"][task])]
    rng.shuffle(pairs)
    preferences[split] = [
        wtask.preference_record(facts.company, it, flaw,
                                f"pref-{split}-{k:05d}")
        for k, (it, flaw) in enumerate(pairs)]
  return instructions, preferences


def _task_emails(instructions: dict[str, list[dict]],
                 preferences: dict[str, list[dict]]) -> set[str]:
  """The emails quoted by every instruction and preference prompt."""
  users = [r["messages"][1]["content"] for s in SPLITS
           for r in instructions[s]]
  users += [r["prompt"][1]["content"] for s in SPLITS for r in preferences[s]]
  return {"From: " + u.split("\n\nFrom: ", 1)[1] for u in users
          if "\n\nFrom: " in u}


def build_world(seed: int = 0, scale: float = 1.0,
                demo_flaw_share: float = DEMO_FLAW_SHARE,
                entity_scale: float = 1.0, fact_restatements: int = 0,
                answer_style: str = "restate", digest_qa: int = 0,
                heldout_qa: bool = False, demo_habits: bool = False) -> World:
  """Builds the whole world in memory; deterministic in its arguments.

  demo_flaw_share: the share of SFT training demonstrations that carry one
    of the preference data's flaws instead of the reference response.
  entity_scale: multiplies the number of employees, products, vendors (and
    departments, by its square root) but not the documents: below 1 each
    fact is stated more often.
  fact_restatements: statements of every fact in the staff digest, an
    extra corpus source (world/digest.py); 0 writes none.
  answer_style: how fact_qa answers read (`phrasing.ANSWER_STYLES`):
    "restate" names the subject, "pronoun" does not. The corpus is the same
    either way (unless digest_qa > 0).
  digest_qa: times each fact of the SFT training fact_qa tasks is asked and
    answered in the digest's staff FAQ (world/digest.py); 0 writes none.
  heldout_qa: the validation and test fact_qa prompts also ask the held-out
    facts (half each; world.tasks.task_items): more distinct facts per
    evaluation split. Training, preference and corpus files are unchanged.
  demo_habits: besides the random demo_flaw_share, every SFT training
    demonstration whose prompt triggers an annotator habit
    (world.items.HABITS) carries that habit's flaw: systematic flaws that a
    model imitating its demonstrations repeats. Only the training
    instructions change.
  """
  _check_args(seed, scale)
  if not 0.0 <= demo_flaw_share <= 1.0:
    raise ValueError(f"demo_flaw_share must be in [0, 1], got "
                     f"{demo_flaw_share}")
  if not 0.05 <= entity_scale <= MAX_SCALE:
    raise ValueError(f"entity_scale must be in [0.05, {MAX_SCALE}], got "
                     f"{entity_scale}")
  if (isinstance(fact_restatements, bool)
      or not isinstance(fact_restatements, int) or fact_restatements < 0):
    raise ValueError(f"fact_restatements must be an int >= 0, got "
                     f"{fact_restatements!r}")
  if isinstance(digest_qa, bool) or not isinstance(digest_qa, int) or (
      digest_qa < 0):
    raise ValueError(f"digest_qa must be an int >= 0, got {digest_qa!r}")
  if not isinstance(heldout_qa, bool):
    raise ValueError(f"heldout_qa must be a bool, got {heldout_qa!r}")
  if not isinstance(demo_habits, bool):
    raise ValueError(f"demo_habits must be a bool, got {demo_habits!r}")
  if answer_style not in wp.ANSWER_STYLES:
    raise ValueError(f"answer_style must be one of "
                     f"{sorted(wp.ANSWER_STYLES)}, got {answer_style!r}")
  facts = wf.build_facts(seed, scale, entity_scale)
  questions, heldout = wtask.heldout_questions(facts, seed)
  instructions, preferences = _tasks(facts, seed, scale, heldout,
                                     demo_flaw_share, answer_style, heldout_qa,
                                     demo_habits)
  # The FAQ asks the SFT training split's fact_qa facts only.
  faq_facts = sorted({r["reference"]["fact_id"]
                      for r in instructions["train"] if r["task"] == "fact_qa"})
  corpus = _corpus(facts, seed, scale, questions,
                   _task_emails(instructions, preferences), fact_restatements,
                   (faq_facts, digest_qa, answer_style))
  mentions = collections.Counter(f for docs in corpus.values() for d in docs
                                 for f in d.facts)
  fact_rows = [dict(dataclasses.asdict(f),
                    statement=wp.answer(facts.company, f),
                    heldout=f.id in heldout, mentions=mentions.get(f.id, 0))
               for f in facts.facts]
  return World(
      seed=seed, scale=float(scale), company=facts.company,
      entities=wf.entities_record(facts), facts=fact_rows,
      corpus={s: [d.record() for d in docs] for s, docs in corpus.items()},
      eval={"fact_questions": questions,
            "general_holdout": ww.general_holdout(
                seed, _n("general_holdout", scale, 10)),
            "general_instructions": wtask.general_instructions(
                seed, _n("general_instructions", scale, 10))},
      instructions=instructions, preferences=preferences,
      demo_flaw_share=float(demo_flaw_share),
      entity_scale=float(entity_scale), fact_restatements=fact_restatements,
      answer_style=answer_style, digest_qa=digest_qa, heldout_qa=heldout_qa,
      demo_habits=demo_habits)


def _dump_jsonl(records: list[dict[str, Any]]) -> bytes:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n"
                 for r in records).encode("utf-8")


def generate_world(out_dir: str, seed: int = 0, scale: float = 1.0,
                   demo_flaw_share: float = DEMO_FLAW_SHARE,
                   entity_scale: float = 1.0, fact_restatements: int = 0,
                   answer_style: str = "restate", digest_qa: int = 0,
                   heldout_qa: bool = False, demo_habits: bool = False
                   ) -> dict:
  """Builds the world and writes it under `out_dir`; returns the manifest.

  Files are byte-identical for the same arguments. Existing world files in
  `out_dir` are overwritten; other files are left alone.
  """
  world = build_world(seed, scale, demo_flaw_share, entity_scale,
                      fact_restatements, answer_style, digest_qa,
                      heldout_qa, demo_habits)
  manifest = world.manifest()
  files = {}
  blobs = {path: _dump_jsonl(recs) for path, recs in world.files().items()}
  blobs["facts/entities.json"] = (json.dumps(world.entities, ensure_ascii=False,
                                             indent=1) + "\n").encode("utf-8")
  for path, blob in sorted(blobs.items()):
    full = os.path.join(out_dir, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
      f.write(blob)
    files[path] = {"sha256": hashlib.sha256(blob).hexdigest(),
                   "records": blob.count(b"\n") if path.endswith(".jsonl")
                              else None}
  manifest["files"] = files
  with open(os.path.join(out_dir, "manifest.json"), "w",
            encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, ensure_ascii=False)
    f.write("\n")
  return manifest


def load_world(out_dir: str) -> World:
  """Reads a world written by `generate_world`.

  Raises:
    FileNotFoundError: `out_dir` holds no manifest.json or a listed file.
    ValueError: the manifest has an unknown format version.
  """
  manifest_path = os.path.join(out_dir, "manifest.json")
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"no world at {out_dir!r}: manifest.json missing; "
                            "run generate_world first")
  with open(manifest_path, encoding="utf-8") as f:
    manifest = json.load(f)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError("unsupported world format "
                     f"{manifest.get('format_version')} (expected "
                     f"{FORMAT_VERSION})")

  def read(rel: str) -> list[dict[str, Any]]:
    return read_jsonl(os.path.join(out_dir, rel))

  with open(os.path.join(out_dir, "facts/entities.json"),
            encoding="utf-8") as f:
    entities = json.load(f)
  options = {k: manifest.get(k, v) for k, v in OPTIONAL_DEFAULTS.items()}
  sources = SOURCES + ((wd.SOURCE,) if options["fact_restatements"]
                       or options["digest_qa"] else ())
  return World(
      seed=manifest["seed"], scale=manifest["scale"],
      company=manifest["company"], entities=entities,
      facts=read("facts/facts.jsonl"),
      corpus={s: read(f"corpus/{s}.jsonl") for s in sources},
      eval={k: read(f"eval/{k}.jsonl") for k in
            ("fact_questions", "general_holdout", "general_instructions")},
      instructions={s: read(f"instructions/{s}.jsonl") for s in SPLITS},
      preferences={s: read(f"preferences/{s}.jsonl") for s in SPLITS},
      demo_flaw_share=manifest["demo_flaw_share"],
      entity_scale=manifest["entity_scale"], **options)


def main(argv: list[str] | None = None) -> None:
  """CLI: python -m lifejax.world.generator --out_dir DIR [--seed --scale
  --demo_flaw_share --entity_scale --fact_restatements --answer_style
  --digest_qa --heldout_qa --demo_habits]."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--demo_flaw_share", type=float, default=DEMO_FLAW_SHARE)
  parser.add_argument("--entity_scale", type=float, default=1.0)
  parser.add_argument("--fact_restatements", type=int, default=0)
  parser.add_argument("--answer_style", default="restate",
                      choices=sorted(wp.ANSWER_STYLES))
  parser.add_argument("--digest_qa", type=int, default=0)
  parser.add_argument("--heldout_qa", action="store_true",
                      help="ask the held-out facts in the validation and "
                           "test fact_qa prompts too")
  parser.add_argument("--demo_habits", action="store_true",
                      help="SFT demonstrations carry the annotator habits' "
                           "flaws (world.items.HABITS)")
  args = parser.parse_args(argv)
  counts = generate_world(args.out_dir, args.seed, args.scale,
                          args.demo_flaw_share, args.entity_scale,
                          args.fact_restatements, args.answer_style,
                          args.digest_qa, args.heldout_qa,
                          args.demo_habits)["counts"]
  print(json.dumps({k: counts[k] for k in ("corpus", "defects",
                                           "instructions", "preferences")}))


if __name__ == "__main__":
  main()
