"""Local data files as sources: pick a source by file type, hold out a
deterministic share of documents for evaluation, iterate their texts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lifejax.data import file_sources, sources as sources_lib, validation


def source_from_path(path: str, text_field: str = "text", *,
                     policy: str = validation.EVAL_POLICY
                     ) -> sources_lib.Source:
  """A source for a local file by extension: .jsonl[.gz], .txt, .parquet,
  .array_record. `policy` (validation.py) decides what a bad record does:
  "strict" raises its RecordError (`path:line: reason: ...`), "skip" drops
  it and counts it (`source.file_counts()`). A file with no records is an
  error either way, when the source is first read."""
  skip = validation.check_policy("policy", policy) == "skip"
  if path.endswith((".jsonl", ".jsonl.gz", ".json")):
    return file_sources.JsonlSource(path, fields=(text_field,),
                                    skip_bad_records=skip)
  if path.endswith(".parquet"):
    return file_sources.ParquetSource(path, fields=(text_field,),
                                      skip_bad_records=skip)
  if path.endswith(".array_record"):
    return file_sources.ArrayRecordSource(path, fields=(text_field,),
                                          skip_bad_records=skip)
  if path.endswith(".txt"):
    return file_sources.TextSource(path, unit="line", field=text_field,
                                   skip_bad_records=skip)
  raise ValueError(f"{path}: unknown data file type (expected .jsonl, "
                   ".jsonl.gz, .txt, .parquet or .array_record)")


def texts(srcs: Sequence[sources_lib.Source], field: str) -> Iterator[str]:
  for s in srcs:
    for r in s:
      yield r[field]


def holdout_split(srcs: Sequence[sources_lib.Source], field: str,
                  share: float
                  ) -> tuple[list[sources_lib.Source],
                             list[sources_lib.Source]]:
  """Deterministically holds out ~share of each source's documents (every
  round(1/share)-th one); (train sources, held-out sources)."""
  if not 0 < share < 1:
    raise ValueError(f"eval_holdout must be in (0, 1) when no eval_files are "
                     f"given, got {share}")
  train, held = [], []
  for s in srcs:
    records = list(s)
    if not records:
      s.as_map_dataset()  # raises: an empty file, or no valid records
    every = max(2, round(1 / share))
    keep = [r for i, r in enumerate(records) if i % every]
    out = [r for i, r in enumerate(records) if not i % every]
    if not keep or not out:
      raise ValueError(f"{s.describe()} has {len(records)} documents: too "
                       f"few to hold out {share:.0%} for eval")
    train.append(sources_lib.InMemorySource(keep, name=s.name, fields=(field,)))
    held.append(sources_lib.InMemorySource(out, name=f"{s.name}_eval",
                                           fields=(field,)))
  return train, held
