"""The lifecycle report: `<root>/report.md` and its plots under `<root>/plots/`.

One table with a row per stage and that stage's own metrics, the
failure -> fix chain as the numbers show it, the curation summary, and PNG
plots (loss curves of every stage, reward vs KL of the policy stages, the SFT
forgetting panel). Everything is read from the run directories the
lifecycle wrote (lifecycle.json, each run's eval.json / summary.json /
metrics.jsonl / lineage.json); nothing is typed in by hand, and a metric a
run did not produce shows as "—".
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lifejax.eval import chain as chain_lib
from lifejax.eval import report_plots
from lifejax.eval import runs
from lifejax.eval.runs import (
    POLICY_KINDS, Stage, eval_rows, final_step, forgetting_series, read_json,
    read_stages, stage_metrics)
from lifejax.run.layout import LifecycleRoot

MISSING = "—"


# ------------------------------------------------------------ metric columns


@dataclasses.dataclass(frozen=True)
class Column:
  """A metric a stage kind reports: the first present key of `keys`, or,
  with `family`, one entry per key `<family><name>`."""
  label: str
  keys: tuple[str, ...] = ()
  family: str = ""
  fmt: str = "num"  # "pct" | "num" | "int" | "bytes"
  nested: bool = False  # a family's names may hold "/" (task/metric)


_LM_INSTRUCT = (
    Column("instruction acc", ("instruct/accuracy",), fmt="pct"),
    Column("acc learnable tasks", ("instruct/accuracy_learnable",),
           fmt="pct"),
    Column("acc hard (copying) tasks", ("instruct/accuracy_hard",),
           fmt="pct"),
    Column("acc", family="instruct/accuracy/", fmt="pct"),
    Column("fact QA closed book", ("instruct/fact_qa_closed_book/accuracy",),
           fmt="pct"),
    Column("fact QA open book", ("instruct/fact_qa_open_book/accuracy",),
           fmt="pct"),
    Column("format", ("instruct/format",), fmt="pct"),
    Column("judge", ("instruct/judge",)),
    # Rescaled per task so the base model's dev answers score 0 and a
    # perfect answer 1 (instruct.calibrate).
    Column("judge calibrated (base 0)", ("instruct/judge_calibrated",)),
    Column("refusal correct", ("instruct/refusal",), fmt="pct"),
    Column("over-refusal", ("instruct/over_refusal",), fmt="pct"),
    # The preference data's flaw kinds in the stage's own answers.
    Column("flaw", family="instruct/flaw/", fmt="pct"),
)
COLUMNS: dict[str, tuple[Column, ...]] = {
    "pretrain": (
        Column("held-out ppl", ("perplexity",)),
        Column("ppl", family="perplexity/"),
        Column("fact-probe acc", ("fact_probe_accuracy",
                                  "fact_probe/accuracy"), fmt="pct"),
        Column("contamination n-gram hits", ("contamination_hits",),
               fmt="int"),
        Column("contaminated docs removed", ("contamination_docs_removed",),
               fmt="int"),
        Column("in-context copy top-1", ("copy/top1",), fmt="pct"),
        Column("instruction acc", ("instruct/accuracy",), fmt="pct"),
        Column("judge", ("instruct/judge",)),
        Column("judge calibrated (base 0)", ("instruct/judge_calibrated",)),
    ),
    "cpt": (
        Column("domain ppl", ("domain_perplexity", "perplexity/domain")),
        Column("ppl", family="perplexity/"),
        Column("general regression", ("general_regression",), fmt="pct"),
    ),
    "sft": _LM_INSTRUCT + (
        Column("in-context copy top-1", ("copy/top1",), fmt="pct"),
        Column("PII leaks", ("instruct/pii_leaks",), fmt="int"),
        Column("general ppl", ("perplexity/general_holdout",
                               "general_general_holdout/perplexity")),
    ),
    "reward": (
        Column("pair acc", ("pair_accuracy",), fmt="pct"),
        Column("acc", family="pair_accuracy/", fmt="pct"),
        Column("ECE", ("ece",)),
    ),
    "policy": (
        Column("win rate vs SFT", ("win_rate_vs_ref", "win_rate_vs_sft",
                                   "win_rate"), fmt="pct"),
        # Paired over the same prompts (policy_eval.paired_stats): most
        # answers tie, so judge the win rate by these, not by eye.
        Column("win rate SE", ("win_rate_se",), fmt="pct"),
        Column("win rate 95% CI low", ("win_rate_ci_lo",), fmt="pct"),
        Column("win rate 95% CI high", ("win_rate_ci_hi",), fmt="pct"),
        Column("wins", ("wins",), fmt="int"),
        Column("losses", ("losses",), fmt="int"),
        Column("sign test p", ("sign_test_p",)),
        Column("KL to ref", ("kl_to_ref", "kl")),
        Column("words/answer", ("response_words",)),
        Column("refusal rate", ("refusal_rate",), fmt="pct"),
        Column("reward", ("reward",)),
        Column("reward Δ vs SFT", ("reward_gain_vs_ref",)),
        Column("judge Δ vs SFT", ("judge_gain_vs_ref",)),
        Column("judge score", ("judge_score", "true_judge")),
        Column("judge calibrated (base 0)", ("instruct/judge_calibrated",)),
        Column("instruction acc", ("instruct/accuracy",), fmt="pct"),
        Column("flaw", family="instruct/flaw/", fmt="pct"),
        # 1: trained on the judge that scores it, so its judge numbers are
        # circular (report them, but not as evidence).
        Column("trained on the eval judge", (
            "eval_judge_is_training_reward",), fmt="int"),
    ),
    "release": (
        Column("dev judge (selection)", family="dev_judge/"),
        Column("golden pass", ("golden_pass_rate",), fmt="pct"),
        # local lm-eval-harness tasks run on the candidate (lifecycle.
        # lm_eval_tasks), one column per task metric
        Column("lm-eval", family="lm_eval/", nested=True),
        Column("tokens/s", ("generation_tokens_per_sec", "tokens_per_sec")),
        Column("latency s/batch", ("generation_latency_sec_per_batch",
                                   "latency_sec")),
        Column("params", ("num_params",), fmt="int"),
        Column("memory", ("param_bytes", "memory_bytes"), fmt="bytes"),
    ),
}


def column_kind(stage: Stage) -> str:
  """The COLUMNS entry of a stage: pretraining with init_from is CPT."""
  if stage.kind in POLICY_KINDS:
    return "policy"
  if stage.kind == "pretrain":
    lineage = runs.lineage_of(stage.run_dir)
    return "cpt" if lineage and lineage.init_from else "pretrain"
  return stage.kind if stage.kind in COLUMNS else "pretrain"


def fmt(value: float | None, kind: str = "num") -> str:
  """A metric for a table cell; None / NaN -> "—"."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return MISSING
  if kind == "pct":
    return f"{100 * value:.1f}%"
  if kind == "int":
    return f"{int(round(value)):,}"
  if kind == "bytes":
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
      if value >= size:
        return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"
  mag = abs(value)
  if float(value).is_integer() and mag < 1e12:
    return f"{int(value):,}"
  if mag and (mag >= 1e5 or mag < 1e-3):
    return f"{value:.3g}"
  return f"{value:.4g}" if mag >= 100 else f"{value:.3f}"


def metric_cells(kind: str, metrics: Mapping[str, float]) -> list[str]:
  """"label value" for every column of `kind` ("label —" if missing)."""
  cells = []
  for col in COLUMNS[kind]:
    if col.family:
      names = sorted(k[len(col.family):] for k in metrics
                     if k.startswith(col.family)
                     and (col.nested or "/" not in k[len(col.family):]))
      cells += [f"{col.label} {n} {fmt(metrics[col.family + n], col.fmt)}"
                for n in names]
      continue
    key = next((k for k in col.keys if k in metrics), None)
    cells.append(f"{col.label} "
                 f"{fmt(metrics[key] if key else None, col.fmt)}")
  return cells


# ---------------------------------------------------------------- the chain


def _base_instruction_accuracy(stages: Sequence[Stage],
                               metrics: Mapping[str, Mapping[str, float]]
                               ) -> tuple[float | None, str]:
  for s in stages:
    if column_kind(s) == "pretrain" and "instruct/accuracy" in metrics[s.name]:
      return metrics[s.name]["instruct/accuracy"], s.name
  for s in stages:  # SFT's step-0 eval measures its starting (base) model
    if s.kind == "sft":
      for row in eval_rows(s.run_dir):
        if row.get("step") == 0 and "eval/instruct/accuracy" in row:
          return float(row["eval/instruct/accuracy"]), f"{s.name} step-0 eval"
  return None, ""


def failure_fix_chain(stages: Sequence[Stage],
                      metrics: Mapping[str, Mapping[str, float]]
                      ) -> tuple[str, list[str]]:
  """(the chain as one line, one observation per link), from the numbers."""
  links, notes = [], []
  base, where = _base_instruction_accuracy(stages, metrics)
  if base is not None:
    links.append(f"base model: instruction accuracy {fmt(base, 'pct')}")
    notes.append(f"The base model ({where}) answers "
                 f"{fmt(base, 'pct')} of the instructions correctly.")
  for s in stages:
    m = metrics[s.name]
    if s.kind == "sft" and "instruct/accuracy" in m:
      acc = m["instruct/accuracy"]
      links.append(f"{s.name.upper()} {fmt(acc, 'pct')}")
      if base is not None:
        delta = 100 * (acc - base)
        verdict = ("fixed by SFT" if delta > 0 else
                   "not fixed by SFT at this scale")
        notes.append(f"{s.name}: instruction accuracy {fmt(base, 'pct')} -> "
                     f"{fmt(acc, 'pct')} ({delta:+.1f} pts): {verdict}; "
                     f"format compliance "
                     f"{fmt(m.get('instruct/format'), 'pct')}, refusal "
                     f"correctness {fmt(m.get('instruct/refusal'), 'pct')}.")
      pool = sorted(k.split("/", 2)[2] for k in m
                    if k.startswith("demo_pool/flaw/"))
      if pool:
        notes.append(
            f"{s.name} imitates its demonstrations: flaw rates in the "
            "training pool → in its answers: " + ", ".join(
                f"{k} {fmt(m[f'demo_pool/flaw/{k}'], 'pct')} → "
                f"{fmt(m.get(f'instruct/flaw/{k}'), 'pct')}" for k in pool)
            + ".")
    elif s.kind == "reward" and "pair_accuracy" in m:
      flaws = {k.split("/", 1)[1]: v for k, v in m.items()
               if k.startswith("pair_accuracy/")}
      weakest = min(flaws.items(), key=lambda kv: kv[1]) if flaws else None
      notes.append(
          f"{s.name}: pairwise accuracy {fmt(m['pair_accuracy'], 'pct')}, "
          f"ECE {fmt(m.get('ece'))}" + (
              f"; weakest on {weakest[0]} ({fmt(weakest[1], 'pct')})"
              if weakest else "") + ".")
    elif s.kind in POLICY_KINDS:
      win = next((m[k] for k in COLUMNS["policy"][0].keys if k in m), None)
      if win is None:
        continue
      links.append(f"{s.name.upper()} win rate {fmt(win, 'pct')} vs SFT")
      verdict = "beats" if win > 0.5 else ("ties" if win == 0.5 else
                                           "loses to")
      dr, dj = m.get("reward_gain_vs_ref"), m.get("judge_gain_vs_ref")
      se = m.get("judge_gain_se")
      hacking = ""
      if dr is not None and dj is not None:
        # A judge drop within two paired SEs of zero is noise, not hacking.
        judge_down = dj < 0 and (se is None or dj < -2 * se)
        hacking = f", reward {dr:+.3f} and judge {dj:+.3f} vs SFT" + (
            " (reward up, judge down: reward hacking suspected)"
            if dr > 0 and judge_down else
            " (judge change within 2 SE of zero)"
            if dr > 0 and dj < 0 else "")
      sft_m = next((metrics[t.name] for t in stages if t.kind == "sft"), {})
      kinds = sorted(k.split("/", 2)[2] for k in m
                     if k.startswith("instruct/flaw/"))
      if kinds:
        notes.append(
            f"{s.name}: flaw rates SFT → {s.name}: " + ", ".join(
                f"{k} {fmt(sft_m.get(f'instruct/flaw/{k}'), 'pct')} → "
                f"{fmt(m[f'instruct/flaw/{k}'], 'pct')}" for k in kinds)
            + ".")
      if m.get("eval_judge_is_training_reward"):
        notes.append(f"{s.name} was rewarded by the judge that scores it: "
                     "its judge numbers are circular, not evidence.")
      notes.append(
          f"{s.name}: {verdict} SFT under the judge ({fmt(win, 'pct')}), KL "
          f"to the reference {fmt(m.get('kl_to_ref', m.get('kl')))}, "
          f"{fmt(m.get('response_words'))} words per answer, refusal rate "
          f"{fmt(m.get('refusal_rate'), 'pct')}{hacking}.")
  forgetting = _forgetting_note(stages, metrics)
  if forgetting:
    notes.append(forgetting)
  return " → ".join(links), notes


def _forgetting_note(stages: Sequence[Stage],
                     metrics: Mapping[str, Mapping[str, float]]) -> str:
  """General-text perplexity before and after SFT: the stage evals of the
  base and SFT models on the same held-out file if both have one, else the
  first and last evals of SFT's own forgetting panel."""
  base = next((s for s in stages if column_kind(s) == "pretrain"), None)
  for s in stages:
    if s.kind != "sft":
      continue
    shared = sorted(k for k in metrics[s.name] if k.startswith(
        "perplexity/general") and base and k in metrics[base.name])
    if shared:
      a, b = metrics[base.name][shared[0]], metrics[s.name][shared[0]]
      span = f"from {base.name} to {s.name} ({shared[0]})"
    else:
      series = forgetting_series(s.run_dir)
      if len(series["step"]) < 2:
        continue
      a, b = series["general_ppl"][0], series["general_ppl"][-1]
      span = (f"between {s.name} steps {series['step'][0]} and "
              f"{series['step'][-1]}")
    rise = b / a - 1
    return (f"General perplexity {fmt(a)} -> {fmt(b)} ({100 * rise:+.1f}%) "
            f"{span}: " + ("forgetting" if rise > 0.1 else
                           "no forgetting beyond 10%") + ".")
  return ""


# ------------------------------------------------------------------ markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |",
         "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return out


def curation_section(root: str) -> list[str]:
  lr = LifecycleRoot(root)
  rep = read_json(lr.curation_report)
  if rep is None:
    return ["## Curation", "", f"{MISSING} (no "
            f"{os.path.relpath(lr.curation_report, lr.root)})", ""]
  t = rep["totals"]
  md = ["## Curation", "",
        f"Documents in {t['docs_in']:,} → out {t['docs_out']:,}; words in "
        f"{t['words_in']:,} → out {t['words_out']:,} "
        f"([full report]({os.path.relpath(lr.curation_report_md, lr.root)}"
        ")).", "",
        "Effective mix:", ""]
  md += _table(["source", "docs", "words", "weight", "share",
                "natural share"],
               [[r["source"], f"{r['docs']:,}", f"{r['words']:,}",
                 fmt(r["weight"]), fmt(r["share"], "pct"),
                 fmt(r["natural_share"], "pct")] for r in rep["mix"]])
  if rep.get("contamination"):
    md += ["", "Decontamination:", ""]
    md += _table(["eval set", "items", "n-gram hits", "docs removed"],
                 [[k, v["eval_items"], v["ngram_hits"], v["docs"]]
                  for k, v in rep["contamination"].items()])
  return md + [""]


def _world_line(root: str) -> str:
  lr = LifecycleRoot(root)
  m = read_json(lr.world_manifest)
  if not m:
    return ""
  return (f"World: {m.get('company', 'embedded world')}, seed "
          f"{m.get('seed')}, scale {m.get('scale')} "
          f"({os.path.relpath(lr.world_manifest, lr.root)}).")


def write_report(root: str) -> str:
  """Writes `<root>/report.md` and `<root>/plots/*.png`; returns the path."""
  root = os.path.abspath(root)
  lr = LifecycleRoot(root)
  stages = read_stages(root)
  ledger = read_json(lr.ledger, {})
  metrics = {s.name: stage_metrics(s.run_dir) for s in stages}
  curation = read_json(lr.curation_report)
  for s in stages:  # the pretraining data's contamination report
    if column_kind(s) == "pretrain" and curation and curation.get(
        "contamination"):
      metrics[s.name].setdefault("contamination_hits", float(sum(
          v["ngram_hits"] for v in curation["contamination"].values())))

  rows = []
  for s in stages:
    m = metrics[s.name]
    n, nbytes = runs.footprint(s.run_dir, m)
    step = final_step(s.run_dir)
    rows.append([f"`{s.name}`", s.kind, s.status,
                 MISSING if step is None else step,
                 MISSING if math.isnan(s.seconds) else f"{s.seconds:.1f}",
                 MISSING if math.isnan(s.compile_seconds)
                 else f"{s.compile_seconds:.1f}",
                 MISSING if math.isnan(s.eval_seconds)
                 else f"{s.eval_seconds:.1f}",
                 f"{fmt(n, 'int')} ({fmt(nbytes, 'bytes')})",
                 "; ".join(metric_cells(column_kind(s), m))])
  chain, notes = failure_fix_chain(stages, metrics)

  os.makedirs(lr.plots, exist_ok=True)
  plots = {
      "Loss curves": report_plots.plot_loss_curves(
          stages, lr.loss_curves_plot),
      "Reward vs KL": report_plots.plot_reward_vs_kl(
          stages, lr.reward_vs_kl_plot),
      "Forgetting panel": report_plots.plot_forgetting(
          stages, lr.forgetting_plot),
  }

  md = ["# Lifecycle report", "",
        # The report sits in the root: its name, not this machine's path.
        f"Root `{os.path.basename(os.path.abspath(root))}`; config hash `{ledger.get('config_hash', MISSING)}`"
        f"; gin files {ledger.get('gin_files') or MISSING}; started "
        f"{ledger.get('started', MISSING)}, finished "
        f"{ledger.get('finished', MISSING)}.", ""]
  world = _world_line(root)
  md += [world, ""] if world else []
  md += ["## Stages", ""]
  md += _table(["stage", "kind", "status", "steps", "seconds",
                "of which XLA compile", "of which evaluation",
                "params (memory)",
                "stage-specific metrics"], rows)
  md += ["", "## Failure → fix chain (as observed)", "",
         f"**{chain}**" if chain else MISSING, ""]
  md += [f"- {n}" for n in notes] + [""]
  md += ["## The chain, link by link", "",
         "Test prompts; paired by prompt where two stages answered the same "
         "ones (exact McNemar / sign test, bootstrap CI over prompts); "
         "shares against chance by the exact binomial test (Wilson CI).",
         ""]
  md += chain_lib.markdown(chain_lib.chain_links(stages, metrics)) + [""]
  md += curation_section(root)
  md += ["## Plots", ""]
  for title, path in plots.items():
    md.append(f"![{title}]({os.path.relpath(path, root)})" if path else
              f"- {title}: {MISSING} (no data in the runs)")
  md.append("")
  for s in stages:
    pngs = sorted(f for f in os.listdir(s.run_dir) if f.endswith(".png")
                  ) if os.path.isdir(s.run_dir) else []
    if pngs:
      rel = os.path.relpath(s.run_dir, root)
      md.append(f"- `{s.name}`: " + ", ".join(
          f"[{p}]({rel}/{p})" for p in pngs))
  md += ["", "## All stage metrics", ""]
  for s in stages:
    m = metrics[s.name]
    md += [f"<details><summary><code>{s.name}</code> ({len(m)} metrics, "
           f"from eval.json / summary.json)</summary>", ""]
    md += _table(["metric", "value"], [[k, fmt(v)] for k, v in sorted(
        m.items())]) if m else [MISSING]
    md += ["", "</details>", ""]
  path = lr.report
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(md))
  os.replace(tmp, path)
  return path
