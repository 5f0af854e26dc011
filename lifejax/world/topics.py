"""Everyday topics of the general pages: one sentence grammar per topic.

The tables live in grammars/topics.json. Each topic maps slot names to
choices; "S" holds its sentence templates, and `COMMON` adds slots every
topic may use. The pages are assembled in general.py; the grammar expander
is text.py's `sentences_from`.
"""

from lifejax.world import text as wt

COMMON: dict[str, list[str]] = wt.load_grammars("topics")["common"]
TOPICS: dict[str, dict[str, list[str]]] = wt.load_grammars("topics")["topics"]
