"""`run_curation`: the one entry point, for both runners.

  report = run_curation("world/corpus", "curated", CurationConfig(),
                        eval_sets={"fact_questions":
                                   "world/eval/fact_questions.jsonl"})

writes `curated/<source>/<source>-NNNNN.jsonl` ({"id", "text", "source",
...}) for the pretraining pipeline, plus `curated/curation_report.{json,md}`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lifejax.curation import report as report_lib
from lifejax.curation import scoring
from lifejax.curation.config import CurationConfig
from lifejax.curation.decontam import build_index, load_eval_jsonl
from lifejax.curation.local import run_local
from lifejax.curation.shards import materialize, plan_shards
from lifejax.curation.stats import Tally

EvalSets = Mapping[str, "str | os.PathLike | Iterable[str]"]
_SHARD_FILE = re.compile(r"^(?P<source>.+)-\d{5}\.jsonl$")


def _resolve_eval_sets(eval_sets: EvalSets | None) -> dict[str, list[str]]:
  """Eval sets as {name: [item text]}; a path means a JSONL eval file."""
  resolved: dict[str, list[str]] = {}
  for name, value in (eval_sets or {}).items():
    if isinstance(value, (str, os.PathLike)):
      resolved[name] = load_eval_jsonl(value)
    else:
      resolved[name] = [v for v in value if isinstance(v, str)]
  return resolved


def _digest_files(paths: Iterable[str]) -> str:
  h = hashlib.sha256()
  for path in sorted(set(paths)):
    h.update(path.encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()[:16]


def _clear(out_dir: Path) -> None:
  """Removes what a previous run wrote (and nothing else)."""
  shutil.rmtree(out_dir / "_work", ignore_errors=True)
  for name in ("curation_report.json", "curation_report.md"):
    (out_dir / name).unlink(missing_ok=True)
  if not out_dir.exists():
    return
  for sub in out_dir.iterdir():
    files = list(sub.iterdir()) if sub.is_dir() else None
    if files and all((m := _SHARD_FILE.match(f.name)) and
                     m.group("source") == sub.name for f in files):
      shutil.rmtree(sub)


def run_curation(inputs: "str | os.PathLike | Iterable[dict[str, Any]]",
                 out_dir: "str | os.PathLike",
                 config: CurationConfig = CurationConfig(),
                 eval_sets: EvalSets | None = None,
                 runner: str = "local",
                 num_workers: int | None = None,
                 overwrite: bool = False,
                 beam_args: Sequence[str] | None = None) -> dict[str, Any]:
  """Curates a corpus and writes cleaned shards plus the reports.

  Args:
    inputs: a directory of `<source>.jsonl[.gz]` files or `<source>/` folders
      of them, or any iterable of document dicts ({"id", "text", "source"}).
    out_dir: where `<source>/*.jsonl`, `curation_report.{json,md}` and the
      resumable work state (`_work/`) go.
    config: the step configuration.
    eval_sets: {name: JSONL path (question/answer fields) or item texts} to
      decontaminate against.
    runner: "local" (multiprocessing over shards, resumable: a rerun skips
      finished shards) or "beam" (not resumable here, since Beam retries
      failed work itself; it starts from a cleared out_dir).
    num_workers: local processes; default all cores. Worker processes are
      spawned, so a script calling this needs the usual
      `if __name__ == "__main__":` guard.
    overwrite: discard a previous run in `out_dir` instead of resuming it.
    beam_args: Beam pipeline options (default: DirectRunner).

  Returns:
    The report dict (also written as curation_report.json).
  """
  if runner not in ("local", "beam"):
    raise ValueError(f"runner must be 'local' or 'beam', got {runner!r}")
  out = Path(out_dir)
  if overwrite or runner == "beam":
    _clear(out)
  out.mkdir(parents=True, exist_ok=True)
  input_tally = Tally(config.examples_per_reason)
  if isinstance(inputs, (str, os.PathLike)):
    input_dir = Path(inputs)
    if not input_dir.is_dir():
      raise FileNotFoundError(f"input directory {input_dir} does not exist")
  else:
    input_dir = out / "_work" / "input"
    shutil.rmtree(input_dir, ignore_errors=True)
    materialize(inputs, input_dir, input_tally)
  specs = plan_shards(input_dir, config.input.shard_docs)

  items = _resolve_eval_sets(eval_sets)
  index = (build_index(items, config.decontam)
           if items and config.decontam.enabled else None)
  eval_digest = hashlib.sha256(repr(sorted(items.items())).encode()
                               ).hexdigest()[:16]

  if runner == "local":
    manifest = {"config": config.fingerprint(), "eval": eval_digest,
                "input": _digest_files(s.path for s in specs),
                "shards": [dataclasses.asdict(s) for s in specs]}
    tally, work = run_local(specs, out, config, index, manifest,
                            num_workers or os.cpu_count() or 1)
  else:
    from lifejax.curation.beam_runner import run_beam  # optional dependency
    tally = run_beam(specs, str(out), config, index, beam_args)
    work = {"shards": len(specs)}
  tally.merge(input_tally)

  result = report_lib.build_report(
      tally, config, {k: len(v) for k, v in items.items()},
      {"runner": runner, "work": work})
  scores = scoring.score_run(specs, out / "_work")
  if scores:
    result["scores"] = scores
  report_lib.write_report(result, out)
  return result
