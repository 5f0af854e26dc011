"""Sources read by name from TFDS (prepared datasets) and seqio (tasks).

A TFDS dataset must already be prepared under `data_dir` (lifejax never
downloads at run time); a seqio task must already be registered. For a seqio
Mixture see `lifejax.data.mixture.seqio_sources`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lifejax.data.sources import (BadRecord, FieldSpec, PathLike, Record,
                                  RowSource, Source, check_fields)


class TfdsSource(RowSource):
  """A prepared TFDS dataset read by name from `data_dir` (never downloads).

  array_record-backed datasets are read random access from disk; tfrecord
  ones are read once through tf.data and kept in memory.
  """

  def __init__(self, dataset: str, *, split: str,
               data_dir: PathLike | None = None, fields: FieldSpec = ("text",),
               name: str | None = None, skip_bad_records: bool = False):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    super().__init__(name or f"{dataset}:{split}", fields, skip_bad_records)
    self.dataset, self.split = dataset, split
    self._builder = tfds.builder(
        dataset, data_dir=None if data_dir is None else os.fspath(data_dir))
    if not self._builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS dataset {dataset!r} is not prepared under "
          f"{self._builder.data_dir}; lifejax never downloads at run time, "
          "prepare it beforehand (builder.download_and_prepare()).")
    file_format = self._builder.info.file_format
    self.random_access = (
        getattr(file_format, "value", file_format) == "array_record")
    self._examples: Sequence[Any] | None = None

  def _rows(self) -> Sequence[Any]:
    if self.random_access:
      return self._builder.as_data_source(split=self.split)
    if self._examples is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._examples = list(tfds.as_numpy(
          self._builder.as_dataset(split=self.split, shuffle_files=False)))
    return self._examples

  def _where(self, index: int) -> str:
    return f"tfds {self.dataset}/{self.split} row {index}"

  def _to_record(self, raw: Mapping[str, Any]) -> Record:
    return check_fields(raw, self.fields)


class SeqioSource(Source):
  """A registered seqio Task, one pass over a split, kept in memory.

  Records are the task's preprocessed examples: string features become str,
  token features (from a tokenize preprocessor) become lists of int. For a
  seqio Mixture use `lifejax.data.mixture.seqio_sources`.
  """

  def __init__(self, task: str, *, split: str, fields: FieldSpec = ("text",),
               name: str | None = None, skip_bad_records: bool = False):
    import seqio  # pylint: disable=g-import-not-at-top
    super().__init__(name or task, fields, skip_bad_records)
    self.task, self.split = task, split
    provider = seqio.get_mixture_or_task(task)
    if isinstance(provider, seqio.Mixture):
      raise ValueError(f"{task!r} is a seqio Mixture; use "
                       "lifejax.data.mixture.seqio_sources to get its tasks "
                       "and rates")
    self._task = provider

  def _records(self) -> Iterator[Record]:
    ds = self._task.get_dataset(sequence_length=None, split=self.split,
                                shuffle=False, use_cached=False, num_epochs=1)
    for i, example in enumerate(ds.as_numpy_iterator()):
      try:
        yield check_fields(example, self.fields)
      except BadRecord as bad:
        self._bad(f"seqio {self.task}/{self.split} row {i}", bad)
