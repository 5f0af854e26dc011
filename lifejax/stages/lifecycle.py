"""The lifecycle: world → curation → tokenizer + pretraining → SFT → reward
model → DPO and PPO → stage evaluations → report and model cards.

Each stage runs under its own gin scope (`pretrain/...`, `sft/...`, ...), in
its own run directory under `root`. Rerunning skips stages that finished
(their `eval.json` exists) and resumes one that was interrupted (the stage's
trainer restores its latest checkpoint).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax

from lifejax import sharding
from lifejax.data import chat, synthetic
from lifejax.data.sources import read_jsonl
from lifejax.eval import instruct, stage_eval
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model.config import TransformerConfig
from lifejax.stages import common
from lifejax.stages.preference import dpo, lm_params_from, reward
from lifejax.stages.pretrain import pretrain
from lifejax.stages.rl import ppo
from lifejax.stages.sft import sft
from lifejax.train import metrics as metrics_lib
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import example_lm_batch, plan_training


def _elapsed(t0: float) -> str:
  m, sec = divmod(int(time.perf_counter() - t0), 60)
  return f"{m}:{sec:02d}"


def _done(run_dir: str) -> bool:
  return os.path.exists(os.path.join(run_dir, "eval.json"))


class _Ledger:
  """lifecycle.json: what ran, what was skipped, how long each took."""

  def __init__(self, root: str, gin_files: Sequence[str]):
    self.path = os.path.join(root, "lifecycle.json")
    self.data = {"stages": [], "gin_files": list(gin_files),
                 "config_hash": hashlib.sha256(
                     gin.config_str().encode()).hexdigest()[:16],
                 "started": datetime.datetime.now().isoformat(
                     timespec="seconds")}

  def add(self, name: str, kind: str, run_dir: str, status: str,
          seconds: float) -> None:
    self.data["stages"].append({"name": name, "kind": kind,
                                "run_dir": os.path.abspath(run_dir),
                                "status": status, "seconds": seconds})
    self.save()

  def save(self) -> None:
    self.data["finished"] = datetime.datetime.now().isoformat(
        timespec="seconds")
    with open(self.path, "w") as f:
      json.dump(self.data, f, indent=2)


@gin.configurable
def lifecycle(
    root: str = "runs/lifecycle",
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    world_seed: int = 0,
    world_scale: float = 1.0,
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
    gin_files: Sequence[str] = (),
) -> dict[str, Any]:
  """Runs every stage into `root`; returns {stage: eval metrics}."""
  os.makedirs(root, exist_ok=True)
  ledger = _Ledger(root, gin_files)
  world = os.path.join(root, "world")
  curated = os.path.join(root, "curated")
  results: dict[str, Any] = {}
  t_start = time.perf_counter()
  n_stages = 3 + int(run_dpo) + int(run_ppo) + 1

  def stage(name: str, kind: str, run: Callable[[], Any],
            evaluate: Callable[[], dict]) -> None:
    run_dir = os.path.join(root, name)
    t0 = time.perf_counter()
    if _done(run_dir):
      print(f"[lifecycle] {name}: complete, skipped", flush=True)
      ledger.add(name, kind, run_dir, "skipped", 0.0)
      with open(os.path.join(run_dir, "eval.json")) as f:
        results[name] = json.load(f)
      return
    resumed = os.path.isdir(os.path.join(run_dir, "checkpoints"))
    k = len(ledger.data["stages"]) + 1
    label = f"[{k}/{n_stages} {name}]"
    print(f"[lifecycle] {label} {'resuming' if resumed else 'starting'} "
          f"({_elapsed(t_start)} elapsed)", flush=True)
    with gin.config_scope(name), metrics_lib.progress_label(label):
      run()
      print(f"[lifecycle] {label} evaluating", flush=True)
      metrics = evaluate()
    stage_eval.write_eval(run_dir, metrics)
    results[name] = metrics
    ledger.add(name, kind, run_dir, "resumed" if resumed else "done",
               time.perf_counter() - t0)

  # 1. The embedded world and its curation.
  if not os.path.exists(os.path.join(world, "manifest.json")):
    synthetic.generate_world(world, seed=world_seed, scale=world_scale)
  _check_world(world)
  if not os.path.exists(os.path.join(curated, "curation_report.json")):
    from lifejax.curation import run_curation  # pylint: disable=g-import-not-at-top
    from lifejax.curation.config import embedded_world_config  # pylint: disable=g-import-not-at-top
    print("[lifecycle] curation", flush=True)
    run_curation(os.path.join(world, "corpus"), curated,
                 embedded_world_config(),
                 eval_sets={"fact_questions": os.path.join(
                     world, "eval", "fact_questions.jsonl")},
                 overwrite=True)
  with open(os.path.join(curated, "curation_report.json")) as f:
    curation = json.load(f)

  train_files, weights = _curriculum(curated, curation, pretrain_sources,
                                     source_weights)
  tests = read_jsonl(os.path.join(world, "instructions",
                                             "test.jsonl"))[:eval_records]
  facts = read_jsonl(os.path.join(world, "eval",
                                             "fact_questions.jsonl"))
  general = os.path.join(world, "eval", "general_holdout.jsonl")
  jax_mesh = sharding.make_mesh(mesh)
  lm_eval = _LMEvaluator(model, jax_mesh, mesh.rules, eval_seq_len,
                         eval_batch_size)
  template_default = chat.get_template("lifejax")

  def run_dir(name):
    return os.path.join(root, name)

  stage("pretrain", "pretrain",
        lambda: pretrain(run_dir=run_dir("pretrain"), model=model, mesh=mesh,
                         train_files=train_files, source_weights=weights),
        lambda: {**lm_eval(run_dir("pretrain"), run_dir("pretrain"),
                           _heldout_files(run_dir("pretrain")) + [general],
                           template_default, tests, facts, generation),
                 "contamination_docs_removed": float(_contamination(curation))})
  stage("sft", "sft",
        lambda: sft(run_dir=run_dir("sft"), model=model, mesh=mesh,
                    init_from=run_dir("pretrain"),
                    train_files=[os.path.join(world, "instructions",
                                              "train.jsonl")],
                    eval_files=[os.path.join(world, "instructions",
                                             "validation.jsonl")],
                    general_files=_shards(curated, sft_general_sources),
                    general_eval_files=[general]),
        lambda: lm_eval(run_dir("sft"), run_dir("pretrain"), [general],
                        chat.load_template(run_dir("sft")), tests, (),
                        generation))
  stage("reward", "reward",
        lambda: reward(run_dir=run_dir("reward"), model=model, mesh=mesh,
                       init_from=run_dir("sft"),
                       train_files=[os.path.join(world, "preferences",
                                                 "train.jsonl")],
                       eval_file=os.path.join(world, "preferences",
                                              "validation.jsonl")),
        lambda: _reward_metrics(run_dir("reward")))
  policy_eval_fn = _PolicyEval(model, jax_mesh, mesh.rules, run_dir("sft"),
                               tests, generation, run_dir("reward"),
                               eval_seq_len)
  if run_dpo:
    stage("dpo", "dpo",
          lambda: dpo(run_dir=run_dir("dpo"), model=model, mesh=mesh,
                      init_from=run_dir("sft"),
                      train_files=[os.path.join(world, "preferences",
                                                "train.jsonl")],
                      eval_file=os.path.join(world, "preferences",
                                             "validation.jsonl"),
                      prompt_file=os.path.join(world, "instructions",
                                               "validation.jsonl")),
          lambda: policy_eval_fn(run_dir("dpo")))
  if run_ppo:
    stage("ppo", "ppo",
          lambda: ppo(run_dir=run_dir("ppo"), model=model, mesh=mesh,
                      sft_run=run_dir("sft"), reward_run=run_dir("reward"),
                      prompt_files=[os.path.join(world, "instructions",
                                                 "train.jsonl")]),
          lambda: policy_eval_fn(_lm_dir(run_dir("ppo"))))

  candidates = [s for s in ("sft", "dpo", "ppo") if s in results]
  best = max(candidates, key=lambda s: results[s].get("instruct/judge", -1.0))
  stage("release", "release",
        lambda: common.write_json(
            os.path.join(_mkdir(run_dir("release")), "stage.json"),
            {"stage": "release", "candidate": best}),
        lambda: {"candidate": best, **_release_eval(
            best, run_dir(best), model, jax_mesh, mesh.rules,
            run_dir("sft"), tests, generation)})

  ledger.save()
  _write_outputs(root, [s for s in ("sft", "dpo", "ppo")
                        if os.path.isdir(run_dir(s))])
  print(f"[lifecycle] finished in {_elapsed(t_start)}; report: "
        f"{os.path.join(root, 'report.md')}", flush=True)
  return results


def _check_world(world: str) -> None:
  """Refuses a world written by an older generator (e.g. a run root reused
  across versions): its sources and curation would not match this code."""
  with open(os.path.join(world, "manifest.json")) as f:
    version = json.load(f).get("format_version")
  if version != synthetic.FORMAT_VERSION:
    raise ValueError(
        f"{world}/manifest.json: world format {version}, but this lifejax "
        f"writes format {synthetic.FORMAT_VERSION}; use a new "
        "lifecycle.root (or delete the old one) to rebuild the world")


def _curriculum(curated: str, report: dict, sources: Sequence[str],
                weights: dict[str, float] | None
                ) -> tuple[list[str], list[float]]:
  """Cleaned shards per source and per-document sampling weights that
  realize the curation mix table's token shares (share / mean doc length)."""
  rows = {r["source"]: r for r in report["mix"]}
  files, w = [], []
  for s in sources:
    shard_dir = os.path.join(curated, s)
    shards = sorted(os.path.join(shard_dir, f) for f in os.listdir(shard_dir)
                    if f.endswith(".jsonl"))
    row = rows.get(s)
    if not shards or not row or not row["docs"]:
      raise ValueError(f"curation left no documents for source {s!r}")
    share = (weights or {}).get(s, 1.0) * row["share"]
    for path in shards:
      files.append(path)
      w.append(share * row["docs"] / max(row["words"], 1) / len(shards))
  total = sum(w)
  return files, [x / total for x in w]


def _shards(curated: str, sources: Sequence[str]) -> list[str]:
  """The cleaned shards of `sources`: the retained pretraining text SFT mixes
  in against forgetting (web holds the general everyday pages)."""
  out = []
  for s in sources:
    d = os.path.join(curated, s)
    if not os.path.isdir(d):
      raise ValueError(f"lifecycle.sft_general_sources: no curated source "
                       f"{s!r} in {curated}")
    out += sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.endswith(".jsonl"))
  return out


def _heldout_files(pretrain_run: str) -> list[str]:
  """The documents the pretrain stage held out (it writes them there)."""
  d = os.path.join(pretrain_run, "heldout")
  if not os.path.isdir(d):
    return []
  return sorted(os.path.join(d, f) for f in os.listdir(d)
                if f.endswith(".jsonl"))


def _contamination(report: dict) -> int:
  """Documents dropped by decontamination, over all registered eval sets."""
  return int(sum(v.get("docs", 0)
                 for v in report.get("contamination", {}).values()))


class _LMEvaluator:
  """Evaluates an LM run: perplexities, fact probe, instruction accuracy."""

  def __init__(self, model: TransformerConfig, mesh: Any, rules: Any,
               seq_len: int, batch_size: int):
    self.model, self.mesh, self.rules = model, mesh, rules
    self.seq_len, self.batch_size = seq_len, batch_size
    self.plan = plan_training(
        model_cfg=model, make_loss=lambda g: make_lm_loss_fn(g),
        optimizer_cfg=OptimizerConfig(), mesh=mesh, rules=rules,
        example_batch=example_lm_batch(batch_size, seq_len))

  def __call__(self, run_dir: str, tokenizer_run: str,
               eval_files: Sequence[str], template: chat.ChatTemplate,
               instructions, facts, spec) -> dict[str, float]:
    params = lm_params_from(run_dir, self.model, self.mesh, self.rules)
    tokenizer = common.tokenizer_of(tokenizer_run)
    srcs = [common.source_from_path(p) for p in eval_files]
    return stage_eval.eval_lm(
        graphdef=self.plan.graphdef, params=params, tokenizer=tokenizer,
        eval_step=self.plan.eval_step,
        batch_shardings=self.plan.batch_shardings, heldout_sources=srcs,
        seq_len=self.seq_len, batch_size=self.batch_size, template=template,
        instruction_records=instructions, fact_questions=facts, spec=spec)


class _PolicyEval:
  """Win rate / KL / verbosity / refusals of a tuned run against SFT."""

  def __init__(self, model: TransformerConfig, mesh: Any, rules: Any,
               sft_run: str, records, spec, reward_run: str | None = None,
               seq_len: int = 384):
    self.model, self.mesh, self.rules = model, mesh, rules
    self.sft_run, self.records, self.spec = sft_run, records, spec
    self.reward_run, self.seq_len = reward_run, seq_len
    self._scorer = None

  def __call__(self, run_dir: str) -> dict[str, float]:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from lifejax.model import transformer  # pylint: disable=g-import-not-at-top
    graphdef, _ = nnx.split(transformer.abstract_model(self.model), nnx.Param)
    ref = jax.device_get(lm_params_from(self.sft_run, self.model, self.mesh,
                                        self.rules))
    params = jax.device_get(_policy_params(run_dir, self.model, self.mesh,
                                           self.rules))
    tokenizer = common.tokenizer_of(self.sft_run)
    template = chat.load_template(self.sft_run)
    reward_fn = None
    if self.reward_run:
      from lifejax.eval import policy_eval  # pylint: disable=g-import-not-at-top
      from lifejax.rl import rollout  # pylint: disable=g-import-not-at-top
      if self._scorer is None:  # one reward model for the DPO and PPO evals
        self._scorer = rollout.load_reward_scorer(self.reward_run, self.mesh,
                                                  self.rules)
      scorer = self._scorer
      reward_fn = policy_eval.response_reward_fn(
          lambda rows: (scorer.raw(rows) - scorer.mean) / scorer.std,
          template, tokenizer, self.records, self.seq_len)
    return stage_eval.eval_policy(graphdef, params, ref, tokenizer, template,
                                  self.records, self.spec, reward_fn)


def _lm_dir(run_dir: str) -> str:
  """The LM run directory of a stage: PPO exports its policy to policy/."""
  policy = os.path.join(run_dir, "policy")
  return policy if os.path.isdir(policy) else run_dir


def _policy_params(run_dir: str, model, mesh, rules):
  return lm_params_from(_lm_dir(run_dir), model, mesh, rules)


def _mkdir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


def _release_eval(name: str, cand_dir: str, model: TransformerConfig,
                  mesh: Any, rules: Any, sft_run: str, golden, spec
                  ) -> dict[str, float]:
  """Golden-set pass rate, generation speed and footprint of a candidate."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lifejax.model import transformer  # pylint: disable=g-import-not-at-top
  del name
  graphdef, _ = nnx.split(transformer.abstract_model(model), nnx.Param)
  params = _policy_params(cand_dir, model, mesh, rules)
  return stage_eval.eval_release(
      graphdef, params, model, common.tokenizer_of(sft_run),
      chat.load_template(sft_run), golden, spec)


def _reward_metrics(run_dir: str) -> dict[str, float]:
  with open(os.path.join(run_dir, "reward_eval.json")) as f:
    r = json.load(f)
  out = {"pair_accuracy": r["accuracy"], "ece": r["ece"],
         "mean_margin": r["mean_margin"]}
  out.update({f"pair_accuracy/{k}": v
              for k, v in r["accuracy_by_flaw"].items()})
  return out


def _write_outputs(root: str, candidates: Sequence[str]) -> None:
  """report.md and a model card per final candidate."""
  from lifejax.eval import card, report  # pylint: disable=g-import-not-at-top
  report.write_report(root)
  for name in candidates:
    card.write_model_card(root, name)
