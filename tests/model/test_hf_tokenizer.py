"""Tokenizers from checkpoint directories: HF tokenizer.json vs transformers,
SentencePiece fallback, and use in the LM data pipeline."""

import os
import pickle
import shutil

import numpy as np
import pytest

from lifejax.data import hf_tokenizer, pipeline, sources
from lifejax.data import tokenizer as sp_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]
CORPUS = ["the cat sat on the mat", "the dog ate the bone",
          "a bird in the hand is worth two in the bush",
          "Ünïcödé text and numbers 12345"] * 3
TEXTS = ["the cat ate the bird", "  two spaces\nand a newline",
         "unseen: ∑ 日本 🙂", ""]


def train_hf_tokenizer_dir(path) -> str:
  """A byte-level BPE tokenizer saved as a HF tokenizer directory."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
      pad_token="<pad>", additional_special_tokens=SPECIALS[3:])
  fast.save_pretrained(path)
  return str(path)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return train_hf_tokenizer_dir(tmp_path_factory.mktemp("hf_tok"))


@pytest.fixture(scope="module")
def reference(hf_dir):
  return transformers.AutoTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def tok(hf_dir):
  t = hf_tokenizer.load_tokenizer_dir(hf_dir)
  assert isinstance(t, hf_tokenizer.HFTokenizer)
  return t


def test_matches_transformers(tok, reference):
  assert tok.vocab_size == len(reference)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
      reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
  assert tok.special_ids == {
      s: reference.convert_tokens_to_ids(s) for s in SPECIALS}
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False), text
    assert tok.decode(ids) == text  # byte-level BPE round-trips exactly
    assert reference.decode(ids) == text


def test_bos_eos_and_lookups(tok):
  ids = tok.encode("the cat", add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert ids[1:-1] == tok.encode("the cat")
  assert tok.decode(ids) == "the cat"
  assert tok.decode(ids, render_special=True) == "<s>the cat</s>"
  assert tok.token_to_id("<|user|>") == tok.special_ids["<|user|>"]
  assert tok.id_to_token(tok.eos_id) == "</s>"
  with pytest.raises(KeyError, match="not-a-piece"):
    tok.token_to_id("not-a-piece")
  with pytest.raises(ValueError, match="out of range"):
    tok.decode([tok.vocab_size])


def test_text_cannot_forge_special_tokens(tok, reference):
  text = "<|user|> hi </s>"
  # transformers matches the marker in text; lifejax must not.
  assert reference.convert_tokens_to_ids("<|user|>") in reference.encode(
      text, add_special_tokens=False)
  ids = tok.encode(text)
  assert not set(ids) & set(tok.special_ids.values())
  assert tok.decode(ids) == text
  marked = [tok.special_ids["<|user|>"]] + tok.encode(" hi")
  assert tok.decode(marked) == " hi"
  assert tok.decode(marked, render_special=True) == "<|user|> hi"


def test_pickles_with_its_behaviour(tok):
  copy = pickle.loads(pickle.dumps(tok))
  for text in TEXTS + ["<|user|> forged"]:
    assert copy.encode(text, add_bos=True) == tok.encode(text, add_bos=True)
  assert copy.special_ids == tok.special_ids


def test_missing_bos_and_pad(hf_dir):
  t = hf_tokenizer.HFTokenizer(os.path.join(hf_dir, "tokenizer.json"),
                               eos_token="</s>")
  assert t.bos_id is None and t.pad_id == t.eos_id
  with pytest.raises(ValueError, match="no bos token"):
    t.encode("x", add_bos=True)
  with pytest.raises(ValueError, match="not in the vocab"):
    hf_tokenizer.HFTokenizer(os.path.join(hf_dir, "tokenizer.json"),
                             bos_token="<nope>")


def test_sentencepiece_dir_and_preference(hf_dir, tmp_path):
  sp_dir = tmp_path / "sp"
  sp_tokenizer.train_sentencepiece(CORPUS, sp_dir / "tokenizer",
                                   vocab_size=300)
  t = hf_tokenizer.load_tokenizer_dir(sp_dir)
  assert isinstance(t, sp_tokenizer.SentencePieceTokenizer)
  assert t.decode(t.encode("the cat")) == "the cat"
  # With both files, tokenizer.json (what HF runs) wins.
  both = tmp_path / "both"
  shutil.copytree(hf_dir, both)
  shutil.copy(sp_dir / "tokenizer.model", both / "tokenizer.model")
  assert isinstance(hf_tokenizer.load_tokenizer_dir(both),
                    hf_tokenizer.HFTokenizer)
  with pytest.raises(FileNotFoundError, match="no tokenizer"):
    hf_tokenizer.load_tokenizer_dir(tmp_path / "sp_missing")


def test_lm_pipeline_accepts_hf_tokenizer(tok):
  texts = ["the cat sat", "a bird", "the dog ate"]
  src = sources.InMemorySource([{"text": t} for t in texts], name="mem")
  ds = pipeline.lm_dataset(src, tok, seq_len=12, batch_size=1, seed=0,
                           shuffle=False, num_epochs=1, shard_index=0,
                           shard_count=1)
  want = {tuple(tok.encode(t, add_bos=True, add_eos=True)) for t in texts}
  got = set()
  for batch in ds:
    for row in range(batch["tokens"].shape[0]):
      seg = batch["segment_ids"][row]
      for s in set(seg.tolist()) - {0}:
        m = seg == s
        doc = list(batch["tokens"][row][m]) + [batch["targets"][row][m][-1]]
        got.add(tuple(int(i) for i in doc))
  assert got == want
  assert np.all(batch["tokens"] < tok.vocab_size)
