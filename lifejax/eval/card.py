"""The stage audit card (`model_card.yaml`) of a final candidate.

`write_model_card(root, stage)` fills the card from the run directories:
the candidate's checkpoint, every earlier stage reached through `init_from`
(data manifests, config hashes, checkpoints to roll back to and the commands
that restore them, see `card_rollback.py`), the chat template, the evaluation
(with the release's lm-eval results, if it ran any on this candidate) and a
safety report.
Every artifact the card names is a mapping with `path` and `sha256`
(directories hash as a whole, see `card_audit.sha256_dir`); paths inside the
lifecycle root are relative to the card's directory, so a copied root still
audits. `card_audit.audit_card(card)` re-hashes them all; `tools/audit.py` is
its CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

from lifejax.data.jsonl import read_jsonl
from lifejax.eval import runs
from lifejax.eval.card_audit import sha256_path
from lifejax.eval.card_rollback import restore_commands
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.run.lineage import Lineage
from lifejax.world import judge as judge_lib

CARD_VERSION = 1


class _Refs:
  """Makes artifact references relative to the card when under the root."""

  def __init__(self, root: str, card_dir: str):
    self.root, self.card_dir = os.path.abspath(root), card_dir
    self._hashes: dict[str, str] = {}  # checkpoints recur across sections

  def rel(self, path: str) -> str:
    path = os.path.abspath(path)
    if os.path.commonpath([path, self.root]) == self.root:
      return os.path.relpath(path, self.card_dir)
    return path

  def sha(self, path: str) -> str:
    path = os.path.abspath(path)
    if path not in self._hashes:
      self._hashes[path] = sha256_path(path)
    return self._hashes[path]

  def ref(self, path: str, **extra: Any) -> dict[str, Any]:
    return {"path": self.rel(path), "sha256": self.sha(path), **extra}


def _checkpoints(refs: _Refs, run_dir: str) -> dict[str, Any]:
  """The latest resume checkpoint and the best checkpoint of a run."""
  out: dict[str, Any] = {}
  run = RunDir(run_dir)
  for key, best in (("checkpoint", False), ("best_checkpoint", True)):
    steps = run.checkpoint_steps(best)
    if steps:
      out[key] = refs.ref(os.path.join(run.checkpoint_dir(best),
                                       str(steps[-1])), step=steps[-1])
  return out


def _plain(obj: Any) -> Any:
  """JSON-ready copy (tuples -> lists) that yaml.safe_dump can write."""
  return json.loads(json.dumps(obj, default=str))


def _model_dict(lineage: Lineage | None) -> dict[str, Any] | None:
  if lineage is None or lineage.model is None:
    return None
  return _plain(dataclasses.asdict(lineage.model))


def _data_manifest(refs: _Refs, lineage: Lineage | None
                   ) -> list[dict[str, Any]]:
  """Each data file of a run with its sha256 now and the 16-hex digest the
  run recorded when it read the file (they must agree)."""
  out = []
  for key, files in (lineage.inputs if lineage else {}).items():
    for path, recorded in files.items():
      entry = ({"path": refs.rel(path), "sha256": refs.sha(path)}
               if os.path.exists(path) else
               {"path": refs.rel(path), "sha256": None})
      entry.update(role=key, recorded_sha256_16=recorded)
      out.append(entry)
  return out


def _chain(run_dir: str) -> list[str]:
  """The run, then what it was initialized from, back to pretraining."""
  chain, seen = [], set()
  cur = os.path.abspath(run_dir)
  while cur and cur not in seen and os.path.isdir(cur):
    chain.append(cur)
    seen.add(cur)
    lineage = runs.lineage_of(cur)
    nxt = lineage.init_from if lineage else None
    cur = os.path.abspath(nxt) if nxt else None
  return chain


def _kind(run_dir: str, lineage: Lineage | None,
          known: Mapping[str, runs.Stage]) -> tuple[str, str]:
  """(stage name, kind) from lifecycle.json, else the run's own files."""
  if run_dir in known:
    return known[run_dir].name, known[run_dir].kind
  default = lineage.stage if lineage else os.path.basename(run_dir)
  name = runs.read_json(RunDir(run_dir).stage_file, {}).get("stage", default)
  kind = name
  if name == "pretrain" and lineage and lineage.init_from:
    kind = "cpt"
  return name, kind


def _tokenizer(refs: _Refs, lineage: Lineage | None) -> dict[str, Any]:
  tok = lineage.tokenizer if lineage else None
  if tok is None:
    return {"vocab_size": None}
  if not tok.path or not os.path.exists(tok.path):
    return {"vocab_size": tok.vocab_size}
  return refs.ref(tok.path, vocab_size=tok.vocab_size)


def _records(root: str) -> dict[str, dict[str, Any]]:
  """World instruction records by id (what the judge scores against)."""
  out: dict[str, dict[str, Any]] = {}
  d = LifecycleRoot(root).world_instructions_dir()
  for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if name.endswith(".jsonl"):
      for r in read_jsonl(os.path.join(d, name)):
        if "id" in r and "reference" in r:
          out[r["id"]] = r
  return out


def _latest_samples(run_dir: str) -> str | None:
  files = RunDir(run_dir).sample_files()
  return files[-1] if files else None


def _safety(refs: _Refs, root: str, run_dir: str,
            metrics: Mapping[str, float]) -> dict[str, Any]:
  """Refusal correctness, over-refusal, and PII leakage found by the judge's
  safety component on the candidate's latest saved answers."""
  out: dict[str, Any] = {
      "refusal_correctness": metrics.get("instruct/refusal"),
      "over_refusal": metrics.get("instruct/over_refusal"),
      "refusal_rate": metrics.get("refusal_rate"),
      "pii_leaks_in_eval": metrics.get("instruct/pii_leaks"),
  }
  samples = _latest_samples(run_dir)
  if samples is None:
    out["pii_leakage"] = None
    return out
  records = _records(root)
  judged = leaks = ref_leaks = 0
  leaked = []
  for row in read_jsonl(samples):
    rec = records.get(row.get("id"))
    if rec is None or not isinstance(row.get("response"), str):
      continue
    judged += 1
    if judge_lib.score(rec, row["response"]).components["safety"] == 0.0:
      leaks += 1
      leaked.append(row["id"])
    ref = row.get("reference_response")
    if isinstance(ref, str) and judge_lib.score(
        rec, ref).components["safety"] == 0.0:
      ref_leaks += 1
  out["pii_leakage"] = {
      "answers_judged": judged, "leaks": leaks,
      "rate": leaks / judged if judged else None,
      "reference_leaks": ref_leaks, "leaked_ids": leaked[:10],
      "samples": refs.ref(samples)}
  return out


def _related(refs: _Refs, lineage: Lineage | None,
             known: Mapping[str, runs.Stage]) -> list[dict[str, Any]]:
  """Other runs the candidate's lineage names (its frozen reference, the
  reward model PPO optimized against, ...) with their checkpoints."""
  if lineage is None:
    return []
  named = [("reference", lineage.reference)]
  for key, value in lineage.details.items():
    if isinstance(value, Mapping):  # e.g. PPO's reward: {"run": ...}
      named += [(f"{key}.{k}", v) for k, v in value.items()]
    else:
      named.append((key, value))
  out = []
  for role, value in named:
    if not isinstance(value, str) or not os.path.isfile(
        RunDir(value).lineage):
      continue
    run = RunDir(value)
    name, kind = _kind(run.root, runs.lineage_of(run.root), known)
    entry = {"role": role, "stage": name, "kind": kind,
             "run_dir": refs.rel(run.root), **_checkpoints(refs, run.root)}
    if os.path.isfile(run.operative_gin):
      entry["config"] = refs.ref(run.operative_gin)
    out.append(entry)
  return out


def _lm_eval(refs: _Refs, stages: Mapping[str, runs.Stage],
             stage_name: str) -> dict[str, Any] | None:
  """The release stage's lm-eval results ("lm_eval/<task>/<metric>" in its
  eval.json, lifecycle.lm_eval_tasks) by task, if it released this stage;
  None when it ran no lm-eval task or picked another candidate."""
  release = stages.get("release")
  if release is None:
    return None
  run = RunDir(release.run_dir)
  if runs.read_json(run.stage_file, {}).get("candidate") != stage_name:
    return None
  tasks: dict[str, dict[str, float]] = {}
  for key, value in (runs.read_json(run.eval) or {}).items():
    if key.startswith("lm_eval/"):
      task, metric = key[len("lm_eval/"):].split("/", 1)
      tasks.setdefault(task, {})[metric] = value
  return {"eval": refs.ref(run.eval), "tasks": tasks} if tasks else None


def _dataset(refs: _Refs, entry: dict[str, Any] | None,
             keys: tuple[str, ...]) -> dict[str, Any] | None:
  if entry is None:
    return None
  lin = entry["lineage"]
  details = lin.details if lin else {}
  out = {"stage": entry["name"], "run_dir": refs.rel(entry["run_dir"]),
         "files": _data_manifest(refs, lin)}
  out.update({k: _plain(details[k]) for k in keys if k in details})
  return out


def build_card(root: str, stage_name: str) -> tuple[str, dict[str, Any]]:
  """(card path, card dict) for stage `stage_name` of lifecycle `root`."""
  root = os.path.abspath(root)
  stages = {s.name: s for s in runs.read_stages(root)}
  by_dir = {os.path.abspath(s.run_dir): s for s in stages.values()}
  lr = LifecycleRoot(root)
  if stage_name not in stages:
    raise KeyError(f"stage {stage_name!r} is not in {lr.ledger} "
                   f"(stages: {sorted(stages)})")
  run_dir = os.path.abspath(stages[stage_name].run_dir)
  refs = _Refs(root, run_dir)
  chain = []
  for d in _chain(run_dir):
    lin = runs.lineage_of(d)
    name, kind = _kind(d, lin, by_dir)
    chain.append({"name": name, "kind": kind, "run_dir": d, "lineage": lin})
  cand, base = chain[0], chain[-1]
  metrics = runs.stage_metrics(run_dir)
  ledger = runs.read_json(lr.ledger, {})

  def first(*kinds: str) -> dict[str, Any] | None:
    return next((c for c in chain if c["kind"] in kinds), None)

  def lineage_entry(c: dict[str, Any]) -> dict[str, Any]:
    run, lin = RunDir(c["run_dir"]), c["lineage"]
    e = {"stage": c["name"], "kind": c["kind"], "run_dir": refs.rel(run.root),
         "init_from": (refs.rel(lin.init_from)
                       if lin and lin.init_from else None)}
    for key, path in (("config", run.operative_gin), ("lineage", run.lineage),
                      ("eval", run.eval), ("summary", run.summary)):
      if os.path.isfile(path):
        e[key] = refs.ref(path)
    e["data"] = _data_manifest(refs, c["lineage"])
    return e

  template_file = RunDir(run_dir).chat_template
  sft = first("sft")
  if not os.path.isfile(template_file) and sft:
    template_file = RunDir(sft["run_dir"]).chat_template
  template = runs.read_json(template_file)
  report_md = lr.report
  lm_eval = _lm_eval(refs, stages, stage_name)
  rollback = []
  for i, c in enumerate(chain[1:], start=1):
    ck = _checkpoints(refs, c["run_dir"])
    step = ck.get("checkpoint", {}).get("step")
    rollback.append({
        "stage": c["name"], "kind": c["kind"],
        "run_dir": refs.rel(c["run_dir"]), **ck,
        "restore": restore_commands(c["run_dir"], step, chain[i - 1],
                                    _model_dict(c["lineage"]) or {})})
  card = {
      "card_version": CARD_VERSION,
      "generated_by": "lifejax.eval.card.write_model_card (from the runs; "
                      "do not edit)",
      "audit": f"python tools/audit.py {RunDir(run_dir).model_card}",
      "lifecycle": {"root": root, "config_hash": ledger.get("config_hash"),
                    "gin_files": ledger.get("gin_files", []),
                    "finished": ledger.get("finished")},
      "model": {"stage": cand["name"], "kind": cand["kind"],
                "run_dir": refs.rel(run_dir),
                **_checkpoints(refs, run_dir),
                "config": _model_dict(cand["lineage"]),
                "num_params": runs.footprint(run_dir, metrics)[0],
                "param_bytes": runs.footprint(run_dir, metrics)[1],
                "tokenizer": _tokenizer(refs, base["lineage"])},
      "base_model": {"stage": base["name"], "kind": base["kind"],
                     "run_dir": refs.rel(base["run_dir"]),
                     **_checkpoints(refs, base["run_dir"]),
                     "tokenizer": _tokenizer(refs, base["lineage"]),
                     "pretraining_data": _data_manifest(refs,
                                                        base["lineage"])},
      "continued_pretraining_data": [
          _dataset(refs, c, ("source_weights",)) for c in chain
          if c["kind"] == "cpt"],
      "sft_dataset": _dataset(refs, sft, ("general_share",)),
      "preference_dataset": _dataset(
          refs, first(*runs.POLICY_KINDS, "reward"),
          ("loss", "loss_hparams", "train_pairs", "reward_from")),
      "chat_template": ({"file": refs.ref(template_file),
                         "name": template.get("name"), "template": template}
                        if template else None),
      "eval_report": {
          "report": (refs.ref(report_md) if os.path.isfile(report_md)
                     else None),
          "eval": (refs.ref(RunDir(run_dir).eval)
                   if os.path.isfile(RunDir(run_dir).eval) else None),
          "metrics": dict(sorted(metrics.items()))},
      # Only when the release ran lm-eval tasks on this candidate.
      **({"lm_eval": lm_eval} if lm_eval else {}),
      "safety_report": _safety(refs, root, run_dir, metrics),
      "rollback_artifacts": rollback,
      "related_runs": _related(refs, cand["lineage"], by_dir),
      "lineage": [lineage_entry(c) for c in chain],
  }
  return RunDir(run_dir).model_card, card


def write_model_card(root: str, stage_name: str) -> str:
  """Writes `<run_dir of stage_name>/model_card.yaml`; returns its path."""
  path, card = build_card(root, stage_name)
  text = yaml.safe_dump(card, sort_keys=False, allow_unicode=True,
                        width=4096)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("# Stage audit card, generated from the run directories.\n"
            f"# Check it: {card['audit']}\n")
    f.write(text)
  os.replace(tmp, path)
  return path
