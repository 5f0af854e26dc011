"""Local runner: shards in parallel on all cores, resumable.

Work directory `<out>/_work/`:
  manifest.json             config fingerprint + shard plan of this run
  p1/<shard>.*              phase-1 survivors, signatures, removed ledger,
                            tally; `<shard>.done` is written last
  dedup.json                global dedup verdicts + the phase-1 tokens
                            they were computed from
  p2/<shard>.done           phase 2 done for the current dedup result
  ledger/<shard>.jsonl      one line per input document, its fate
Outputs: `<out>/<source>/<shard>.jsonl`, written atomically.

On restart, shards whose `.done` marker exists are skipped. The global dedup
is recomputed only if some phase-1 shard was redone, and a phase-2 shard is
redone if the dedup result it was built from has changed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lifejax.curation import dedup, steps
from lifejax.curation.config import CurationConfig
from lifejax.curation.decontam import ContaminationIndex
from lifejax.curation.shards import ShardSpec, write_json_atomic
from lifejax.curation.stats import Tally
from lifejax.data.jsonl import iter_jsonl, write_jsonl


def _p1(work: Path, spec: ShardSpec, suffix: str) -> Path:
  return work / "p1" / f"{spec.name}.{suffix}"


def phase1_job(spec: ShardSpec, config: CurationConfig, work: Path) -> str:
  """Runs and persists phase 1 of one shard; returns the shard's name."""
  records, sigs, removed, tally = steps.phase1_shard(spec, config)
  write_jsonl(_p1(work, spec, "records.jsonl"), records)
  tmp = _p1(work, spec, f"sig.tmp{os.getpid()}.npy")
  np.save(tmp, sigs)
  os.replace(tmp, _p1(work, spec, "sig.npy"))
  write_jsonl(_p1(work, spec, "removed.jsonl"), removed)
  write_json_atomic(_p1(work, spec, "tally.json"), tally.to_json())
  write_json_atomic(_p1(work, spec, "done"), {"token": uuid.uuid4().hex})
  return spec.name


def phase2_job(spec: ShardSpec, verdicts: dict[int, tuple[str, str]],
               index: ContaminationIndex | None, config: CurationConfig,
               out_dir: Path, work: Path, dedup_token: str) -> str:
  """Runs and persists phase 2 of one shard; returns the shard's name."""
  records = list(iter_jsonl(_p1(work, spec, "records.jsonl")))
  outputs, ledgers, tally = steps.phase2_shard(spec, records, verdicts, index,
                                               config)
  write_jsonl(out_dir / spec.source / f"{spec.name}.jsonl", outputs)
  removed = list(iter_jsonl(_p1(work, spec, "removed.jsonl")))
  ledger = sorted(removed + ledgers, key=lambda e: e["idx"])
  write_jsonl(work / "ledger" / f"{spec.name}.jsonl", ledger)
  write_json_atomic(work / "p2" / f"{spec.name}.tally.json", tally.to_json())
  write_json_atomic(work / "p2" / f"{spec.name}.done",
                    {"dedup": dedup_token})
  return spec.name


def _run_jobs(fn: Callable[..., str], jobs: Sequence[tuple[Any, ...]],
              num_workers: int) -> None:
  if num_workers <= 1 or len(jobs) <= 1:
    for args in jobs:
      fn(*args)
    return
  # spawn, not fork: the parent may hold threads (JAX, Beam) that fork breaks.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=min(num_workers, len(jobs)), mp_context=ctx) as pool:
    for future in [pool.submit(fn, *args) for args in jobs]:
      future.result()


def _check_manifest(work: Path, manifest: dict[str, Any]) -> None:
  path = work / "manifest.json"
  if path.exists():
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    if old != manifest:
      raise ValueError(
          f"{work.parent} holds a curation run with a different config, "
          "input or eval sets; use a fresh out_dir or overwrite=True")
  else:
    write_json_atomic(path, manifest)


def _global_dedup(specs: Sequence[ShardSpec], config: CurationConfig,
                  work: Path, token: str) -> dict[str, Any]:
  keys, ranks, ids, hashes, sigs = [], [], [], [], []
  for spec in specs:
    for r in iter_jsonl(_p1(work, spec, "records.jsonl")):
      keys.append((spec.name, r["idx"]))
      ranks.append(dedup.priority_rank(r["doc"]["source"],
                                       config.keep_priority))
      ids.append(r["doc"]["id"])
      hashes.append(r["hash"])
    sigs.append(np.load(_p1(work, spec, "sig.npy")))
  p = config.near_dedup.minhash.num_perm
  sig = np.concatenate(sigs) if sigs else np.zeros((0, p), dtype=np.uint32)
  verdicts, sizes = dedup.dedup_verdicts(keys, ranks, ids, hashes, sig,
                                         config.exact_dedup, config.near_dedup)
  by_shard: dict[str, list[list[Any]]] = {}
  for (shard, idx), (step, kept) in sorted(verdicts.items()):
    by_shard.setdefault(shard, []).append([idx, step, kept])
  result = {"token": token, "verdicts": by_shard,
            "cluster_sizes": {k: {str(s): n for s, n in v.items()}
                              for k, v in sizes.items()}}
  write_json_atomic(work / "dedup.json", result)
  return result


def run_local(specs: Sequence[ShardSpec], out_dir: Path,
              config: CurationConfig, index: ContaminationIndex | None,
              manifest: dict[str, Any], num_workers: int
              ) -> tuple[Tally, dict[str, Any]]:
  """Runs (or resumes) curation; returns the merged tally and a count of the
  work done and skipped in this call."""
  work = out_dir / "_work"
  _check_manifest(work, manifest)
  todo1 = [s for s in specs if not _p1(work, s, "done").exists()]
  _run_jobs(phase1_job, [(s, config, work) for s in todo1], num_workers)

  tokens = []
  for spec in specs:
    with open(_p1(work, spec, "done"), encoding="utf-8") as f:
      tokens.append(json.load(f)["token"])
  token = hashlib.sha256("".join(tokens).encode()).hexdigest()[:16]
  dedup_path = work / "dedup.json"
  result = None
  if dedup_path.exists():
    with open(dedup_path, encoding="utf-8") as f:
      result = json.load(f)
  dedup_ran = result is None or result["token"] != token
  if dedup_ran:
    result = _global_dedup(specs, config, work, token)

  def p2_done(spec: ShardSpec) -> bool:
    path = work / "p2" / f"{spec.name}.done"
    if not path.exists():
      return False
    with open(path, encoding="utf-8") as f:
      return json.load(f)["dedup"] == token

  todo2 = [s for s in specs if not p2_done(s)]
  jobs = [(s, {idx: (step, kept)
               for idx, step, kept in result["verdicts"].get(s.name, [])},
           index, config, out_dir, work, token) for s in todo2]
  _run_jobs(phase2_job, jobs, num_workers)

  tally = Tally(config.examples_per_reason)
  for spec in specs:
    for path in (_p1(work, spec, "tally.json"),
                 work / "p2" / f"{spec.name}.tally.json"):
      with open(path, encoding="utf-8") as f:
        tally.merge(Tally.from_json(json.load(f)))
  for kind, sizes in result["cluster_sizes"].items():
    for size, n in sizes.items():
      tally.counters[(f"{kind}_cluster_size", size)] += n
  work_done = {"phase1": {"run": len(todo1), "skipped": len(specs) - len(todo1)},
               "dedup": {"run": int(dedup_ran), "skipped": int(not dedup_ran)},
               "phase2": {"run": len(todo2),
                          "skipped": len(specs) - len(todo2)}}
  return tally, work_done
