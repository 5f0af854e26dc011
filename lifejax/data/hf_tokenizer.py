"""Tokenizers from a checkpoint directory (a lifejax run dir or a HF model dir).

`load_tokenizer_dir` returns an object with the interface of
`lifejax.data.tokenizer.SentencePieceTokenizer` (encode, decode, vocab_size,
pad_id, bos_id, eos_id, special_ids, token_to_id, id_to_token), so the data
pipelines take either:

  * `tokenizer.json` (HF `tokenizers` format): wrapped in `HFTokenizer`.
    Preferred when present, because it is what HF itself runs (added tokens,
    normalizer, byte-level pre-tokenizer), and because HF SentencePiece
    models rarely follow lifejax's id layout (Llama-2's `tokenizer.model` has
    unk=0 and no pad, which `SentencePieceTokenizer` rejects).
  * `tokenizer.model` (SentencePiece): `lifejax.data.tokenizer.load_tokenizer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import tokenizers

from lifejax.data import tokenizer as sp_tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
SENTENCEPIECE_MODEL = "tokenizer.model"


def _token_text(value: Any) -> str | None:
  """A special token entry of tokenizer_config.json: str or {"content": str}."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class HFTokenizer:
  """A HF `tokenizers` tokenizer with lifejax's tokenizer interface.

  As with the SentencePiece tokenizer, `encode` never produces a special id
  from text: "<|user|>" typed by a user becomes ordinary pieces (special
  tokens are matched only when a chat template inserts their ids). bos/eos
  are added only when asked. pad_id is the pad token if the tokenizer has
  one, else eos, else 0: lifejax masks padding with loss masks and segment
  ids, so the pad id only has to be a valid id.
  """

  def __init__(self, tokenizer_json: str | os.PathLike[str], *,
               bos_token: str | None = None, eos_token: str | None = None,
               pad_token: str | None = None):
    path = os.fspath(tokenizer_json)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"HF tokenizer not found: {path}")
    with open(path, encoding="utf-8") as f:
      self._init(path, f.read(), bos_token, eos_token, pad_token)

  def _init(self, path: str, json_str: str, bos: str | None, eos: str | None,
            pad: str | None) -> None:
    self._path = path
    self._json = json_str
    self._tok = tokenizers.Tokenizer.from_str(json_str)
    self._tok.encode_special_tokens = True  # text never forges a special id
    self._tokens = {"bos": bos, "eos": eos, "pad": pad}
    self._ids = {}
    for role, text in self._tokens.items():
      self._ids[role] = None if text is None else self._tok.token_to_id(text)
      if text is not None and self._ids[role] is None:
        raise ValueError(f"{path}: {role} token {text!r} is not in the vocab")
    self._special_ids = {
        t.content: i for i, t in self._tok.get_added_tokens_decoder().items()
        if t.special}

  @classmethod
  def from_dir(cls, path: str | os.PathLike[str]) -> HFTokenizer:
    """Reads tokenizer.json plus bos/eos/pad from tokenizer_config.json
    (falling back to special_tokens_map.json)."""
    path = os.fspath(path)
    cfg = _read_json(os.path.join(path, SPECIAL_TOKENS_MAP))
    cfg.update({k: v for k, v in _read_json(
        os.path.join(path, TOKENIZER_CONFIG)).items() if v is not None})
    return cls(os.path.join(path, TOKENIZER_JSON),
               bos_token=_token_text(cfg.get("bos_token")),
               eos_token=_token_text(cfg.get("eos_token")),
               pad_token=_token_text(cfg.get("pad_token")))

  def __getstate__(self) -> dict[str, Any]:
    return {"path": self._path, "json": self._json, **self._tokens}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._init(state["path"], state["json"], state["bos"], state["eos"],
               state["pad"])

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  @property
  def eos_id(self) -> int | None:
    return self._ids["eos"]

  @property
  def pad_id(self) -> int:
    for role in ("pad", "eos"):
      if self._ids[role] is not None:
        return self._ids[role]
    return 0

  @property
  def special_ids(self) -> dict[str, int]:
    """Every special added token (bos, eos, chat markers, ...) -> its id."""
    return dict(self._special_ids)

  def encode(self, text: str, *, add_bos: bool = False,
             add_eos: bool = False) -> list[int]:
    """Ids of `text`; never contains a special id except requested bos/eos."""
    ids = self._tok.encode(text, add_special_tokens=False).ids
    for flag, role in ((add_bos, "bos"), (add_eos, "eos")):
      if flag and self._ids[role] is None:
        raise ValueError(f"{self._path}: add_{role} requested but the "
                         f"tokenizer has no {role} token")
    if add_bos:
      ids.insert(0, self._ids["bos"])
    if add_eos:
      ids.append(self._ids["eos"])
    return ids

  def decode(self, ids: Iterable[int], *, render_special: bool = False) -> str:
    """Text of `ids`. Special ids vanish unless `render_special` is set."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(
          f"ids {bad[:5]} out of range for vocab of size {self.vocab_size}")
    return self._tok.decode(ids, skip_special_tokens=not render_special)

  def token_to_id(self, piece: str) -> int:
    """Id of a vocabulary piece; KeyError if the piece is not in the vocab."""
    i = self._tok.token_to_id(piece)
    if i is None:
      raise KeyError(f"piece {piece!r} is not in {self._path}")
    return i

  def id_to_token(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def __repr__(self) -> str:
    return f"HFTokenizer({self._path!r}, vocab_size={self.vocab_size})"


Tokenizer = sp_tokenizer.SentencePieceTokenizer | HFTokenizer


def load_tokenizer_dir(path: str | os.PathLike[str]) -> Tokenizer:
  """The tokenizer of a checkpoint directory (see the module docstring)."""
  path = os.fspath(path)
  if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
    return HFTokenizer.from_dir(path)
  if os.path.isfile(os.path.join(path, SENTENCEPIECE_MODEL)):
    return sp_tokenizer.load_tokenizer(os.path.join(path, SENTENCEPIECE_MODEL))
  raise FileNotFoundError(
      f"{path}: no tokenizer ({TOKENIZER_JSON} or {SENTENCEPIECE_MODEL})")
