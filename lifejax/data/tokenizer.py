"""SentencePiece tokenizers: training, loading, and a seqio view.

Id layout of every model trained here (seqio/T5 convention, so the same model
works as a `seqio.SentencePieceVocabulary`):

  0 <pad>, 1 </s> (eos), 2 <unk>, 3 <s> (bos), 4.. special tokens, then bytes
  (with byte fallback) and learned pieces.

Special tokens (chat role markers) are SentencePiece *control symbols*: they
own an id, but `encode` never produces it, whatever the text says. Text that
merely looks like "<|user|>" becomes ordinary pieces, so user content cannot
forge a role boundary. A chat template emits the real marker explicitly with
`tokenizer.special_ids["<|user|>"]`.

Exact round trips (`decode(encode(s)) == s`) come from the trainer options in
`train_sentencepiece`: no Unicode normalization ("identity"), whitespace runs
kept (`remove_extra_whitespaces=False`), no dummy "▁" prefix, whitespace-only
pieces allowed (for indentation and newline runs), and byte fallback so that a
character never seen in training becomes UTF-8 byte pieces instead of <unk>.
One character cannot survive: U+2581 ("▁") is SentencePiece's internal space
marker and decodes as " ".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sentencepiece as spm

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end_of_turn|>",
)

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3
_NUM_BYTE_PIECES = 256


# Texts longer than this (characters) are encoded in pieces; see `encode`.
ENCODE_CHUNK_CHARS = 1 << 15
# A word start: a space after a non-space. SentencePiece (trained here with
# split_by_whitespace and no dummy prefix) never puts a piece across one, so
# cutting a text there keeps its segmentation (up to float ties, see encode).
_WORD_START = re.compile(r"[^ ] ")


def encode_chunks(text: str, size: int) -> Iterator[str]:
  """`text` in consecutive pieces of about `size` characters, each cut just
  before a word start (a space after a non-space) found within the next
  `size` characters; a stretch with none (no spaces: e.g. CJK text) is cut
  at `size` characters, where the ids around the cut may differ from those
  of the whole text. The pieces concatenate to `text`; the work is linear
  in its length."""
  if size < 1:
    raise ValueError(f"size must be >= 1, got {size}")
  start, n = 0, len(text)
  while n - start > size:
    m = _WORD_START.search(text, start + size - 1, min(n, start + 2 * size))
    cut = m.start() + 1 if m else start + size
    yield text[start:cut]
    start = cut
  if start < n:
    yield text[start:]


class SentencePieceTokenizer:
  """A loaded SentencePiece model with lifejax's id conventions.

  Picklable (the serialized model travels with it), so grain worker processes
  can tokenize.
  """

  def __init__(self, model_path: str | os.PathLike[str]):
    self._model_path = os.fspath(model_path)
    if not os.path.isfile(self._model_path):
      raise FileNotFoundError(
          f"SentencePiece model not found: {self._model_path}")
    with open(self._model_path, "rb") as f:
      self._load_proto(f.read())

  def _load_proto(self, proto: bytes) -> None:
    self._proto = proto
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(proto)
    sp = self._sp
    if sp.pad_id() != PAD_ID:
      raise ValueError(
          f"{self._model_path}: pad id is {sp.pad_id()}, lifejax requires "
          f"{PAD_ID} (batches pad with 0); retrain with pad_id=0.")
    self._special_ids = {
        sp.id_to_piece(i): i
        for i in range(sp.get_piece_size())
        if sp.is_control(i)
    }

  def __getstate__(self) -> dict[str, Any]:
    return {"model_path": self._model_path, "proto": self._proto}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._model_path = state["model_path"]
    self._load_proto(state["proto"])

  @property
  def model_path(self) -> str:
    return self._model_path

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def special_ids(self) -> dict[str, int]:
    """Every control piece (pad, bos, eos, chat markers) -> its id."""
    return dict(self._special_ids)

  def encode(self, text: str, *, add_bos: bool = False,
             add_eos: bool = False) -> list[int]:
    """Ids of `text`; never contains a special id except requested bos/eos.

    A text over ENCODE_CHUNK_CHARS characters is encoded in pieces cut at
    word starts (`encode_chunks`), one call each: SentencePiece holds the
    GIL for a whole call, so one call on a multi-megabyte text would stall
    every other thread (grain's reader threads, the packer) for its whole
    duration. The ids are those of one call except where two segmentations
    of a word score equal to float precision (README, "Input validation").
    """
    if isinstance(text, str) and len(text) > ENCODE_CHUNK_CHARS:
      ids = []
      for chunk in encode_chunks(text, ENCODE_CHUNK_CHARS):
        ids.extend(self._sp.encode(chunk))
    else:
      ids = self._sp.encode(text)
    if add_bos:
      ids.insert(0, self.bos_id)
    if add_eos:
      ids.append(self.eos_id)
    return ids

  def decode(self, ids: Iterable[int], *, render_special: bool = False) -> str:
    """Text of `ids`. Special ids vanish unless `render_special` is set."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(
          f"ids {bad[:5]} out of range for vocab of size {self.vocab_size}")
    if not render_special:
      return self._sp.decode(ids)
    parts, run = [], []
    for i in ids:
      if self._sp.is_control(i):
        parts.append(self._sp.decode(run))
        parts.append(self._sp.id_to_piece(i))
        run = []
      else:
        run.append(i)
    parts.append(self._sp.decode(run))
    return "".join(parts)

  def token_to_id(self, piece: str) -> int:
    """Id of a vocabulary piece; KeyError if the piece is not in the vocab."""
    i = self._sp.piece_to_id(piece)
    if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
      raise KeyError(f"piece {piece!r} is not in {self._model_path}")
    return i

  def id_to_token(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def as_seqio_vocabulary(self) -> Any:
    """This model as a `seqio.SentencePieceVocabulary` (imports seqio/TF)."""
    import seqio  # pylint: disable=g-import-not-at-top
    return seqio.SentencePieceVocabulary(self._model_path, extra_ids=0)

  def __repr__(self) -> str:
    return (f"SentencePieceTokenizer({self._model_path!r}, "
            f"vocab_size={self.vocab_size})")


def load_tokenizer(model_path: str | os.PathLike[str]
                   ) -> SentencePieceTokenizer:
  """Loads an existing `.model` file."""
  return SentencePieceTokenizer(model_path)


def _training_sentences(texts: Iterable[str],
                        max_sentence_bytes: int) -> Iterator[str]:
  """Yields `texts`, cutting over-long ones at line boundaries.

  The trainer silently drops any sentence over its byte limit; cutting keeps
  long documents in the statistics instead.
  """
  for n, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(
          f"training text #{n} is {type(text).__name__}, expected str")
    if not text:
      continue
    if len(text.encode("utf-8")) <= max_sentence_bytes:
      yield text
      continue
    chunk, size = [], 0
    for line in text.splitlines(keepends=True):
      while len(line.encode("utf-8")) > max_sentence_bytes:
        if chunk:
          yield "".join(chunk)
          chunk, size = [], 0
        # Characters are at most 4 bytes: this prefix always fits.
        cut = max_sentence_bytes // 4
        yield line[:cut]
        line = line[cut:]
      n_bytes = len(line.encode("utf-8"))
      if size + n_bytes > max_sentence_bytes and chunk:
        yield "".join(chunk)
        chunk, size = [], 0
      chunk.append(line)
      size += n_bytes
    if chunk:
      yield "".join(chunk)


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | os.PathLike[str],
    vocab_size: int,
    model_type: str = "unigram",
    byte_fallback: bool = True,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    *,
    character_coverage: float = 0.9995,
    split_digits: bool = True,
    hard_vocab_limit: bool = False,
    input_sentence_size: int = 0,
    max_sentence_bytes: int = 1 << 16,
    num_threads: int = 1,
) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts`, writes `{model_prefix}.model`.

  Args:
    texts: training documents (any iterable of str; streamed to the trainer).
    model_prefix: output path prefix; `.model` and `.vocab` are written.
    vocab_size: target vocabulary size. With `hard_vocab_limit=False` it is an
      upper bound (tiny corpora may not support that many pieces); read the
      real size from `tokenizer.vocab_size`.
    model_type: "unigram" or "bpe".
    byte_fallback: unknown characters become UTF-8 byte pieces (exact round
      trip for any text); needs vocab_size > 256 + 4 + len(special_tokens).
    special_tokens: control symbols (ids 4, 5, ...), never produced by encode.
    character_coverage: share of characters that get their own piece; the
      rest go through byte fallback.
    split_digits: every digit is its own piece (helps arithmetic).
    hard_vocab_limit: if True, fail unless exactly `vocab_size` pieces fit.
    input_sentence_size: if > 0, train on a random sample of this many
      sentences (for big corpora).
    max_sentence_bytes: longer texts are cut at line boundaries for training.
    num_threads: trainer threads; 1 keeps training reproducible.

  Returns:
    The trained tokenizer, loaded from `{model_prefix}.model`.
  """
  if model_type not in ("unigram", "bpe"):
    raise ValueError(
        f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
  special_tokens = list(special_tokens)
  if len(set(special_tokens)) != len(special_tokens):
    raise ValueError(f"duplicate special tokens: {special_tokens}")
  reserved = {"<pad>", "</s>", "<unk>", "<s>"}
  if reserved & set(special_tokens):
    raise ValueError(
        f"special tokens {sorted(reserved & set(special_tokens))} clash with "
        "the built-in <pad>/</s>/<unk>/<s>")
  if any(not t or t.isspace() for t in special_tokens):
    raise ValueError(f"special tokens must be non-blank: {special_tokens}")
  floor = 4 + len(special_tokens) + (_NUM_BYTE_PIECES if byte_fallback else 0)
  if vocab_size <= floor:
    raise ValueError(
        f"vocab_size={vocab_size} leaves no room for learned pieces: "
        f"{floor} ids are reserved (4 built-ins, {len(special_tokens)} special"
        f" tokens{', 256 byte pieces' if byte_fallback else ''})")
  prefix = os.fspath(model_prefix)
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)

  seen = [0]
  input_error: list[Exception] = []

  def counted() -> Iterator[str]:
    # An exception raised inside the trainer's callback comes out as an
    # opaque SystemError; keep it and re-raise it after training stops.
    try:
      for s in _training_sentences(texts, max_sentence_bytes):
        seen[0] += 1
        yield s
    except Exception as e:  # pylint: disable=broad-exception-caught
      input_error.append(e)

  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=counted(),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        control_symbols=special_tokens,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=BOS_ID,
        # The four options below make decode(encode(s)) == s.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=split_digits,
        character_coverage=character_coverage,
        hard_vocab_limit=hard_vocab_limit,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=input_sentence_size > 0,
        max_sentence_length=max_sentence_bytes,
        num_threads=num_threads,
        minloglevel=2,
    )
  except (RuntimeError, SystemError) as e:
    if input_error:
      raise input_error[0] from None
    if seen[0] == 0:
      raise ValueError("train_sentencepiece: the corpus has no text") from e
    raise ValueError(
        f"SentencePiece training failed ({seen[0]} sentences, "
        f"vocab_size={vocab_size}, model_type={model_type}): {e}") from e
  if input_error:
    raise input_error[0]
  return SentencePieceTokenizer(prefix + ".model")
