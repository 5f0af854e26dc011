"""Imports only go down the layers, and no modules import each other in a
cycle. Every module under lifejax/ is parsed (ast), never imported.

Layers, bottom to top (a module may import its own layer or lower ones):

  0  checks, sharding,            utilities every layer may use
     config_types
  1  data, world, curation, model
  2  losses
  3  train
  4  run                          run directories: names, lineage, loading
  5  eval
  6  rl
  7  stages
  8  main, launch, sweep          entry points (launch starts N mains;
                                 sweep runs an experiment's mains)
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "lifejax")

LAYERS = {
    "checks": 0, "sharding": 0, "config_types": 0,
    "data": 1, "world": 1, "curation": 1, "model": 1,
    "losses": 2,
    "train": 3,
    "run": 4,
    "eval": 5,
    "rl": 6,
    "stages": 7,
    "main": 8, "launch": 8, "sweep": 8,
}

# (importing module, imported module) pairs that break the layering, each
# with why. Nothing else may; shrink this list, never grow it casually.
_RUN_NAMES = ("run/layout.py holds the run directory's file names, and the "
              "trainer writes checkpoints/, metrics.jsonl and summary.json; "
              "layout imports nothing from lifejax, so no cycle. To remove: "
              "move the file names below train/ (or train/ above run/).")
ALLOWED: dict[tuple[str, str], str] = {
    ("lifejax.train.checkpoint", "lifejax.run.layout"): _RUN_NAMES,
    ("lifejax.train.loop", "lifejax.run.layout"): _RUN_NAMES,
    ("lifejax.train.metrics", "lifejax.run.layout"): _RUN_NAMES,
    ("lifejax.train.integrity", "lifejax.run.layout"): _RUN_NAMES,
    ("lifejax.train.engine", "lifejax.run.layout"): _RUN_NAMES,
}


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every .py file under lifejax/."""
  out = {}
  for d, _, files in os.walk(PACKAGE):
    for f in files:
      if not f.endswith(".py"):
        continue
      rel = os.path.relpath(os.path.join(d, f), ROOT)[:-len(".py")]
      parts = rel.split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = os.path.join(d, f)
  return out


MODULES = _modules()


def _resolve(importer: str, node: ast.ImportFrom) -> str:
  """The absolute module a `from ... import` names (relative ones too)."""
  if not node.level:
    return node.module or ""
  is_pkg = MODULES[importer].endswith("__init__.py")
  base = importer.split(".")
  base = base[:len(base) - node.level + (1 if is_pkg else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, int]]:
  """(imported lifejax module, line) for every import in `module`, at any
  depth (an import inside a function is a dependency all the same).
  `from pkg import name` counts as pkg.name when that is a module."""
  with open(MODULES[module], encoding="utf-8") as f:
    tree = ast.parse(f.read(), MODULES[module])
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = _resolve(module, node)
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
               for a in node.names]
    else:
      continue
    out += [(n, node.lineno) for n in names
            if n == "lifejax" or n.startswith("lifejax.")]
  return out


def _layer(module: str) -> int | None:
  """The layer of a module (None: the package root `lifejax`)."""
  parts = module.split(".")
  if len(parts) < 2:
    return None
  if parts[1] not in LAYERS:
    raise KeyError(f"{module}: lifejax.{parts[1]} has no layer; add it to "
                   "LAYERS (and to the module docstring)")
  return LAYERS[parts[1]]


# (importer prefix, imported prefix): imports the layer order would allow
# but the design rules out.
FORBIDDEN = {
    ("lifejax.eval", "lifejax.train.loop"):
        "evaluation reads models, it never runs the training loop (the eval "
        "pass lives in train/evaluate.py)",
}


def _under(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + ".")


def test_every_package_has_a_layer():
  for module in MODULES:
    _layer(module)


def test_imports_never_go_up_a_layer():
  violations = []
  for module in sorted(MODULES):
    low = _layer(module)
    if low is None:
      continue
    for target, line in _imports(module):
      high = _layer(target)
      if high is None or high <= low or (module, target) in ALLOWED:
        continue
      violations.append(f"{MODULES[module]}:{line}: {module} (layer {low}) "
                        f"imports {target} (layer {high})")
  assert not violations, "upward imports:\n" + "\n".join(violations)


def test_no_forbidden_imports():
  found = [f"{MODULES[m]}:{line}: {m} imports {t}: {why}"
           for m in sorted(MODULES) for t, line in _imports(m)
           for (src, dst), why in FORBIDDEN.items()
           if _under(m, src) and _under(t, dst)]
  assert not found, "\n".join(found)


def test_allow_list_has_no_stale_entries():
  live = {(m, t) for m in MODULES for t, _ in _imports(m)}
  stale = sorted(set(ALLOWED) - live)
  assert not stale, f"ALLOWED pairs no module imports any more: {stale}"


def test_allowed_targets_import_nothing_from_lifejax():
  # What makes an allowed upward import harmless: its target is a leaf.
  for target in sorted({t for _, t in ALLOWED}):
    assert not _imports(target), f"{target} is no longer a leaf"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` as a path [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level):
  """No module cycle; and no cycle between the packages of one layer (e.g.
  data <-> world), which the layer order alone would not catch."""
  graph: dict[str, set[str]] = {}
  for module in MODULES:
    src = module if level == "module" else ".".join(module.split(".")[:2])
    for target, _ in _imports(module):
      if (module, target) in ALLOWED:  # a leaf: it closes no cycle
        continue
      if level == "package":
        target = ".".join(target.split(".")[:2])
      # A package's __init__ importing its own submodules is no cycle.
      if target != src and not target.startswith(src + "."):
        graph.setdefault(src, set()).add(target)
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)
