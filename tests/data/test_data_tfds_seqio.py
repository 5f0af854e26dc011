"""TFDS and seqio sources over data built inside the test (no downloads)."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from lifejax.data import mixture
from lifejax.data import pipeline
from lifejax.data import sources
from lifejax.data import tfds_sources

TFDS_TEXTS = ["first doc", "Grüße 日本", "third doc", "fourth", "fifth"]


class LifejaxTinyCorpus(tfds.core.GeneratorBasedBuilder):
  """Five text examples in train, two in test; one has an empty label."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.Text(),
            "n": np.int32,
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {"train": self._generate_examples(TFDS_TEXTS),
            "test": self._generate_examples(["held out", "also held out"])}

  def _generate_examples(self, texts):
    for i, t in enumerate(texts):
      yield i, {"text": t, "label": "" if i == 1 else f"L{i}", "n": i}


@pytest.fixture(scope="module", params=["array_record", "tfrecord"])
def tfds_dir(request, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp(request.param)
  LifejaxTinyCorpus(data_dir=str(data_dir),
                    file_format=request.param).download_and_prepare()
  return data_dir, request.param


def test_tfds_source_by_name(tfds_dir):
  data_dir, file_format = tfds_dir
  src = tfds_sources.TfdsSource("lifejax_tiny_corpus", split="train",
                                data_dir=data_dir,
                                fields={"text": str, "n": int})
  assert src.random_access == (file_format == "array_record")
  assert src.name == "lifejax_tiny_corpus:train"
  records = list(src)
  assert sorted(r["text"] for r in records) == sorted(TFDS_TEXTS)
  assert all(isinstance(r["n"], int) for r in records)
  ds = src.as_map_dataset()
  assert len(ds) == 5 and ds[len(ds) - 1] in records
  held_out = tfds_sources.TfdsSource("lifejax_tiny_corpus", split="test",
                                     data_dir=data_dir)
  assert sorted(r["text"] for r in held_out) == ["also held out", "held out"]


def test_tfds_wrong_field_type_names_row(tfds_dir):
  data_dir, _ = tfds_dir
  src = tfds_sources.TfdsSource("lifejax_tiny_corpus", split="train",
                                data_dir=data_dir, fields={"n": str})
  with pytest.raises(
      sources.RecordError,
      match=r"tfds lifejax_tiny_corpus/train row \d: wrong_type"):
    list(src)


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="never downloads"):
    tfds_sources.TfdsSource("lifejax_tiny_corpus", split="train",
                            data_dir=tmp_path)


def _register_text_task(name: str, path, feature: str = "text",
                        vocabulary=None):
  def to_feature(ds):
    return ds.map(lambda line: {feature: line})

  preprocessors = [to_feature]
  if vocabulary is None:
    out = seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string,
                        add_eos=False, rank=0)
  else:
    out = seqio.Feature(vocabulary, add_eos=False)
    preprocessors.append(seqio.preprocessors.tokenize)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.TextLineDataSource({"train": str(path)}),
      preprocessors=preprocessors, output_features={feature: out})


@pytest.fixture(scope="module")
def seqio_tasks(tmp_path_factory):
  root = tmp_path_factory.mktemp("seqio")
  (root / "a.txt").write_text("".join(f"alpha {i}\n" for i in range(30)))
  (root / "b.txt").write_text("".join(f"beta {i}\n" for i in range(10)))
  _register_text_task("lifejax_test_a", root / "a.txt")
  _register_text_task("lifejax_test_b", root / "b.txt")
  seqio.MixtureRegistry.remove("lifejax_test_mix")
  seqio.MixtureRegistry.add("lifejax_test_mix",
                            [("lifejax_test_a", 3.0), ("lifejax_test_b", 1.0)])
  return root


def test_seqio_task_source(seqio_tasks):
  src = tfds_sources.SeqioSource("lifejax_test_a", split="train")
  assert src.name == "lifejax_test_a"
  assert [r["text"] for r in src] == [f"alpha {i}" for i in range(30)]
  with pytest.raises(ValueError, match="is a seqio Mixture"):
    tfds_sources.SeqioSource("lifejax_test_mix", split="train")


def test_seqio_mixture_feeds_grain_mixing_with_its_rates(seqio_tasks,
                                                         tokenizer):
  srcs, rates = mixture.seqio_sources("lifejax_test_mix", split="train")
  assert [s.name for s in srcs] == ["lifejax_test_a", "lifejax_test_b"]
  assert rates == [3.0, 1.0]
  ds = pipeline.lm_dataset(srcs, tokenizer, seq_len=64, batch_size=4, seed=1,
                           weights=rates, shard_index=0, shard_count=1)
  counts = collections.Counter()
  it = iter(ds)
  for _ in range(25):
    batch = next(it)
    for row_tokens, row_seg in zip(batch["tokens"], batch["segment_ids"]):
      # Documents are short, so each segment is a whole one; its first word
      # names its task.
      for seg in set(row_seg[row_seg > 0].tolist()):
        counts[tokenizer.decode(row_tokens[row_seg == seg]).split()[0]] += 1
  assert set(counts) == {"alpha", "beta"}
  share = counts["alpha"] / (counts["alpha"] + counts["beta"])
  assert abs(share - 0.75) < 0.05, counts


def test_seqio_vocabulary_matches_tokenizer(tokenizer, corpus):
  vocab = tokenizer.as_seqio_vocabulary()
  assert vocab.vocab_size == tokenizer.vocab_size
  assert (vocab.pad_id, vocab.eos_id) == (tokenizer.pad_id, tokenizer.eos_id)
  for text in corpus[:10]:
    ids = tokenizer.encode(text)
    assert list(vocab.encode(text)) == ids
    assert list(vocab.encode_tf(tf.constant(text)).numpy()) == ids
    assert vocab.decode(ids) == text


def test_pre_tokenized_seqio_task_is_used_verbatim(tmp_path, tokenizer):
  (tmp_path / "c.txt").write_text("gamma one\ngamma two\n")
  _register_text_task("lifejax_test_tok", tmp_path / "c.txt",
                      feature="targets",
                      vocabulary=tokenizer.as_seqio_vocabulary())
  src = tfds_sources.SeqioSource("lifejax_test_tok", split="train",
                                 fields={"targets": list})
  records = list(src)
  assert records[0]["targets"] == tokenizer.encode("gamma one")
  batch = next(iter(pipeline.lm_eval_dataset(
      src, tokenizer, seq_len=16, batch_size=1, text_field="targets",
      shard_index=0, shard_count=1)))
  n = len(records[0]["targets"]) - 1
  assert list(batch["tokens"][0, :n]) == records[0]["targets"][:-1]
