"""The stage audit card (`model_card.yaml`) of a final candidate, and its audit.

`write_model_card(root, stage)` fills the card from the run directories:
the candidate's checkpoint, every earlier stage reached through `init_from`
(data manifests, config hashes, checkpoints to roll back to and the commands
that restore them), the chat template, the evaluation and a safety report.
Every artifact the card names is a mapping with `path` and `sha256`
(directories hash as a whole, see `sha256_dir`); paths inside the lifecycle
root are relative to the card's directory, so a copied root still audits.
`audit_card(card)` re-hashes them all; `tools/audit.py` is its CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from lifejax.data import judge as judge_lib
from lifejax.eval import runs

CARD_FILE = "model_card.yaml"
CARD_VERSION = 1
SECTIONS = ("base_model", "continued_pretraining_data", "sft_dataset",
            "preference_dataset", "chat_template", "eval_report",
            "safety_report", "rollback_artifacts", "lineage")
# Lineage keys holding {data file: sha256_16} manifests.
DATA_KEYS = ("train_files", "general_files", "eval_files", "eval_file",
             "prompt_files", "prompt_file")
# TransformerConfig fields a restarted stage must bind to load a checkpoint.
SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len",
                "tie_embeddings", "rope_theta")
# The stage entry point (and gin file under gin_configs/stages/) of a kind.
STAGE_FN = {"pretrain": "pretrain", "cpt": "pretrain", "sft": "sft",
            "reward": "reward", "ppo": "ppo", "grpo": "grpo"}
STAGE_FN.update({k: "dpo" for k in ("dpo", "cdpo", "ipo", "simpo")})
# The argument naming the run a stage starts from.
INIT_ARG = {"ppo": "sft_run", "grpo": "sft_run"}
_GIN_STAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "gin_configs", "stages")


# ------------------------------------------------------------------ hashing


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def sha256_dir(path: str) -> str:
  """Hash of a directory: over its files' sorted relative paths ('/'
  separated) and contents, so renaming, adding, removing or editing any file
  changes it, and the same tree hashes the same anywhere."""
  files = []
  for dirpath, _, names in os.walk(path):
    for n in names:
      full = os.path.join(dirpath, n)
      files.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
  h = hashlib.sha256()
  for rel, full in sorted(files):
    h.update(f"{rel}\0{sha256_file(full)}\n".encode())
  return h.hexdigest()


def sha256_path(path: str) -> str:
  return sha256_dir(path) if os.path.isdir(path) else sha256_file(path)


# --------------------------------------------------------------- the writer


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


def _steps(run_dir: str, sub: str) -> list[int]:
  d = os.path.join(run_dir, sub)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _checkpoints(refs: _Refs, run_dir: str) -> dict[str, Any]:
  """The latest resume checkpoint and the best checkpoint of a run."""
  out: dict[str, Any] = {}
  for key, sub in (("checkpoint", "checkpoints"), ("best_checkpoint", "best")):
    steps = _steps(run_dir, sub)
    if steps:
      out[key] = refs.ref(os.path.join(run_dir, sub, str(steps[-1])),
                          step=steps[-1])
  return out


def _data_manifest(refs: _Refs, lineage: Mapping[str, Any]
                   ) -> list[dict[str, Any]]:
  """Each data file of a run with its sha256 now and the 16-hex digest the
  run recorded when it read the file (they must agree)."""
  out = []
  for key in DATA_KEYS:
    files = lineage.get(key) or {}
    if isinstance(files, str):
      files = {files: None}
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
    nxt = runs.read_json(os.path.join(cur, "lineage.json"), {}).get(
        "init_from")
    cur = os.path.abspath(nxt) if nxt else None
  return chain


def _kind(run_dir: str, lineage: Mapping[str, Any],
          known: Mapping[str, runs.Stage]) -> tuple[str, str]:
  """(stage name, kind) from lifecycle.json, else the run's own files."""
  if run_dir in known:
    return known[run_dir].name, known[run_dir].kind
  name = runs.read_json(os.path.join(run_dir, "stage.json"), {}).get(
      "stage", lineage.get("stage", os.path.basename(run_dir)))
  kind = name
  if name == "pretrain" and lineage.get("init_from"):
    kind = "cpt"
  return name, kind


def _tokenizer(refs: _Refs, lineage: Mapping[str, Any]) -> dict[str, Any]:
  tok = lineage.get("tokenizer") or {}
  path = tok.get("path")
  if not path or not os.path.exists(path):
    return {"vocab_size": tok.get("vocab_size")}
  return refs.ref(path, vocab_size=tok.get("vocab_size"))


def _restore(run_dir: str, step: int | None, child: dict[str, Any] | None,
             model: Mapping[str, Any]) -> dict[str, str]:
  """Commands that bring a run's checkpoint back."""
  hf_dir = os.path.join(run_dir, "hf_export")
  out = {"export_hf": (
      "python tools/convert_checkpoint.py lifejax-to-hf "
      f"--run_dir={_quote(run_dir)} --hf_dir={_quote(hf_dir)}"
      + (f" --step={step}" if step is not None else "")),
         "python": (
             "lifejax.train.checkpoint.restore_params("
             f"{run_dir!r}, abstract_params, shardings, step={step})  # or "
             "lifejax.stages.preference.lm_params_from(run_dir, cfg, mesh, "
             "rules)")}
  fn = STAGE_FN.get(child["kind"]) if child else None
  if fn and os.path.isfile(os.path.join(_GIN_STAGES, f"{fn}.gin")):
    new_dir = f"{child['run_dir']}_from_{os.path.basename(run_dir)}"
    params = [f"{fn}.{INIT_ARG.get(fn, 'init_from')}={run_dir!r}",
              f"{fn}.run_dir={new_dir!r}"]
    for key in ("train_files", "general_files", "eval_files",
                "prompt_files"):
      if child["lineage"].get(key):
        params.append(f"{fn}.{key}={list(child['lineage'][key])!r}")
    for key in ("eval_file", "prompt_file"):
      value = child["lineage"].get(key)
      if isinstance(value, dict) and value:
        value = next(iter(value))
      if isinstance(value, str):
        params.append(f"{fn}.{key}={value!r}")
    if fn == "dpo" and child["lineage"].get("loss"):
      hparams = child["lineage"].get("loss_hparams", {})
      params += [f"dpo.loss={child['lineage']['loss']!r}",
                 f"dpo.loss_hparams={hparams!r}"]
    params += [f"TransformerConfig.{k}={model[k]!r}" for k in SHAPE_FIELDS
               if k in model]
    out["rerun_" + child["name"]] = (
        f"python -m lifejax.main --gin_file=stages/{fn}.gin " + " ".join(
            f"--gin_param={_quote(p)}" for p in params))
    out["rerun_note"] = (
        f"restarts {child['name']} from this checkpoint with the data its "
        "lineage.json records; parameters it does not record keep the "
        f"defaults of gin_configs/stages/{fn}.gin")
  return out


def _quote(arg: str) -> str:
  """Shell-quotes like the gin files' launch lines: "x.y='value'"."""
  if not any(c in arg for c in '"$`\\!'):
    return f'"{arg}"' if any(c in arg for c in " '[]{}()") else arg
  return shlex.quote(arg)


def _records(root: str) -> dict[str, dict[str, Any]]:
  """World instruction records by id (what the judge scores against)."""
  out: dict[str, dict[str, Any]] = {}
  d = os.path.join(root, "world", "instructions")
  for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if name.endswith(".jsonl"):
      for r in runs.read_rows(os.path.join(d, name)):
        if "id" in r and "reference" in r:
          out[r["id"]] = r
  return out


def _latest_samples(run_dir: str) -> str | None:
  d = os.path.join(run_dir, "samples")
  files = sorted(f for f in os.listdir(d) if f.endswith(".jsonl")
                 ) if os.path.isdir(d) else []
  return os.path.join(d, files[-1]) if files else None


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
  for row in runs.read_rows(samples):
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


def _related(refs: _Refs, lineage: Mapping[str, Any],
             known: Mapping[str, runs.Stage]) -> list[dict[str, Any]]:
  """Other runs the candidate's lineage names (its frozen reference, the
  reward model PPO optimized against, ...) with their checkpoints."""
  named = []
  for key, value in lineage.items():
    if isinstance(value, Mapping):  # e.g. PPO's reward: {"run": ...}
      named += [(f"{key}.{k}", v) for k, v in value.items()]
    elif key != "init_from":
      named.append((key, value))
  out = []
  for role, value in named:
    if not isinstance(value, str) or not os.path.isfile(
        os.path.join(value, "lineage.json")):
      continue
    d = os.path.abspath(value)
    lin = runs.read_json(os.path.join(d, "lineage.json"), {})
    name, kind = _kind(d, lin, known)
    entry = {"role": role, "stage": name, "kind": kind,
             "run_dir": refs.rel(d), **_checkpoints(refs, d)}
    if os.path.isfile(os.path.join(d, "operative_config.gin")):
      entry["config"] = refs.ref(os.path.join(d, "operative_config.gin"))
    out.append(entry)
  return out


def _dataset(refs: _Refs, entry: dict[str, Any] | None,
             keys: tuple[str, ...]) -> dict[str, Any] | None:
  if entry is None:
    return None
  lin = entry["lineage"]
  out = {"stage": entry["name"], "run_dir": refs.rel(entry["run_dir"]),
         "files": _data_manifest(refs, lin)}
  out.update({k: lin[k] for k in keys if k in lin})
  return out


def build_card(root: str, stage_name: str) -> tuple[str, dict[str, Any]]:
  """(card path, card dict) for stage `stage_name` of lifecycle `root`."""
  root = os.path.abspath(root)
  stages = {s.name: s for s in runs.read_stages(root)}
  by_dir = {os.path.abspath(s.run_dir): s for s in stages.values()}
  if stage_name not in stages:
    raise KeyError(f"stage {stage_name!r} is not in {root}/lifecycle.json "
                   f"(stages: {sorted(stages)})")
  run_dir = os.path.abspath(stages[stage_name].run_dir)
  refs = _Refs(root, run_dir)
  chain = []
  for d in _chain(run_dir):
    lin = runs.read_json(os.path.join(d, "lineage.json"), {})
    name, kind = _kind(d, lin, by_dir)
    chain.append({"name": name, "kind": kind, "run_dir": d, "lineage": lin})
  cand, base = chain[0], chain[-1]
  metrics = runs.stage_metrics(run_dir)
  ledger = runs.read_json(os.path.join(root, "lifecycle.json"), {})

  def first(*kinds: str) -> dict[str, Any] | None:
    return next((c for c in chain if c["kind"] in kinds), None)

  def lineage_entry(c: dict[str, Any]) -> dict[str, Any]:
    d = c["run_dir"]
    e = {"stage": c["name"], "kind": c["kind"], "run_dir": refs.rel(d),
         "init_from": (refs.rel(c["lineage"]["init_from"])
                       if c["lineage"].get("init_from") else None)}
    for key, name in (("config", "operative_config.gin"),
                      ("lineage", "lineage.json"), ("eval", "eval.json"),
                      ("summary", "summary.json")):
      if os.path.isfile(os.path.join(d, name)):
        e[key] = refs.ref(os.path.join(d, name))
    e["data"] = _data_manifest(refs, c["lineage"])
    return e

  template_file = os.path.join(run_dir, "chat_template.json")
  sft = first("sft")
  if not os.path.isfile(template_file) and sft:
    template_file = os.path.join(sft["run_dir"], "chat_template.json")
  template = runs.read_json(template_file)
  report_md = os.path.join(root, "report.md")
  rollback = []
  for i, c in enumerate(chain[1:], start=1):
    ck = _checkpoints(refs, c["run_dir"])
    step = ck.get("checkpoint", {}).get("step")
    rollback.append({
        "stage": c["name"], "kind": c["kind"],
        "run_dir": refs.rel(c["run_dir"]), **ck,
        "restore": _restore(c["run_dir"], step, chain[i - 1],
                            c["lineage"].get("model") or {})})
  card = {
      "card_version": CARD_VERSION,
      "generated_by": "lifejax.eval.card.write_model_card (from the runs; "
                      "do not edit)",
      "audit": f"python tools/audit.py {os.path.join(run_dir, CARD_FILE)}",
      "lifecycle": {"root": root, "config_hash": ledger.get("config_hash"),
                    "gin_files": ledger.get("gin_files", []),
                    "finished": ledger.get("finished")},
      "model": {"stage": cand["name"], "kind": cand["kind"],
                "run_dir": refs.rel(run_dir),
                **_checkpoints(refs, run_dir),
                "config": cand["lineage"].get("model"),
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
          "eval": (refs.ref(os.path.join(run_dir, "eval.json"))
                   if os.path.isfile(os.path.join(run_dir, "eval.json"))
                   else None),
          "metrics": dict(sorted(metrics.items()))},
      "safety_report": _safety(refs, root, run_dir, metrics),
      "rollback_artifacts": rollback,
      "related_runs": _related(refs, cand["lineage"], by_dir),
      "lineage": [lineage_entry(c) for c in chain],
  }
  return os.path.join(run_dir, CARD_FILE), card


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


# ---------------------------------------------------------------- the audit


@dataclasses.dataclass(frozen=True)
class Check:
  """One referenced artifact and what the audit found."""
  where: str      # location in the card, e.g. "lineage[1].config"
  path: str       # as written in the card
  resolved: str   # absolute path checked
  expected: str | None
  actual: str | None
  status: str     # ok | missing | tampered | unhashed | changed_since_training

  def __str__(self) -> str:
    return f"{self.status}: {self.path} ({self.where})"


Problem = Check


def _artifacts(node: Any, where: str = "") -> Iterator[tuple[str, dict]]:
  if isinstance(node, Mapping):
    if "path" in node:
      yield where, dict(node)
    for k, v in node.items():
      if k != "template":  # the chat template's own content, not a file
        yield from _artifacts(v, f"{where}.{k}" if where else str(k))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      yield from _artifacts(v, f"{where}[{i}]")


def check_card(card_path: str) -> list[Check]:
  """Re-hashes every artifact the card references (mappings with `path`)."""
  with open(card_path, encoding="utf-8") as f:
    card = yaml.safe_load(f)
  base = os.path.dirname(os.path.abspath(card_path))
  checks = []
  for where, a in _artifacts(card):
    path = str(a["path"])
    resolved = os.path.normpath(os.path.join(base, path))
    expected = a.get("sha256")
    actual = sha256_path(resolved) if os.path.exists(resolved) else None
    if actual is None:
      status = "missing"
    elif not expected:
      status = "unhashed"
    elif actual != expected:
      status = "tampered"
    elif a.get("recorded_sha256_16") and not actual.startswith(
        str(a["recorded_sha256_16"])):
      status = "changed_since_training"
    else:
      status = "ok"
    checks.append(Check(where, path, resolved, expected, actual, status))
  return checks


def audit_card(card_path: str) -> list[Problem]:
  """Problems with a card: each referenced artifact that is missing, whose
  hash differs from the card's, that the card lists without a hash, or whose
  content differs from what its stage read; plus missing card sections."""
  with open(card_path, encoding="utf-8") as f:
    card = yaml.safe_load(f) or {}
  problems = [Check(s, "", "", None, None, "missing_section")
              for s in SECTIONS if s not in card]
  return problems + [c for c in check_card(card_path) if c.status != "ok"]

