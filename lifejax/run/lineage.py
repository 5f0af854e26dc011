"""Lineage: what a run was built from, as one typed, versioned record.

Every stage writes `<run>/lineage.json` through `write_lineage` and every
reader goes through `read_lineage`; nothing else parses the file. The JSON
is `Lineage`'s fields with "version" first; a file with another (or no)
version is refused with `LineageVersionError` rather than half-read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lifejax.run.layout import RunDir

if TYPE_CHECKING:  # model.config imports jax; only a lineage's model needs it
  from lifejax.model.config import TransformerConfig

LINEAGE_VERSION = 1
MODEL_KINDS = ("lm", "reward", "policy", "policy_value_separate",
               "policy_value_shared", "preference_data")


class LineageVersionError(ValueError):
  """lineage.json was written by a lifejax with another lineage format."""


@dataclasses.dataclass(frozen=True)
class TokenizerRef:
  """The tokenizer a run used: its file (or HF directory), vocabulary size
  and, for a file, the first 16 hex digits of its sha256."""
  path: str
  vocab_size: int
  sha256_16: str | None = None


@dataclasses.dataclass(frozen=True)
class Lineage:
  """What a run is and what it was built from.

  stage: the stage that wrote the run ("pretrain", "sft", "dpo", ...).
  model_kind: what its checkpoints hold (one of MODEL_KINDS).
  model: the model's shape (None for runs without params, e.g. RLAIF data).
  init_from / reference: run (or HF) directories of the starting params and
    of the frozen reference policy.
  inputs: role ("train_files", "eval_files", ...) -> {abs path: sha256_16}.
  details: stage-specific facts (loss, loss_hparams, reward, critic,
    counts, ...), JSON-ready.
  """
  stage: str
  model_kind: str
  model: TransformerConfig | None = None
  init_from: str | None = None
  reference: str | None = None
  tokenizer: TokenizerRef | None = None
  chat_template: dict[str, Any] | None = None
  inputs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
  details: dict[str, Any] = dataclasses.field(default_factory=dict)
  version: int = LINEAGE_VERSION

  def __post_init__(self):
    if self.model_kind not in MODEL_KINDS:
      raise ValueError(f"Lineage.model_kind={self.model_kind!r}: expected "
                       f"one of {MODEL_KINDS}")
    if self.version != LINEAGE_VERSION:
      raise LineageVersionError(f"Lineage.version={self.version!r}: this "
                                f"lifejax writes version {LINEAGE_VERSION}")

  def to_json(self) -> dict[str, Any]:
    """The JSON-ready dict write_lineage stores ("version" first)."""
    d = {"version": self.version}
    for f in dataclasses.fields(self):
      if f.name != "version":
        d[f.name] = getattr(self, f.name)
    d["model"] = dataclasses.asdict(self.model) if self.model else None
    d["tokenizer"] = (dataclasses.asdict(self.tokenizer) if self.tokenizer
                      else None)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> Lineage:
    """Inverse of `to_json`; TypeError/ValueError on a malformed dict."""
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown lineage fields {unknown}")
    if d.get("model") is not None:
      d["model"] = model_config_from_json(d["model"])
    if d.get("tokenizer") is not None:
      d["tokenizer"] = TokenizerRef(**d["tokenizer"])
    return cls(**d)


def model_config_from_json(d: Mapping[str, Any]) -> TransformerConfig:
  """A TransformerConfig from `dataclasses.asdict` output after a JSON round
  trip (rope_scaling's tuple of pairs comes back as a list of lists)."""
  from lifejax.model.config import TransformerConfig
  kwargs = dict(d)
  if isinstance(kwargs.get("rope_scaling"), list):
    kwargs["rope_scaling"] = {k: v for k, v in kwargs["rope_scaling"]}
  return TransformerConfig(**kwargs)


def write_lineage(run_dir: str, lineage: Lineage) -> str:
  """Writes `<run_dir>/lineage.json` (the one writer); returns its path."""
  path = RunDir(run_dir).lineage
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(lineage.to_json(), f, indent=2, default=str)
    f.write("\n")
  os.replace(tmp, path)
  return path


def read_lineage(run_dir: str) -> Lineage:
  """The Lineage of a run (the one reader).

  Raises FileNotFoundError if the run has no lineage.json, ValueError if it
  is not JSON or not a lineage, LineageVersionError (a ValueError) if it
  has no or another format version.
  """
  path = RunDir(run_dir).lineage
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no lineage.json (is {run_dir} a "
                            "lifejax run directory?)")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} "
                     f"column {e.colno})") from None
  if not isinstance(d, dict):
    raise ValueError(f"{path}: expected a JSON object, got "
                     f"{type(d).__name__}")
  version = d.get("version")
  if version != LINEAGE_VERSION:
    if isinstance(version, int) and version > LINEAGE_VERSION:
      who = "a newer lifejax"
    else:
      who = "an older lifejax"
    found = ("no version" if "version" not in d
             else f"lineage version {version!r}")
    raise LineageVersionError(
        f"{path}: {found}, but this lifejax reads lineage "
        f"version {LINEAGE_VERSION}; the run was written by {who}. Rebuild "
        "it by rerunning its stage with this lifejax.")
  try:
    return Lineage.from_json(d)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: malformed lineage: {e}") from None


def file_digest(path: str) -> str:
  """The first 16 hex digits of the file's sha256."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:16]


def file_inputs(paths: Iterable[str]) -> dict[str, str]:
  """{absolute path: file_digest} of input files (a Lineage.inputs entry)."""
  return {os.path.abspath(p): file_digest(p) for p in paths}
