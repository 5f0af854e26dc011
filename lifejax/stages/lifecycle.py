"""The lifecycle: world → curation → tokenizer + pretraining → SFT → reward
model → DPO and PPO → stage evaluations → report and model cards.

Each stage runs under its own gin scope (`pretrain/...`, `sft/...`, ...), in
its own run directory under `root`. Rerunning skips stages that finished
(their `eval.json` exists) and resumes one that was interrupted (the stage's
trainer restores its latest checkpoint). How each finished run is evaluated
lives in eval/lifecycle_evals.py; this module only composes the stages.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from lifejax import sharding
from lifejax.data import chat
from lifejax.data.jsonl import read_jsonl
from lifejax.eval import instruct, lifecycle_evals, stage_eval
from lifejax.model.config import TransformerConfig
from lifejax.rl import rollout
from lifejax.run import artifacts, provenance
from lifejax.run.compile_clock import CompileClock
from lifejax.run.layout import LifecycleRoot
from lifejax.stages.dpo import dpo
from lifejax.stages.pretrain import pretrain
from lifejax.stages.reward import reward
from lifejax.stages import runner
from lifejax.stages.rl import ppo
from lifejax.stages.sft import sft
from lifejax.train import metrics as metrics_lib
from lifejax.world import generator
from lifejax.world import tasks as wtask


def _elapsed(t0: float) -> str:
  m, sec = divmod(int(time.perf_counter() - t0), 60)
  return f"{m}:{sec:02d}"


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, default=str)


class _Ledger:
  """lifecycle.json: what ran, what was skipped, how long each took."""

  def __init__(self, root: LifecycleRoot, gin_files: Sequence[str]):
    self.path, self.root = root.ledger, root.root
    self.data = {"stages": [], "gin_files": list(gin_files),
                 "config_hash": hashlib.sha256(
                     gin.config_str().encode()).hexdigest()[:16],
                 # The code it ran: tools/check_recording.py tells a stale
                 # recording from a fresh one.
                 "code": provenance.code_fingerprint(),
                 "started": datetime.datetime.now().isoformat(
                     timespec="seconds")}

  def add(self, name: str, kind: str, run_dir: str, status: str,
          seconds: float, compile_seconds: float = 0.0,
          compiles: int = 0, eval_seconds: float = 0.0) -> None:
    # Relative to the root, so a copied or moved root stays readable and
    # the ledger names no machine path. compile_seconds / compiles: XLA
    # backend compilations during the stage (run and evaluation), part of
    # `seconds`; eval_seconds: the evaluation after the run, part of
    # `seconds` too.
    self.data["stages"].append({"name": name, "kind": kind,
                                "run_dir": os.path.relpath(run_dir,
                                                           self.root),
                                "status": status, "seconds": seconds,
                                "compile_seconds": compile_seconds,
                                "compiles": compiles,
                                "eval_seconds": eval_seconds})
    self.save()

  def save(self) -> None:
    self.data["finished"] = datetime.datetime.now().isoformat(
        timespec="seconds")
    _write_json(self.path, self.data)


@gin.configurable
def lifecycle(
    root: str = "runs/lifecycle",
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    world_seed: int = 0,
    world_scale: float = 1.0,
    world_demo_flaw_share: float = generator.DEMO_FLAW_SHARE,
    world_entity_scale: float = 1.0,
    world_fact_restatements: int = 0,
    world_answer_style: str = "restate",
    world_digest_qa: int = 0,
    world_heldout_qa: bool = False,
    world_demo_habits: bool = False,
    pretrain_sources: Sequence[str] = ("wiki", "support_chat", "records",
                                       "mail", "web"),
    source_weights: dict[str, float] | None = None,
    sft_general_sources: Sequence[str] = ("web",),
    run_dpo: bool = True,
    run_ppo: bool = True,
    eval_records: int = 40,
    eval_seq_len: int = 384,
    eval_batch_size: int = 16,
    generation: instruct.GenerationSpec = instruct.GenerationSpec(),
    lm_eval_tasks: Sequence[str] = (),
    lm_eval_include_path: str | None = None,
    gin_files: Sequence[str] = (),
    until: str | None = None,
) -> dict[str, Any]:
  """Runs every stage into `root`; returns {stage: eval metrics}.

  source_weights: relative weights of some of `pretrain_sources` (1 for the
  others); a source that is not one of them is an error.
  eval_records: the test prompts every stage is evaluated on and the dev
  prompts the release is picked on, spread evenly over the tasks
  (`balanced_subset`); the demo evaluates 216 of the world's 220.
  until: stop after this stage (and its evaluation), e.g. "pretrain" to
  measure what pretraining stores; None runs the whole lifecycle.
  lm_eval_tasks: local lm-eval tasks (YAML under `lm_eval_include_path`,
  needs the "eval" extra) run on the release candidate; their metrics go
  into the release eval ("lm_eval/<task>/<metric>") and its model card.
  """
  extra = sorted(set(source_weights or {}) - set(pretrain_sources))
  if extra:
    raise ValueError(f"lifecycle.source_weights: {extra} are not among "
                     f"lifecycle.pretrain_sources {list(pretrain_sources)}")
  order = (["pretrain", "sft", "reward"] + ["dpo"] * run_dpo
           + ["ppo"] * run_ppo + ["release"])
  if until is not None and until not in order:
    raise ValueError(f"lifecycle.until={until!r}: expected one of {order} "
                     "(or None for the whole lifecycle)")
  if bool(lm_eval_tasks) != bool(lm_eval_include_path):
    raise ValueError("lifecycle.lm_eval_tasks and lifecycle."
                     "lm_eval_include_path go together (local tasks only): "
                     f"got {list(lm_eval_tasks)} and {lm_eval_include_path!r}")
  if lm_eval_tasks:  # a missing task (or lm-eval) fails now, not after training
    from lifejax.eval import lm_eval_adapter  # pylint: disable=g-import-not-at-top
    lm_eval_adapter.check_tasks(lm_eval_tasks, lm_eval_include_path)
  lr = LifecycleRoot(root)
  _check_stages(lr, model, mesh, run_dpo, run_ppo)
  os.makedirs(lr.root, exist_ok=True)
  ledger = _Ledger(lr, gin_files)
  results: dict[str, Any] = {}
  t_start = time.perf_counter()
  n_stages = len(order) if until is None else order.index(until) + 1

  def run_dir(name: str) -> str:
    return lr.stage(name).root

  def stage(name: str, kind: str, run: Callable[[], Any],
            evaluate: Callable[[], dict]) -> None:
    rd = lr.stage(name)
    t0 = time.perf_counter()
    if os.path.exists(rd.eval):
      print(f"[lifecycle] {name}: complete, skipped", flush=True)
      ledger.add(name, kind, rd.root, "skipped", 0.0)
      with open(rd.eval, encoding="utf-8") as f:
        results[name] = json.load(f)
      return
    resumed = os.path.isdir(rd.checkpoints)
    k = len(ledger.data["stages"]) + 1
    label = f"[{k}/{n_stages} {name}]"
    print(f"[lifecycle] {label} {'resuming' if resumed else 'starting'} "
          f"({_elapsed(t_start)} elapsed)", flush=True)
    with (gin.config_scope(name), metrics_lib.progress_label(label),
          CompileClock() as clock):
      run()
      print(f"[lifecycle] {label} evaluating ({_elapsed(t_start)} "
            "elapsed)", flush=True)
      t_eval = time.perf_counter()
      metrics = evaluate()
      t_end = time.perf_counter()
    stage_eval.write_eval(rd.root, metrics)
    results[name] = metrics
    ledger.add(name, kind, rd.root, "resumed" if resumed else "done",
               t_end - t0, clock.seconds, clock.count, t_end - t_eval)

  def stopped_after(name: str) -> bool:
    """Whether lifecycle.until ends the run here (its outputs written)."""
    if until != name:
      return False
    ledger.save()
    _write_outputs(lr, [s for s in ("sft", "dpo", "ppo")
                        if os.path.exists(lr.stage(s).eval)])
    print(f"[lifecycle] stopped after {name} (lifecycle.until) in "
          f"{_elapsed(t_start)}; report: {lr.report}", flush=True)
    return True

  # 1. The embedded world and its curation.
  if not os.path.exists(lr.world_manifest):
    generator.generate_world(lr.world, seed=world_seed, scale=world_scale,
                             demo_flaw_share=world_demo_flaw_share,
                             entity_scale=world_entity_scale,
                             fact_restatements=world_fact_restatements,
                             answer_style=world_answer_style,
                             digest_qa=world_digest_qa,
                             heldout_qa=world_heldout_qa,
                             demo_habits=world_demo_habits)
  world_info = _check_world(lr, {
      "seed": world_seed, "scale": float(world_scale),
      "demo_flaw_share": float(world_demo_flaw_share),
      "entity_scale": float(world_entity_scale),
      "fact_restatements": world_fact_restatements,
      "answer_style": world_answer_style, "digest_qa": world_digest_qa,
      "heldout_qa": world_heldout_qa, "demo_habits": world_demo_habits})
  if not os.path.exists(lr.curation_report):
    from lifejax.curation import run_curation  # pylint: disable=g-import-not-at-top
    from lifejax.curation.config import embedded_world_config  # pylint: disable=g-import-not-at-top
    print("[lifecycle] curation", flush=True)
    run_curation(lr.world_corpus, lr.curated, embedded_world_config(),
                 eval_sets={"fact_questions": lr.world_eval("fact_questions")},
                 overwrite=True)
  with open(lr.curation_report, encoding="utf-8") as f:
    curation = json.load(f)

  train_files, weights = _curriculum(lr, curation, pretrain_sources,
                                     source_weights)
  tests = balanced_subset(read_jsonl(lr.world_instructions("test")),
                          eval_records)
  dev = balanced_subset(read_jsonl(lr.world_instructions("validation")),
                        eval_records)
  facts = read_jsonl(lr.world_eval("fact_questions"))
  # What pretraining stores, and SFT keeps, of the held-out facts (no SFT
  # task states them): multiple-choice ranking of their corpus statements.
  ranking = wtask.ranking_items(
      world_info["company"],
      read_jsonl(os.path.join(lr.world, "facts", "facts.jsonl")),
      {q["fact_id"] for q in facts}, world_info["seed"])
  general = lr.world_eval("general_holdout")
  prefs_train = [lr.world_preferences("train")]
  prefs_eval = lr.world_preferences("validation")
  jax_mesh = sharding.make_mesh(mesh)
  lm_eval = lifecycle_evals.LMEvaluator(model, jax_mesh, mesh.rules,
                                        eval_seq_len, eval_batch_size)
  pretrain_run, sft_run = run_dir("pretrain"), run_dir("sft")

  stage("pretrain", "pretrain",
        lambda: pretrain(run_dir=pretrain_run, model=model, mesh=mesh,
                         train_files=train_files, source_weights=weights),
        lambda: {**lm_eval(pretrain_run, pretrain_run,
                           lr.stage("pretrain").heldout_files() + [general],
                           chat.get_template("lifejax"), tests, facts,
                           generation, baseline_records=dev,
                           ranking=ranking),
                 "contamination_docs_removed": float(_contamination(curation))})
  if stopped_after("pretrain"):
    return results
  # The judge's zero point: the base model's mean total per task on the dev
  # prompts (pretraining's eval); later stages report judge_calibrated.
  baseline = instruct.baseline_of(results["pretrain"]) or None
  stage("sft", "sft",
        lambda: sft(run_dir=sft_run, model=model, mesh=mesh,
                    init_from=pretrain_run,
                    train_files=[lr.world_instructions("train")],
                    eval_files=[lr.world_instructions("validation")],
                    general_files=_shards(lr, sft_general_sources),
                    general_eval_files=[general]),
        lambda: {**lm_eval(sft_run, pretrain_run, [general],
                           artifacts.load_template(sft_run),
                           tests, (), generation, baseline=baseline,
                           ranking=ranking),
                 **_pool_flaws(lr)})
  if stopped_after("sft"):
    return results
  # One reward model for its own test eval and the DPO and PPO evals,
  # loaded when first needed. Its scorer is RL's (rl.rollout), so it is
  # wired here, above them.
  @functools.cache
  def reward_scorer() -> rollout.RewardModelScorer:
    return rollout.load_reward_scorer(run_dir("reward"), jax_mesh,
                                      mesh.rules)

  def score_rows(rows: dict[str, np.ndarray]) -> np.ndarray:
    scorer = reward_scorer()
    return (scorer.raw(rows) - scorer.mean) / scorer.std

  # Pair accuracy is the same under either; calibration (ECE of
  # sigmoid(chosen - rejected)) and the mean margin are the Bradley-Terry
  # model's own only on the raw scores, as the stage's dev figures are.
  def raw_score_rows(rows: dict[str, np.ndarray]) -> np.ndarray:
    return reward_scorer().raw(rows)

  # The reward model is trained on the train pairs and watched on the
  # validation pairs; its reported accuracy comes from the test pairs.
  stage("reward", "reward",
        lambda: reward(run_dir=run_dir("reward"), model=model, mesh=mesh,
                       init_from=sft_run, train_files=prefs_train,
                       eval_file=prefs_eval),
        lambda: lifecycle_evals.reward_metrics(
            run_dir("reward"), read_jsonl(lr.world_preferences("test")),
            raw_score_rows, eval_seq_len, tokenizer_run=sft_run))
  if stopped_after("reward"):
    return results

  policy_eval = lifecycle_evals.PolicyEval(
      model, jax_mesh, mesh.rules, sft_run, tests, generation, score_rows,
      eval_seq_len, baseline=baseline)
  if run_dpo:
    stage("dpo", "dpo",
          lambda: dpo(run_dir=run_dir("dpo"), model=model, mesh=mesh,
                      init_from=sft_run, train_files=prefs_train,
                      eval_file=prefs_eval,
                      prompt_file=lr.world_instructions("validation")),
          lambda: policy_eval(run_dir("dpo")))
    if stopped_after("dpo"):
      return results
  if run_ppo:
    stage("ppo", "ppo",
          lambda: ppo(run_dir=run_dir("ppo"), model=model, mesh=mesh,
                      sft_run=sft_run, reward_run=run_dir("reward"),
                      prompt_files=[lr.world_instructions("train")]),
          lambda: policy_eval(run_dir("ppo")))
    if stopped_after("ppo"):
      return results

  # The release candidate is picked on the dev prompts; its reported
  # numbers come from the test prompts.
  candidates = [s for s in ("sft", "dpo", "ppo") if s in results]

  def release() -> None:
    scores = {s: lifecycle_evals.dev_judge(run_dir(s), model, jax_mesh,
                                           mesh.rules, sft_run, dev,
                                           generation) for s in candidates}
    rd = lr.stage("release")
    os.makedirs(rd.root, exist_ok=True)
    _write_json(rd.stage_file, {
        "stage": "release", "candidate": lifecycle_evals.pick_release(scores),
        "selected_on": "validation", "dev_prompts": len(dev),
        "dev_judge": scores})

  def release_metrics() -> dict[str, Any]:
    with open(lr.stage("release").stage_file, encoding="utf-8") as f:
      picked = json.load(f)
    best = picked["candidate"]
    out = {"candidate": best, "selected_on": picked["selected_on"],
           **{f"dev_judge/{k}": v for k, v in picked["dev_judge"].items()},
           **lifecycle_evals.release_eval(
               run_dir(best), model, jax_mesh, mesh.rules, sft_run, tests,
               generation)}
    if lm_eval_tasks:  # lm-eval is an optional extra, imported on demand
      from lifejax.eval import lm_eval_adapter  # pylint: disable=g-import-not-at-top
      out.update(lm_eval_adapter.flat_metrics(lm_eval_adapter.evaluate_tasks(
          run_dir(best), lm_eval_tasks, lm_eval_include_path,
          tokenizer=sft_run, model=model, mesh=mesh,
          batch_size=eval_batch_size)))
    return out

  stage("release", "release", release, release_metrics)

  ledger.save()
  _write_outputs(lr, [s for s in ("sft", "dpo", "ppo")
                      if os.path.isdir(run_dir(s))])
  print(f"[lifecycle] finished in {_elapsed(t_start)}; report: {lr.report}",
        flush=True)
  return results


def balanced_subset(records: Sequence[Mapping[str, Any]], n: int
                    ) -> list[Mapping[str, Any]]:
  """`n` records spread evenly over their tasks (round robin over the task
  names in sorted order, each task's records in file order), returned in
  file order: every task is evaluated once n reaches the number of tasks,
  and no task's share depends on how the split happened to be shuffled."""
  by_task: dict[str, list[int]] = {}
  for i, r in enumerate(records):
    by_task.setdefault(r["task"], []).append(i)
  queues = [by_task[t] for t in sorted(by_task)]
  picked: list[int] = []
  depth = 0
  while len(picked) < min(n, len(records)):
    for q in queues:
      if depth < len(q) and len(picked) < n:
        picked.append(q[depth])
    depth += 1
  return [records[i] for i in sorted(picked)]


def _check_stages(lr: LifecycleRoot, model: TransformerConfig,
                  mesh: sharding.MeshConfig, run_dpo: bool,
                  run_ppo: bool) -> None:
  """Every stage's options, mesh and batch, checked in its gin scope before
  the world is generated: a check-only call (`runner.checking_only`) that
  reads and writes nothing, with stand-ins for the files later stages get."""
  later = os.path.join(lr.curated, "<made by an earlier stage>")
  run = lambda name: lr.stage(name).root  # noqa: E731
  calls = {
      "pretrain": lambda: pretrain(run_dir=run("pretrain"), model=model,
                                   mesh=mesh, train_files=[later]),
      "sft": lambda: sft(run_dir=run("sft"), model=model, mesh=mesh,
                         init_from=later, train_files=[later],
                         eval_files=[later], general_files=[later],
                         general_eval_files=[later]),
      "reward": lambda: reward(run_dir=run("reward"), model=model, mesh=mesh,
                               init_from=later, train_files=[later],
                               eval_file=later),
  }
  if run_dpo:
    calls["dpo"] = lambda: dpo(run_dir=run("dpo"), model=model, mesh=mesh,
                               init_from=later, train_files=[later],
                               eval_file=later, prompt_file=later)
  if run_ppo:
    calls["ppo"] = lambda: ppo(run_dir=run("ppo"), model=model, mesh=mesh,
                               sft_run=later, reward_run=later,
                               prompt_files=[later])
  with runner.checking_only():
    for name, call in calls.items():
      with gin.config_scope(name):
        call()


def _pool_flaws(lr: LifecycleRoot) -> dict[str, float]:
  """The flaw rates of SFT's training demonstrations, by the detector that
  scores its answers (instruct.flaws): what SFT should imitate."""
  train = read_jsonl(lr.world_instructions("train"))
  rates = instruct.judge_responses(
      train, [r["messages"][-1]["content"] for r in train])
  return {f"demo_pool/{k}": v for k, v in rates.items()
          if k.startswith("flaw/")}


def _check_world(lr: LifecycleRoot, wanted: Mapping[str, Any]
                 ) -> dict[str, Any]:
  """The root's world manifest, after refusing a world written by an older
  generator (e.g. a run root reused across versions: its sources and
  curation would not match this code) or with other settings than
  `wanted` (manifest key -> the lifecycle.world_* value asked for; keys a
  default world leaves out read as their default)."""
  with open(lr.world_manifest, encoding="utf-8") as f:
    manifest = json.load(f)
  version = manifest.get("format_version")
  if version != generator.FORMAT_VERSION:
    raise ValueError(
        f"{lr.world_manifest}: world format {version}, but this lifejax "
        f"writes format {generator.FORMAT_VERSION}; use a new "
        "lifecycle.root (or delete the old one) to rebuild the world")
  have = {k: manifest.get(k, generator.OPTIONAL_DEFAULTS.get(k))
          for k in wanted}
  differ = {k: (have[k], v) for k, v in wanted.items() if have[k] != v}
  if differ:
    said = "; ".join(f"{k}: the world has {have!r}, lifecycle.world_{k} asks "
                     f"for {want!r}" for k, (have, want) in differ.items())
    raise ValueError(
        f"{lr.world_manifest}: this root's world was built with other "
        f"settings ({said}); use a new lifecycle.root, or the world's "
        "settings, so that no stage trains on a world it was not asked for")
  return manifest


def _curriculum(lr: LifecycleRoot, report: dict, sources: Sequence[str],
                weights: dict[str, float] | None
                ) -> tuple[list[str], list[float]]:
  """Cleaned shards per source and per-document sampling weights that
  realize the curation mix table's token shares (share / mean doc length)."""
  rows = {r["source"]: r for r in report["mix"]}
  files, w = [], []
  for s in sources:
    shards = lr.curated_files(s)
    row = rows.get(s)
    if not shards or not row or not row["docs"]:
      raise ValueError(f"curation left no documents for source {s!r}")
    share = (weights or {}).get(s, 1.0) * row["share"]
    for path in shards:
      files.append(path)
      w.append(share * row["docs"] / max(row["words"], 1) / len(shards))
  total = sum(w)
  return files, [x / total for x in w]


def _shards(lr: LifecycleRoot, sources: Sequence[str]) -> list[str]:
  """The cleaned shards of `sources`: the retained pretraining text SFT mixes
  in against forgetting (web holds the general everyday pages)."""
  out = []
  for s in sources:
    if not os.path.isdir(lr.curated_dir(s)):
      raise ValueError(f"lifecycle.sft_general_sources: no curated source "
                       f"{s!r} in {lr.curated}")
    out += lr.curated_files(s)
  return out


def _contamination(report: dict) -> int:
  """Documents dropped by decontamination, over all registered eval sets."""
  return int(sum(v.get("docs", 0)
                 for v in report.get("contamination", {}).values()))


def _write_outputs(lr: LifecycleRoot, candidates: Sequence[str]) -> None:
  """report.md and a model card per final candidate."""
  from lifejax.eval import card, report  # pylint: disable=g-import-not-at-top
  report.write_report(lr.root)
  for name in candidates:
    card.write_model_card(lr.root, name)
