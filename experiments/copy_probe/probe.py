r"""Reads in-context copying off lifejax run directories.

Two probes per checkpoint:
  * random tokens: `lifejax.eval.copy_probe` (the lifecycle's own metric):
    16 sequences of 48 random ids, repeated; top-1 accuracy on the repeat
    and the NLL drop from the first copy to the second;
  * repeated email: 16 fresh update emails of the embedded world (the kind
    the summarize task shows), each followed by itself; the same two
    numbers. In-distribution text: the model knows the templates, and only
    the names, days and numbers are new, so a model that copies predicts
    the repeat almost perfectly;
  * drill: 16 fresh lists in the format of `add_drills.py`; NLL of the
    items in the list and in its repeat (only the drill arms trained on
    this format).

Usage:
  python experiments/copy_probe/probe.py runs/lifecycle_v2/pretrain \
      runs/lifecycle_v2/sft[@step] ...
Each argument is a run directory, optionally `@step` (default: latest).
The tokenizer is the one the run's lineage names.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from lifejax import sharding  # noqa: E402
from lifejax.eval import copy_probe  # noqa: E402
from lifejax.model import transformer  # noqa: E402
from lifejax.rl import rollout  # noqa: E402
from lifejax.run import artifacts  # noqa: E402
from lifejax.train.checkpoint import restore_params  # noqa: E402
from lifejax.world import emails as we  # noqa: E402
from lifejax.world import facts as wf  # noqa: E402
from lifejax.world import text as wt  # noqa: E402


def email_probe(graphdef, params, tokenizer, n: int = 16) -> dict[str, float]:
  """Top-1 and NLL of repeated update emails (first vs second copy)."""
  facts = wf.build_facts(0, 1.0)
  rng = wt.stream(123, "copy_probe_emails")
  seqs = [tokenizer.encode(we.updates_email(facts, rng).email + "\n\n")
          for _ in range(n)]
  length = min(len(s) for s in seqs)
  ids = jnp.asarray([s[:length] * 2 for s in seqs], jnp.int32)
  nll, hit = copy_probe.next_token_stats(graphdef, params, ids)
  first, second = slice(0, length - 1), slice(length, 2 * length - 1)
  return {"top1_first": float(hit[:, first].mean()),
          "top1_second": float(hit[:, second].mean()),
          "nll_first": float(nll[:, first].mean()),
          "nll_second": float(nll[:, second].mean())}


def drill_probe(graphdef, params, tokenizer, n: int = 16) -> dict[str, float]:
  """NLL of a fresh drill's list and of its repeat ("Again: ..."), in the
  format of `add_drills.py` (only the drill arms trained on it)."""
  facts = wf.build_facts(0, 1.0)
  rng = wt.stream(99, "copy_probe_drills")
  pool = ([e.first for e in facts.employees]
          + [p.name for p in facts.products] + list(wt.WEEKDAYS))
  sums, counts = [0.0, 0.0], [0, 0]
  for i in range(n):
    items = ", ".join(rng.choice(pool) for _ in range(10))
    head = tokenizer.encode(f"Memory drill {9000 + i}.\nList: {items}.")
    tail = tokenizer.encode(f"\nAgain: {items}.")
    ids = jnp.asarray([head + tail], jnp.int32)
    nll = copy_probe.next_token_stats(graphdef, params, ids)[0][0]
    # Skip each part's first few tokens (the "Memory drill N. List:" and
    # "Again:" scaffolding); score the listed items.
    for k, (lo, hi) in enumerate(((3, len(head) - 1),
                                  (len(head) + 3, ids.shape[1] - 1))):
      sums[k] += float(nll[lo:hi].sum())
      counts[k] += hi - lo
  return {"nll_list": sums[0] / counts[0], "nll_again": sums[1] / counts[1]}


def main(argv: list[str]) -> None:
  mesh_cfg = sharding.MeshConfig(data=1, fsdp=1, model=1)
  mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:1])
  print("| run | step | random: top-1 repeat | random: NLL 1st → 2nd | "
        "email: top-1 1st → 2nd | email: NLL 1st → 2nd | "
        "drill: NLL list → again |")
  print("|---|---|---|---|---|---|---|")
  for arg in argv:
    run, _, step = arg.partition("@")
    cfg = artifacts.load_model_config(run)
    graphdef, abstract, specs = rollout.abstract_params(
        transformer.Transformer, cfg, mesh, mesh_cfg.rules)
    params = restore_params(run, abstract, sharding.named(mesh, specs),
                            step=int(step) if step else None)
    tokenizer = artifacts.load_tokenizer(run)
    r = copy_probe.copy_probe(graphdef, params, tokenizer.vocab_size)
    e = email_probe(graphdef, params, tokenizer)
    d = drill_probe(graphdef, params, tokenizer)
    print(f"| `{run}` | {step or 'last'} | {r['copy/top1']:.1%} | "
          f"{r['copy/nll_first']:.2f} → {r['copy/nll_second']:.2f} | "
          f"{e['top1_first']:.1%} → {e['top1_second']:.1%} | "
          f"{e['nll_first']:.3f} → {e['nll_second']:.3f} | "
          f"{d['nll_list']:.2f} → {d['nll_again']:.2f} |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
