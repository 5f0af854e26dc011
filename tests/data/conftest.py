"""Shared fixtures for the data tests: a small multilingual corpus and a
SentencePiece model trained on it once per session."""

import pytest

from lifejax.data import tokenizer as tokenizer_lib

# Non-ASCII scripts, emoji, whitespace runs, tabs, CRLF and blank lines: the
# things a lossy tokenizer setup would mangle.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Die Straße ist ÄÖÜ-frei, sagt Jürgen.",
    "日本語のテキストです。東京は大きい都市です。",
    "Emoji test 🎉🚀 and 😀 with text around them.",
    "Whitespace   runs\tand\ttabs\n\n\nthen  indented\n    code block\n",
    "Windows line endings\r\nsecond line\r\n",
    "  leading spaces and trailing ones   ",
    "Numbers 12345 + 678 = 13023 and 3.14159.",
    "def f(x):\n    return x * 2\n",
    "Mixed: naïve café, résumé, coöperate — “quotes” …",
]


def corpus_texts(repeat: int = 20) -> list[str]:
  """The corpus with numbered variants, so the trainer sees enough text."""
  return [f"{t} #{i}" if i % 2 else t for i in range(repeat) for t in CORPUS]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  prefix = tmp_path_factory.mktemp("tok") / "sp"
  return tokenizer_lib.train_sentencepiece(corpus_texts(), prefix, 600)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
  return corpus_texts()
