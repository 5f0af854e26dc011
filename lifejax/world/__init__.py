"""The embedded world: a test bed small enough to train on a CPU.

A procedurally generated fictional company (facts, corpora with planted
defects, SFT and preference tasks, held-out evals) and the programmatic judge
that scores answers to its tasks. Everything is built from a seed, so a run,
a curation check or an eval can be repeated exactly. The generic data code
(lifejax/data) knows nothing of it: the world is one dataset among others.

  generator.py  build_world / generate_world / load_world; the on-disk layout
  judge.py      rule-based scores of responses to the world's tasks
  the rest      the builders of its parts (facts, corpora, mail, tasks, ...)
"""
