"""The lifecycle chain on several seeds (issue 17, item 5): each link's
effect per seed, its mean ± sd over seeds, and whether the issue's target
for the recorded demo holds in every seed.

Reads the stage evaluations (`<root>/<stage>/eval.json`) of lifecycle roots
that ran `make demo`'s config with one seed each (run.sh), so nothing here
trains or samples. Every number is on the world's test split except the
release choice (dev) and the pretraining probes (held-out documents and the
fact probe).

  python experiments/lifecycle_seeds/summarize.py ROOT [ROOT ...] \
      --out=experiments/lifecycle_seeds/fact_world

writes results.md and lifecycle_seeds.png into --out and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

from lifejax import sweep  # noqa: E402
from lifejax.eval import chain, runs  # noqa: E402
from lifejax.run.layout import LifecycleRoot  # noqa: E402

PLOT = "lifecycle_seeds.png"
RESULTS = "results.md"
STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "release")
POLICIES = ("dpo", "ppo")
Metrics = Mapping[str, Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class Link:
  """One measured link of the chain: a value per seed (None: not measured
  in that root) and, when the issue sets one, a target each seed must
  meet."""
  link: str
  measure: str
  value: Callable[[Metrics], float | None]
  target: str = ""
  meets: Callable[[float], bool] | None = None
  kind: str = "pct"  # pct | num | p
  # A condition on the seed's metrics the target needs too (a two-sided
  # sign-test p meets "beats SFT" only when the policy won more pairs).
  also: Callable[[Metrics], bool] | None = None


def _get(stage: str, key: str) -> Callable[[Metrics], float | None]:
  def value(m: Metrics) -> float | None:
    v = m.get(stage, {}).get(key)
    return None if v is None else float(v)
  return value


def _diff(a: Callable[[Metrics], float | None],
          b: Callable[[Metrics], float | None]
          ) -> Callable[[Metrics], float | None]:
  def value(m: Metrics) -> float | None:
    x, y = a(m), b(m)
    return None if x is None or y is None else x - y
  return value


def flaw_rate(stage: str) -> Callable[[Metrics], float | None]:
  """The mean over flaw kinds of the share of test answers with that flaw
  (instruct/flaw/<kind>), None when the stage has no flaw rates."""
  def value(m: Metrics) -> float | None:
    rates = [v for k, v in m.get(stage, {}).items()
             if k.startswith("instruct/flaw/")]
    return float(np.mean(rates)) if rates else None
  return value


def _ahead(policy: str) -> Callable[[Metrics], bool]:
  """The policy won more of its paired comparisons with SFT than it lost
  (win rate, ties counting half, above 1/2)."""
  def ahead(m: Metrics) -> bool:
    v = m.get(policy, {}).get("win_rate_vs_ref")
    return v is not None and float(v) > 0.5
  return ahead


def flaw_ratio(policy: str) -> Callable[[Metrics], float | None]:
  """The policy's mean flaw rate over SFT's (target: at most 0.5)."""
  def value(m: Metrics) -> float | None:
    p, s = flaw_rate(policy)(m), flaw_rate("sft")(m)
    return None if p is None or not s else p / s
  return value


def picked_on_dev(m: Metrics) -> float | None:
  rel = m.get("release", {})
  if "selected_on" not in rel:
    return None
  return float(rel["selected_on"] in ("validation", "dev"))


def links() -> list[Link]:
  """The chain, in the order of the lifecycle; targets are issue 17's for
  the recorded demo (item 4)."""
  out = [
      Link("pretraining stores knowledge", "fact probe (base)",
           _get("pretrain", "fact_probe_accuracy")),
      Link("pretraining stores knowledge", "held-out perplexity (base)",
           _get("pretrain", "perplexity"), kind="num"),
      Link("base cannot follow instructions", "strict accuracy (base)",
           _get("pretrain", "instruct/accuracy"), "≤ 5%",
           lambda v: v <= 0.05),
      Link("SFT teaches the form", "format (SFT)",
           _get("sft", "instruct/format"), "≥ 90%", lambda v: v >= 0.90),
      Link("SFT teaches the form", "format gain over base",
           _diff(_get("sft", "instruct/format"),
                 _get("pretrain", "instruct/format"))),
      Link("SFT teaches the form", "strict accuracy, learnable group (SFT)",
           _get("sft", "instruct/accuracy_learnable"), "≥ 60%",
           lambda v: v >= 0.60),
      Link("SFT teaches the form", "strict accuracy, hard group (SFT)",
           _get("sft", "instruct/accuracy_hard")),
      Link("SFT imitates its demonstrations", "mean flaw rate (SFT)",
           flaw_rate("sft")),
      Link("the reward model sees the flaws", "held-out pair accuracy",
           _get("reward", "pair_accuracy"), "≥ 90%", lambda v: v >= 0.90),
      Link("the reward model sees the flaws", "wrong-fact pair accuracy",
           _get("reward", "pair_accuracy/wrong_fact"), "≥ 75%",
           lambda v: v >= 0.75),
  ]
  for p in POLICIES:
    name = p.upper()
    out += [
        Link(f"{name} removes what SFT got wrong", "win rate vs SFT",
             _get(p, "win_rate_vs_ref"), "≥ 60%", lambda v: v >= 0.60),
        Link(f"{name} removes what SFT got wrong", "sign-test p vs SFT",
             _get(p, "sign_test_p"), "< 0.01, ahead of SFT",
             lambda v: v < 0.01, "p", also=_ahead(p)),
        Link(f"{name} removes what SFT got wrong",
             "mean flaw rate / SFT's", flaw_ratio(p), "≤ 0.5",
             lambda v: v <= 0.5, "num"),
        Link(f"the KL term keeps {name} near SFT", "KL to SFT (nats)",
             _get(p, "kl_to_ref"), kind="num"),
    ]
  out.append(Link("the release candidate is picked on dev",
                  "selected on the dev split", picked_on_dev, "yes",
                  lambda v: v == 1.0, "num"))
  return out


def read_root(root: str) -> dict[str, dict[str, float]]:
  """{stage: eval metrics} of a lifecycle root (stages missing from it are
  left out); an unreadable root is an error naming the file."""
  lr = LifecycleRoot(root)
  if not os.path.exists(lr.ledger):
    raise FileNotFoundError(f"{root}: no {os.path.basename(lr.ledger)} (not "
                            "a lifecycle root, or it never started)")
  out = {}
  for stage in STAGES:
    path = lr.stage(stage).eval
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out[stage] = json.load(f)
  return out


def world_seed(root: str) -> str:
  """The seed the root's world was generated with (its world record), or
  the folder name when the record does not say."""
  path = LifecycleRoot(root).world_manifest
  try:
    with open(path, encoding="utf-8") as f:
      return str(json.load(f)["seed"])
  except (OSError, KeyError, ValueError):
    return os.path.basename(os.path.normpath(root))


def code_fingerprint(root: str) -> str:
  """The code fingerprint the root's ledger recorded (lifejax/ and the gin
  configs, run/provenance.py), "unknown" when it has none."""
  with open(LifecycleRoot(root).ledger, encoding="utf-8") as f:
    return str((json.load(f).get("code") or {}).get("sha256", "unknown"))


def _fmt(v: float | None, kind: str) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "—"
  if kind == "pct":
    return f"{100 * v:.1f}%"
  if kind == "p":
    return f"{v:.2g}"
  return f"{v:.3g}"


def table(per_seed: Sequence[Metrics], seeds: Sequence[str]
          ) -> tuple[list[dict[str, str]], list[dict]]:
  """(markdown rows, raw rows): one per link, the per-seed values, mean ±
  sd, the target and whether every seed meets it."""
  rows, raw = [], []
  for ln in links():
    vals = [ln.value(m) for m in per_seed]
    got = [v for v in vals if v is not None]
    row = {"link": ln.link, "measure": ln.measure}
    for s, v in zip(seeds, vals):
      row[f"seed {s}"] = _fmt(v, ln.kind)
    if len(got) >= 2:
      mean, sd = sweep.mean_sd(got)
      scale = 100 if ln.kind == "pct" else 1
      unit = "%" if ln.kind == "pct" else ""
      row["mean ± sd"] = f"{scale * mean:.3g}{unit} ± {scale * sd:.2g}{unit}"
    else:
      row["mean ± sd"] = _fmt(got[0], ln.kind) if got else "—"
    met = ([ln.meets(v) and (ln.also is None or ln.also(m))
            for v, m in zip(vals, per_seed) if v is not None]
           if ln.meets else [])
    row["target"] = ln.target or "—"
    row["met"] = ("—" if not ln.meets or not got else
                  "every seed" if all(met) and len(got) == len(vals) else
                  f"{sum(met)} of {len(vals)} seeds")
    rows.append(row)
    raw.append({"link": ln.link, "measure": ln.measure, "values": vals,
                "target": ln.target, "met": met})
  return rows, raw


def _cell(k: chain.Link) -> str:
  """effect [CI], p of one link, in the link's own units (the report's
  formatting, chain.format_value)."""
  num = lambda v: chain.format_value(v, k.kind)  # noqa: E731
  out = num(k.effect)
  if not math.isnan(k.ci[0]):
    out += f" [{num(k.ci[0])}, {num(k.ci[1])}]"
  if not math.isnan(k.p):
    out += f", p {k.p:.2g}"
  return out


def chain_table(roots: Sequence[str], seeds: Sequence[str]
                ) -> list[dict[str, str]]:
  """One row per tested link of each root's chain (lifejax.eval.chain, as
  its report.md shows it): per seed the effect, its 95% CI and p, and in
  how many seeds the link holds (claimed direction, p < chain.ALPHA)."""
  per_root = []
  for root in roots:
    stages = runs.read_stages(root)
    metrics = {s.name: runs.stage_metrics(s.run_dir) for s in stages}
    per_root.append({k.measure: k for k in chain.chain_links(stages,
                                                             metrics)})
  measures = list(dict.fromkeys(m for links in per_root for m in links))
  rows = []
  for measure in measures:
    found = [links.get(measure) for links in per_root]
    first = next(k for k in found if k is not None)
    row = {"link": first.claim, "measure": measure}
    for s, k in zip(seeds, found):
      row[f"seed {s}"] = "—" if k is None else (
          _cell(k) + ("" if k.holds is None else
                           " ✓" if k.holds else " ✗"))
    tested = [k for k in found if k is not None and k.holds is not None]
    row["holds in"] = (f"{sum(k.holds for k in tested)} of {len(found)}"
                       if tested else "—")
    rows.append(row)
  return rows


def _plot(raw: Sequence[dict], seeds: Sequence[str], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  shown = [r for r in raw if r["target"] and any(
      v is not None for v in r["values"]) and "p vs" not in r["measure"]
           and "selected" not in r["measure"]]
  fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.2))
  for i, r in enumerate(shown[::-1]):
    for j, v in enumerate(r["values"]):
      if v is not None:
        ax.plot(v, i, "o", color=f"C{j}",
                label=f"seed {seeds[j]}" if i == 0 else None)
    ax.text(1.02, i, f"target {r['target']}", va="center", fontsize=8,
            transform=ax.get_yaxis_transform())
  ax.set_yticks(range(len(shown)),
                [f"{r['link']}: {r['measure']}" for r in shown[::-1]],
                fontsize=8)
  ax.set_xlabel("value (shares as fractions)")
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title("The lifecycle chain per seed against issue 17's targets")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summarize(roots: Sequence[str], out_dir: str, command: str = "") -> str:
  per_seed = [read_root(r) for r in roots]
  seeds = [world_seed(r) for r in roots]
  if len(set(seeds)) < len(seeds):  # label columns by root as well
    seeds = [f"{s} ({os.path.basename(os.path.normpath(r))})"
             for s, r in zip(seeds, roots)]
  rows, raw = table(per_seed, seeds)
  lines = ["# The lifecycle chain on several seeds (issue 17, item 5)", ""]
  if command:
    lines += [f"Command: `{command}`", ""]
  names = ", ".join(os.path.basename(os.path.normpath(r)) for r in roots)
  lines += [f"Roots: {names} (world seeds {', '.join(seeds)}). Test split "
            "except the release choice (dev) and the pretraining probes.",
            ""]
  codes = [code_fingerprint(r) for r in roots]
  if len(set(codes)) == 1:
    lines += [f"Every root ran the same code (fingerprint {codes[0]}).", ""]
  else:
    lines += ["**The roots ran different code** (fingerprints " + ", ".join(
        codes) + "): seed-to-seed differences mix seeds and code.", ""]
  lines += sweep.write_table(rows, list(rows[0])).splitlines()
  held = [r for r in rows if r["met"] == "every seed"]
  lines += ["", f"Targets met in every seed: {len(held)} of "
            f"{sum(r['target'] != '—' for r in rows)}."]
  links = chain_table(roots, seeds)
  lines += ["", "## Each link tested per seed", "",
            "As each root's report.md computes it (lifejax/eval/chain.py): "
            "effect [95% CI] and p on the test prompts, paired by prompt "
            "where two stages answered the same ones; ✓ = the effect is in "
            f"the claimed direction with p < {chain.ALPHA} (forgetting: the "
            "CI of the perplexity ratio stays below "
            f"{1 + chain.FORGETTING_MARGIN:g}), ✗ = it is not.", ""]
  lines += sweep.write_table(links, list(links[0])).splitlines()
  every = [r for r in links if r["holds in"] == f"{len(roots)} of "
           f"{len(roots)}"]
  lines += ["", f"Links that hold in every seed: {len(every)} of "
            f"{sum(r['holds in'] != '—' for r in links)} tested"
            + (": " + "; ".join(r["measure"] for r in every) if every
               else "") + "."]
  md = "\n".join(lines) + "\n"
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, RESULTS), "w", encoding="utf-8") as f:
    f.write(md)
  _plot(raw, seeds, os.path.join(out_dir, PLOT))
  return md


def main(argv: Sequence[str] | None = None) -> str:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("roots", nargs="+", help="lifecycle roots, one per seed")
  ap.add_argument("--out", required=True,
                  help="folder for results.md and the plot (run.sh: "
                  "experiments/lifecycle_seeds/<gin name>)")
  args = ap.parse_args(argv)
  command = "python experiments/lifecycle_seeds/summarize.py " + " ".join(
      os.path.relpath(r) for r in args.roots)
  md = summarize(args.roots, args.out, command)
  print(md)
  return md


if __name__ == "__main__":
  main()
