"""The lifecycle's failure -> fix chain, link by link, with statistics.

Each link is a claim of the lifecycle story (pretraining stores knowledge,
SFT teaches the form, the reward model sees the flaws, preference tuning
removes what SFT got wrong, the KL term keeps the policy near SFT), measured
on the test prompts of one lifecycle root: the effect, its 95% CI, a
p-value where a test applies, and whether the link holds (the effect in the
claimed direction with p < ALPHA). Paired comparisons use the per-prompt
rows every stage evaluation writes (`<run>/eval_answers.jsonl`,
instruct.answer_rows), joined on the prompt id; the reward model's counts
come from its eval.json, the policies' win rates from their paired judge
statistics (policy_eval.paired_stats).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lifejax.data.jsonl import read_jsonl
from lifejax.eval import knowledge, stats
from lifejax.eval.runs import POLICY_KINDS, Stage, read_json
from lifejax.run.layout import RunDir

ALPHA = 0.05
# Forgetting is "none" while general perplexity rises by less than this.
FORGETTING_MARGIN = 0.10


@dataclasses.dataclass(frozen=True)
class Link:
  """One measured link. kind: "pct" (a share, in %), "pts" (a difference of
  shares, in percentage points), "ratio" or "num";
  holds: True / False for a tested claim, None for a measurement without a
  test."""
  claim: str
  measure: str
  effect: float
  ci: tuple[float, float] = (math.nan, math.nan)
  p: float = math.nan
  holds: bool | None = None
  n: int = 0
  kind: str = "pct"
  detail: str = ""


def answers(run_dir: str) -> dict[str, dict[str, Any]] | None:
  """A stage's eval_answers.jsonl rows by prompt id (None without one)."""
  path = RunDir(run_dir).eval_answers
  if not os.path.isfile(path):
    return None
  return {r["id"]: r for r in read_jsonl(path)}


def _paired(after: Mapping[str, Mapping[str, Any]],
            before: Mapping[str, Mapping[str, Any]], key: str,
            group: str | None = None) -> dict[str, float] | None:
  ids = [i for i in before if i in after
         and (group is None or before[i].get("group") == group)]
  if not ids:
    return None
  return stats.paired_binary([bool(after[i][key]) for i in ids],
                             [bool(before[i][key]) for i in ids])


def _flaws_per_answer(row: Mapping[str, Any]) -> float:
  return float(sum(bool(v) for v in row["flaws"].values()))


def _gain_link(claim: str, measure: str, s: Mapping[str, float] | None,
               base_name: str) -> Link | None:
  if s is None:
    return None
  return Link(claim, measure, s["diff"], (s["ci_lo"], s["ci_hi"]), s["p"],
              s["diff"] > 0 and s["p"] < ALPHA, int(s["n"]), kind="pts",
              detail=f"{100 * s['before']:.1f}% ({base_name}) → "
                     f"{100 * s['after']:.1f}%; {int(s['gained'])} prompts "
                     f"gained, {int(s['lost'])} lost")


def _share_link(claim: str, measure: str, k: int, n: int,
                p0: float | None = None) -> Link:
  """A share k / n with its Wilson CI; with p0 also the exact binomial test
  against it (the link holds when the share is above p0)."""
  p = stats.binom_test_p(k, n, p0) if p0 is not None else math.nan
  holds = None if p0 is None else (k / n > p0 and p < ALPHA)
  return Link(claim, measure, k / n if n else math.nan,
              stats.wilson_ci(k, n), p, holds, n,
              detail=f"{k} of {n}" + (f"; chance {100 * p0:.0f}%"
                                      if p0 is not None else ""))


def chain_links(stages: Sequence[Stage],
                metrics: Mapping[str, Mapping[str, float]]) -> list[Link]:
  """Every link the root's stages measured, in the chain's order."""
  out: list[Link] = []
  base = next((s for s in stages if s.kind == "pretrain"), None)
  sft = next((s for s in stages if s.kind == "sft"), None)
  base_rows = answers(base.run_dir) if base else None
  sft_rows = answers(sft.run_dir) if sft else None
  if base is not None:
    m = metrics[base.name]
    knows = _knowledge_link(base)
    if knows is not None:
      out.append(knows)
    elif "fact_probe_accuracy" in m and m.get("fact_probe_questions"):
      n = int(m["fact_probe_questions"])
      out.append(_share_link(
          "pretraining stores the world's knowledge",
          f"fact probe ({base.name}, held-out facts)",
          round(m["fact_probe_accuracy"] * n), n))
    if base_rows:
      k = sum(r["correct"] for r in base_rows.values())
      out.append(_share_link(
          "the base model cannot follow instructions",
          f"strict accuracy ({base.name})", k, len(base_rows)))
  if base_rows and sft_rows:
    for claim, measure, key, group in (
        ("SFT teaches the form", "format: SFT − base", "format", None),
        ("SFT teaches the tasks the budget can learn",
         "strict accuracy, learnable tasks: SFT − base", "correct",
         "learnable"),
        ("SFT teaches the copying tasks (hard at this budget)",
         "strict accuracy, hard tasks: SFT − base", "correct", "hard")):
      link = _gain_link(claim, measure, _paired(sft_rows, base_rows, key,
                                                group), base.name)
      if link:
        out.append(link)
  if base is not None and sft is not None:
    link = _forgetting(base, sft)
    if link:
      out.append(link)
  for s in stages:
    m = metrics[s.name]
    if s.kind == "reward" and m.get("pairs"):
      n = int(m["pairs"])
      out.append(_share_link("the reward model sees the flaws",
                             "pair accuracy (held-out pairs)",
                             round(m["pair_accuracy"] * n), n, 0.5))
      nf = int(m.get("pairs/wrong_fact", 0))
      if nf:
        link = _share_link(
            "the reward model sees wrong facts",
            "pair accuracy, wrong-fact pairs",
            round(m["pair_accuracy/wrong_fact"] * nf), nf, 0.5)
        tasks = sorted(k.rsplit("/", 1)[1] for k in m
                       if k.startswith("pairs_by_task/wrong_fact/"))
        if tasks:  # which tasks' wrong facts it sees (fact_qa vs emails)
          split = ", ".join(
              f"{t} {round(m[f'pair_accuracy_by_task/wrong_fact/{t}'] * c)}"
              f"/{c}" for t in tasks
              for c in [int(m[f"pairs_by_task/wrong_fact/{t}"])])
          link = dataclasses.replace(link, detail=f"{link.detail}; {split}")
        out.append(link)
    elif s.kind in POLICY_KINDS and "win_rate_vs_ref" in m:
      out.append(_policy_win(s, m))
      rows = answers(s.run_dir)
      if rows:
        r = stats.paired_ratio([_flaws_per_answer(v) for v in rows.values()],
                               [_flaws_per_answer(v["sft"])
                                for v in rows.values()])
        out.append(Link(
            f"{s.name.upper()} removes what SFT got wrong",
            f"flaws per answer: {s.name} / SFT", r["ratio"],
            (r["ci_lo"], r["ci_hi"]), r["p"],
            r["ratio"] < 1 and r["p"] < ALPHA, int(r["n"]), kind="ratio",
            detail=f"{r['after']:.3f} vs {r['before']:.3f} per answer; "
                   f"fewer on {int(r['lower'])} prompts, more on "
                   f"{int(r['higher'])}"))
      kl = m.get("kl_to_ref")
      if kl is not None:
        out.append(Link(f"the KL term keeps {s.name.upper()} near SFT",
                        f"KL to SFT (nats per answer, {s.name})", kl,
                        kind="num"))
  return out


def _knowledge_link(base: Stage) -> Link | None:
  """Multiple-choice fact ranking of the base model (fact_rank.json, one row
  per held-out fact): per fact, the share of its phrasings that rank the
  true value first minus 1 / candidates; the mean with a bootstrap CI over
  facts, and the exact sign test of facts above vs below chance (phrasings
  of one fact are not independent, facts are). Holds when it is above
  chance at ALPHA."""
  facts = read_json(RunDir(base.run_dir).fact_rank, {}).get("facts")
  if not facts:
    return None
  excess = np.array([np.mean(r["hits"]) - 1.0 / r["candidates"]
                     for r in facts.values()])
  lo, hi = stats.bootstrap_ci(excess[:, None])[0]
  above, below = int(np.sum(excess > 0)), int(np.sum(excess < 0))
  p = stats.sign_test_p(above, below)
  m = knowledge.ranking_metrics(facts)
  return Link("pretraining stores the world's knowledge",
              f"fact ranking − chance ({base.name}, held-out facts)",
              float(excess.mean()), (float(lo), float(hi)), p,
              bool(excess.mean() > 0 and p < ALPHA), len(excess), kind="pts",
              detail=f"true value ranked first in "
                     f"{100 * m['fact_rank/accuracy']:.1f}% of "
                     f"{int(m['fact_rank/items'])} (fact, phrasing) items, "
                     f"chance {100 * m['fact_rank/chance']:.1f}%; {above} "
                     f"facts above chance, {below} below")


def _forgetting(base: Stage, sft: Stage) -> Link | None:
  """General-text perplexity SFT / base on the packed rows both evaluated
  (the general holdout; a paired bootstrap over rows): holds when the CI's
  upper end stays below 1 + FORGETTING_MARGIN (non-inferiority)."""
  a, b = (read_json(RunDir(s.run_dir).eval_rows, {}) for s in (sft, base))
  shared = sorted(k for k in a if k in b and k.startswith("general"))
  if not shared:
    return None
  r = stats.paired_perplexity_ratio(a[shared[0]], b[shared[0]])
  return Link(
      "SFT keeps the general text (the retained mix against forgetting)",
      f"perplexity on {shared[0]}: {sft.name} / {base.name}", r["ratio"],
      (r["ci_lo"], r["ci_hi"]), r["p"], r["ci_hi"] < 1 + FORGETTING_MARGIN,
      int(r["n"]), kind="ratio",
      detail=f"{r['before']:.1f} → {r['after']:.1f}; holds if the CI stays "
             f"below {1 + FORGETTING_MARGIN:g}; loss rose on "
             f"{int(r['rose'])} of {int(r['n'])} rows")


def _policy_win(s: Stage, m: Mapping[str, float]) -> Link:
  wins, losses = int(m.get("wins", 0)), int(m.get("losses", 0))
  ties = int(m.get("ties", 0))
  circular = bool(m.get("eval_judge_is_training_reward"))
  win = m["win_rate_vs_ref"]
  return Link(
      f"{s.name.upper()} beats SFT", f"judge win rate vs SFT ({s.name})",
      win, (m.get("win_rate_ci_lo", math.nan), m.get("win_rate_ci_hi",
                                                     math.nan)),
      m.get("sign_test_p", math.nan),
      # A win under the judge it was trained on is no evidence.
      None if circular else (win > 0.5 and m.get("sign_test_p", 1.0) < ALPHA),
      wins + losses + ties,
      detail=f"{wins} wins, {ties} ties, {losses} losses"
             + ("; circular: trained on this judge" if circular else ""))


def format_value(v: float | None, kind: str) -> str:
  """A link's effect (or CI end) as the report prints it: "pct" as a
  percentage, "pts" as signed percentage points, anything else to 3
  significant digits; None or NaN as "—"."""
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "—"
  if kind == "pct":
    return f"{100 * v:.1f}%"
  if kind == "pts":
    return f"{100 * v:+.1f} pts"
  return f"{v:.3g}"


def _p(p: float) -> str:
  if math.isnan(p):
    return "—"
  return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def markdown(links: Sequence[Link]) -> list[str]:
  """The chain as a markdown table (claim, measure, effect, CI, p, n,
  holds?, detail), then the links that do not hold, named."""
  if not links:
    return ["—"]
  out = ["| link | measure | effect | 95% CI | p | n | holds? | detail |",
         "|---|---|---|---|---|---|---|---|"]
  for k in links:
    lo, hi = k.ci
    ci = ("—" if math.isnan(lo) else
          f"[{format_value(lo, k.kind)}, {format_value(hi, k.kind)}]")
    holds = {True: "yes", False: "**no**", None: "—"}[k.holds]
    out.append(f"| {k.claim} | {k.measure} | "
               f"{format_value(k.effect, k.kind)} | {ci} | {_p(k.p)} "
               f"| {k.n or '—'} | {holds} | {k.detail} |")
  failed = [k.claim for k in links if k.holds is False]
  tested = [k for k in links if k.holds is not None]
  out += ["", f"Holds (effect in the claimed direction, p < {ALPHA}): "
          f"{len(tested) - len(failed)} of {len(tested)} tested links."
          + (" **Does not hold:** " + "; ".join(failed) + "." if failed
             else "")]
  return out
