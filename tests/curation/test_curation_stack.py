"""The whole dependency stack imports in one process (protobuf pins agree)."""

import importlib


def test_whole_stack_imports_together():
  names = ["jax", "flax", "optax", "orbax.checkpoint", "grain", "seqio",
           "tensorflow_datasets", "sentencepiece", "apache_beam", "py3langid",
           "datasketch"]
  modules = [importlib.import_module(n) for n in names]
  assert all(m.__name__ == n for m, n in zip(modules, names))
  from sentencepiece import sentencepiece_model_pb2  # noqa: PLC0415
  proto = sentencepiece_model_pb2.ModelProto()
  proto.trainer_spec.vocab_size = 7
  parsed = sentencepiece_model_pb2.ModelProto.FromString(
      proto.SerializeToString())
  assert parsed.trainer_spec.vocab_size == 7
  beam_runner = importlib.import_module("lifejax.curation.beam_runner")
  assert callable(beam_runner.run_beam)
