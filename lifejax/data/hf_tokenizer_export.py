"""Export of a lifejax SentencePiece tokenizer as a HF tokenizer.

`save_hf_tokenizer` writes `tokenizer.json` (a `tokenizers` model built from
the .model's pieces and scores) and `tokenizer_config.json` (special tokens
and the Jinja chat template), so that `transformers.AutoTokenizer` loads the
directory and encodes text to the ids `SentencePieceTokenizer.encode` gives.

Why built here rather than by transformers' converter: `tokenizers` objects
(Unigram/BPE models, Replace normalizer, Split pre-tokenizer, ByteFallback
decoder) are a small, stable public API, while the converter
(`transformers.convert_slow_tokenizer`) is internal and differs between
transformers 4.x and 5.x. Both versions also put every piece into the
model's vocabulary as matchable text, so a text containing "<0x41>" or
"<|user|>" becomes that one byte/control id, where SentencePiece never
matches those pieces against text. Here:

  * normalizer: " " -> "▁" (the trainer options `train_sentencepiece` uses:
    identity normalization, no dummy prefix, whitespace runs kept);
  * model: Unigram with the .model's scores, or BPE with merges ranked by
    the merged piece's score (what SentencePiece's BPE encoder applies);
    pieces other than normal ones (control, unknown, byte) get a score no
    lattice path takes, so text never becomes them;
  * pre-tokenizer: every character that is in no normal piece stands alone,
    so it can only become byte-fallback pieces (as in SentencePiece, where
    such a character has no piece at all) and never part of a control or
    byte piece's text;
  * control pieces (<pad>, </s>, <s>, chat markers) are special added tokens:
    a chat template's markers become their ids.

Known difference: like every HF tokenizer, `AutoTokenizer` turns special
token text typed in ordinary input ("<|user|>") into the special id unless
loaded with `split_special_tokens=True`; lifejax never does
(`HFTokenizer` sets it). `apply_chat_template` encodes the rendered text in
one piece, so its ids equal lifejax's chat renderer's (which encodes prefix,
content and suffix separately) when every role marker is a special token, as
in the `lifejax` template; text that a template glues to content ("User: ")
may tokenize differently across the join.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import decoders, models, normalizers, pre_tokenizers

from lifejax.data import chat, chat_jinja, chat_render
from lifejax.data import tokenizer as sp_tokenizer
from lifejax.data.hf_tokenizer import TOKENIZER_CONFIG, TOKENIZER_JSON

_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
_SPACE = "\u2581"  # SentencePiece's whitespace marker "▁"
# The score of non-normal pieces in the HF Unigram model: lower than any
# path of normal pieces, so no text is encoded as a control or byte piece.
_NEVER = -1e9
# SentencePiece decodes the unknown piece as " ⁇ ".
_UNK_SURFACE = " \u2047 "


class UnsupportedTokenizerError(ValueError):
  """The SentencePiece model uses an option the export cannot reproduce."""


def _read_proto(model_path: str) -> Any:
  proto = sentencepiece_model_pb2.ModelProto()
  with open(model_path, "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def _check(proto: Any, model_path: str) -> None:
  """UnsupportedTokenizerError naming every option the export lacks."""
  t, n = proto.trainer_spec, proto.normalizer_spec
  types = sentencepiece_model_pb2.TrainerSpec.ModelType
  problems = []
  if t.model_type not in (types.UNIGRAM, types.BPE):
    problems.append(f"trainer_spec.model_type={types.Name(t.model_type)} "
                    "(exported: UNIGRAM, BPE)")
  if not t.byte_fallback:
    problems.append("trainer_spec.byte_fallback=false (exported: true, "
                    "the train_sentencepiece default)")
  if n.precompiled_charsmap or proto.denormalizer_spec.precompiled_charsmap:
    problems.append(f"normalizer_spec.name={n.name!r} (exported: "
                    "'identity', no normalization rules)")
  for field, want in (("add_dummy_prefix", False),
                      ("remove_extra_whitespaces", False),
                      ("escape_whitespaces", True)):
    if getattr(n, field) != want:
      problems.append(f"normalizer_spec.{field}={getattr(n, field)} "
                      f"(exported: {want})")
  if t.treat_whitespace_as_suffix:
    problems.append("trainer_spec.treat_whitespace_as_suffix=true")
  odd = [p.piece for p in proto.pieces
         if p.type in (_PIECE.USER_DEFINED, _PIECE.UNUSED)]
  if odd:
    problems.append(f"user-defined or unused pieces {odd[:5]}")
  normal = {p.piece for p in proto.pieces if p.type == _PIECE.NORMAL}
  chars = {c for piece in normal for c in piece}
  if chars - normal:
    problems.append(f"characters {sorted(chars - normal)[:5]} occur in "
                    "pieces but are no piece of their own")
  short = [p.piece for p in proto.pieces
           if p.type != _PIECE.NORMAL and len(p.piece) < 2]
  if short:
    problems.append(f"one-character non-normal pieces {short}")
  if problems:
    raise UnsupportedTokenizerError(
        f"{model_path}: cannot export to a HF tokenizer: "
        + "; ".join(problems))


def _bpe_merges(proto: Any) -> list[tuple[str, str]]:
  """Every (left, right) pair of normal pieces whose concatenation is a
  normal piece, ranked by that piece's score (then id), as SentencePiece's
  BPE encoder prefers the highest-scoring merged piece."""
  normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces)
            if p.type == _PIECE.NORMAL}
  ranked = []
  for piece, (score, i) in normal.items():
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in normal and right in normal:
        ranked.append((-score, i, left, right))
  return [(left, right) for _, _, left, right in sorted(ranked)]


def to_hf_tokenizer(tok: sp_tokenizer.SentencePieceTokenizer
                    ) -> tokenizers.Tokenizer:
  """The `tokenizers.Tokenizer` encoding like `tok` (module docstring).

  Raises UnsupportedTokenizerError for models trained with options other
  than those `train_sentencepiece` uses (naming them).
  """
  proto = _read_proto(tok.model_path)
  _check(proto, tok.model_path)
  pieces = proto.pieces
  if proto.trainer_spec.model_type == (
      sentencepiece_model_pb2.TrainerSpec.ModelType.UNIGRAM):
    model = models.Unigram(
        [(p.piece, p.score if p.type == _PIECE.NORMAL else _NEVER)
         for p in pieces],
        unk_id=proto.trainer_spec.unk_id, byte_fallback=True)
  else:
    model = models.BPE(
        {p.piece: i for i, p in enumerate(pieces)}, _bpe_merges(proto),
        unk_token=proto.trainer_spec.unk_piece, fuse_unk=True,
        byte_fallback=True)
  hf = tokenizers.Tokenizer(model)
  hf.normalizer = normalizers.Replace(" ", _SPACE)
  known = sorted({c for p in pieces if p.type == _PIECE.NORMAL
                  for c in p.piece})
  outside = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in known) + "]"
  hf.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(outside),
                                          behavior="isolated")
  hf.decoder = decoders.Sequence([
      decoders.Replace(proto.trainer_spec.unk_piece, _UNK_SURFACE),
      decoders.Replace(_SPACE, " "), decoders.ByteFallback(),
      decoders.Fuse()])
  hf.add_special_tokens([
      tokenizers.AddedToken(p.piece, special=True, normalized=False)
      for p in pieces if p.type == _PIECE.CONTROL])
  return hf


def tokenizer_config(tok: sp_tokenizer.SentencePieceTokenizer,
                     chat_template: str | None = None,
                     model_max_length: int | None = None) -> dict[str, Any]:
  """The tokenizer_config.json dict: special tokens, no automatic bos/eos
  (lifejax adds them only when asked; chat templates write their own bos),
  no clean-up of spaces on decode, and the Jinja chat template."""
  specials = tok.special_ids
  named = {role: tok.id_to_token(i) for role, i in (
      ("bos_token", tok.bos_id), ("eos_token", tok.eos_id),
      ("pad_token", tok.pad_id))}
  cfg: dict[str, Any] = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      **named,
      "additional_special_tokens": [
          t for t, _ in sorted(specials.items(), key=lambda kv: kv[1])
          if t not in named.values()],
      "add_bos_token": False,
      "add_eos_token": False,
      "clean_up_tokenization_spaces": False,
      "split_special_tokens": False,
  }
  if model_max_length is not None:
    cfg["model_max_length"] = model_max_length
  if chat_template is not None:
    cfg["chat_template"] = chat_template
  return cfg


def save_hf_tokenizer(out_dir: str | os.PathLike[str],
                      tok: sp_tokenizer.SentencePieceTokenizer, *,
                      chat_template: chat.ChatTemplate | str | None = None,
                      model_max_length: int | None = None) -> list[str]:
  """Writes tokenizer.json and tokenizer_config.json into `out_dir`.

  chat_template: a lifejax `ChatTemplate` (exported by
  `chat_jinja.to_jinja`) or a Jinja string; `check_tokenizer` runs first,
  so a template whose markers the tokenizer lacks is refused. Returns the
  written file names.
  """
  if isinstance(chat_template, chat.ChatTemplate):
    chat_render.check_tokenizer(chat_template, tok)
    chat_template = chat_jinja.to_jinja(chat_template)
  hf = to_hf_tokenizer(tok)
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  hf.save(os.path.join(out_dir, TOKENIZER_JSON))
  with open(os.path.join(out_dir, TOKENIZER_CONFIG), "w",
            encoding="utf-8") as f:
    json.dump(tokenizer_config(tok, chat_template, model_max_length), f,
              indent=2, ensure_ascii=False)
    f.write("\n")
  return [TOKENIZER_JSON, TOKENIZER_CONFIG]
