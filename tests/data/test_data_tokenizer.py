"""Tests for lifejax.data.tokenizer."""

import pickle

import pytest

from lifejax.data import tokenizer as tokenizer_lib

SPECIALS = tokenizer_lib.DEFAULT_SPECIAL_TOKENS


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def any_tokenizer(request, tmp_path_factory, corpus):
  prefix = tmp_path_factory.mktemp(request.param) / "sp"
  return tokenizer_lib.train_sentencepiece(corpus, prefix, 600,
                                           model_type=request.param)


def test_round_trip_is_exact_on_training_corpus(any_tokenizer, corpus):
  for text in corpus:
    assert any_tokenizer.decode(any_tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", [
    "Привет, мир",  # Cyrillic: not in the corpus.
    "한국어 텍스트 ✓",
    "tabs\t\t\tand\n\n\n\nnewlines  \r\n",
    " ",
    "\u00a0non-breaking\u3000ideographic space",
    "a\x00b",
])
def test_unseen_text_round_trips_through_byte_fallback(any_tokenizer, text):
  ids = any_tokenizer.encode(text)
  assert any_tokenizer.unk_id not in ids
  assert any_tokenizer.decode(ids) == text


def test_id_layout(tokenizer):
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 3)
  assert tokenizer.unk_id == 2
  specials = tokenizer.special_ids
  assert [specials[t] for t in SPECIALS] == list(range(4, 4 + len(SPECIALS)))
  assert specials["<pad>"] == 0 and specials["</s>"] == 1
  assert specials["<s>"] == 3
  for t in SPECIALS:
    assert tokenizer.token_to_id(t) == specials[t]
    assert tokenizer.id_to_token(specials[t]) == t
  assert tokenizer.vocab_size <= 600


@pytest.mark.parametrize("text", [
    *SPECIALS, "<|user|>hi<|assistant|>", "</s>", "<s>", "<pad>", "<unk>",
    "<0x41>",
])
def test_text_that_looks_special_never_yields_special_ids(tokenizer, text):
  ids = tokenizer.encode(text)
  assert not set(ids) & set(tokenizer.special_ids.values())
  assert tokenizer.decode(ids) == text


def test_special_ids_decode_only_when_asked(tokenizer):
  user = tokenizer.special_ids["<|user|>"]
  eot = tokenizer.special_ids["<|end_of_turn|>"]
  ids = [user] + tokenizer.encode("hello") + [eot]
  assert tokenizer.decode(ids) == "hello"
  assert tokenizer.decode(ids, render_special=True) == (
      "<|user|>hello<|end_of_turn|>")


def test_bos_eos_only_on_request(tokenizer):
  plain = tokenizer.encode("hello")
  both = tokenizer.encode("hello", add_bos=True, add_eos=True)
  assert both == [tokenizer.bos_id] + plain + [tokenizer.eos_id]


def test_token_to_id_rejects_unknown_piece(tokenizer):
  with pytest.raises(KeyError, match="not in"):
    tokenizer.token_to_id("<|no_such_piece|>")


def test_decode_rejects_out_of_range_ids(tokenizer):
  with pytest.raises(ValueError, match="out of range"):
    tokenizer.decode([tokenizer.vocab_size])


def test_load_and_pickle_give_the_same_tokenizer(tokenizer, corpus):
  loaded = tokenizer_lib.load_tokenizer(tokenizer.model_path)
  restored = pickle.loads(pickle.dumps(tokenizer))
  assert restored.model_path == tokenizer.model_path
  for text in corpus[:10]:
    assert loaded.encode(text) == tokenizer.encode(text)
    assert restored.encode(text) == tokenizer.encode(text)
  assert loaded.special_ids == tokenizer.special_ids


def test_training_is_reproducible(tmp_path, corpus):
  a = tokenizer_lib.train_sentencepiece(corpus, tmp_path / "a", 500)
  b = tokenizer_lib.train_sentencepiece(corpus, tmp_path / "b", 500)
  # The model files differ only in the recorded output path.
  assert a.vocab_size == b.vocab_size
  assert ([a.id_to_token(i) for i in range(a.vocab_size)] ==
          [b.id_to_token(i) for i in range(b.vocab_size)])


def test_custom_special_tokens(tmp_path, corpus):
  tok = tokenizer_lib.train_sentencepiece(
      corpus, tmp_path / "sp", 500, special_tokens=["<|tool|>"])
  assert tok.special_ids["<|tool|>"] == 4
  assert "<|user|>" not in tok.special_ids


def test_long_texts_are_cut_for_training_without_loss():
  text = "".join(f"line {i} " * 7 + "\n" for i in range(300))
  text += "x" * 2000  # one line longer than the limit
  pieces = list(tokenizer_lib._training_sentences([text, "short"], 500))
  assert "".join(pieces[:-1]) == text and pieces[-1] == "short"
  assert all(len(p.encode("utf-8")) <= 500 for p in pieces)
  assert len(pieces) > 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts=["abc"], vocab_size=200), "leaves no room"),
    (dict(texts=[], vocab_size=400), "no text"),
    (dict(texts=["ok", 3], vocab_size=400), "#1 is int"),
    (dict(texts=["abc"], vocab_size=400, model_type="word"), "model_type"),
    (dict(texts=["abc"], vocab_size=400, special_tokens=["<s>"]), "clash"),
    (dict(texts=["abc"], vocab_size=400, special_tokens=["<a>", "<a>"]),
     "duplicate"),
])
def test_training_rejects_bad_arguments(tmp_path, kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    tokenizer_lib.train_sentencepiece(model_prefix=tmp_path / "m", **kwargs)


def test_missing_model_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tokenizer_lib.load_tokenizer(tmp_path / "nope.model")
