"""Gopher, FineWeb and C4 page rules, each at its threshold edge."""

import dataclasses
import itertools
import string

import pytest

from lifejax.curation import quality

_GQ = quality.GopherQualityConfig
_GR = quality.GopherRepetitionConfig
_FW = quality.FineWebConfig

_BASE = ["the", "harbor", "and", "market", "with", "bridges"]


def _words(n):
  return list(itertools.islice(itertools.cycle(_BASE), n))


def _unique_words(n, length=5):
  """n distinct lower-case words of `length` letters, none a stop word."""
  letters = string.ascii_lowercase
  out = []
  for combo in itertools.product(letters, repeat=length):
    out.append("q" + "".join(combo)[1:])
    if len(out) == n:
      return out
  raise ValueError(n)


def _only(cls, **rule):
  """A config with every threshold of `cls` off except `rule`."""
  off = {f.name: (() if isinstance(f.default, tuple) and f.name.endswith(
      "ngrams") else None) for f in dataclasses.fields(cls)
         if f.name not in ("enabled", "stop_words", "stop_chars",
                           "short_line_length")}
  off.update(rule)
  return cls(**off)


def test_gopher_min_doc_words_edge():
  cfg = _GQ()
  assert quality.gopher_quality(" ".join(_words(50)) + ".", cfg) is None
  assert quality.gopher_quality(" ".join(_words(49)) + ".",
                                cfg) == "min_doc_words"


def test_gopher_mean_word_length_edges():
  cfg = _GQ()
  assert quality.gopher_quality(" ".join(["the"] * 50), cfg) is None
  assert quality.gopher_quality(" ".join(["the"] * 49 + ["to"]),
                                cfg) == "min_avg_word_length"
  long_words = ["the", "and"] + ["abcdefghij"] * 46 + ["abcdefghijklmnopq"] * 2
  assert quality.gopher_quality(" ".join(long_words), cfg) is None
  long_words[-1] += "r"
  assert quality.gopher_quality(" ".join(long_words),
                                cfg) == "max_avg_word_length"


@pytest.mark.parametrize("marker,rule", [("#", "max_hash_ratio"),
                                         ("...", "max_ellipsis_ratio")])
def test_gopher_symbol_ratio_edge(marker, rule):
  cfg = _only(_GQ, **{rule: 0.1})
  words = _words(50)
  ok = [w + marker if i < 5 else w for i, w in enumerate(words)]
  bad = [w + marker if i < 6 else w for i, w in enumerate(words)]
  assert quality.gopher_quality(" ".join(ok), cfg) is None
  assert quality.gopher_quality(" ".join(bad), cfg) == rule


def test_gopher_bullet_and_ellipsis_lines_edges():
  line = " ".join(_BASE)
  bullets = _only(_GQ, max_bullet_lines_ratio=0.9)
  nine = "\n".join(["• " + line] * 9 + [line])
  ten = "\n".join(["• " + line] * 10)
  assert quality.gopher_quality(nine, bullets) is None
  assert quality.gopher_quality(ten, bullets) == "max_bullet_lines_ratio"
  ellipsis = _only(_GQ, max_ellipsis_lines_ratio=0.3)
  three = "\n".join([line + "..."] * 3 + [line + "."] * 7)
  four = "\n".join([line + "..."] * 4 + [line + "."] * 6)
  assert quality.gopher_quality(three, ellipsis) is None
  assert quality.gopher_quality(four, ellipsis) == "max_ellipsis_lines_ratio"


def test_gopher_alpha_and_stop_words_edges():
  alpha = _only(_GQ, min_alpha_words_ratio=0.8)
  words = _words(50)
  ok = ["1234" if i < 10 else w for i, w in enumerate(words)]
  bad = ["1234" if i < 11 else w for i, w in enumerate(words)]
  assert quality.gopher_quality(" ".join(ok), alpha) is None
  assert quality.gopher_quality(" ".join(bad), alpha) == "min_alpha_words_ratio"
  stops = _only(_GQ, min_stop_words=2)
  filler = _unique_words(48)
  assert quality.gopher_quality(" ".join(filler + ["the", "of"]),
                                stops) is None
  assert quality.gopher_quality(" ".join(filler + ["the", "ox"]),
                                stops) == "min_stop_words"


def test_repetition_duplicate_lines_edge():
  cfg = _only(_GR, dup_line_frac=0.3)
  lines = [f"line {w} is here." for w in _unique_words(10)]
  three = lines[:7] + [lines[0]] * 3
  four = lines[:6] + [lines[0]] * 4
  assert quality.gopher_repetition("\n".join(three), cfg) is None
  assert quality.gopher_repetition("\n".join(four), cfg) == "dup_line_frac"


def test_repetition_duplicate_paragraph_chars():
  cfg = _only(_GR, dup_para_char_frac=0.2)
  paras = [" ".join(_unique_words(60)[i * 10:(i + 1) * 10]) for i in range(6)]
  text_ok = "\n\n".join(paras)
  text_bad = "\n\n".join(paras[:3] + [paras[0]] * 3)
  assert quality.gopher_repetition(text_ok, cfg) is None
  assert quality.gopher_repetition(text_bad, cfg) == "dup_para_char_frac"


def test_repetition_top_bigram_edge():
  cfg = _only(_GR, top_ngrams=((2, 0.2),))

  def text(fillers):
    words = []
    filler = iter(_unique_words(fillers))
    for i in range(fillers):
      if i < 5:
        words += ["ab", "cd"]
      words.append(next(filler))
    return " ".join(words)

  # 5 x "ab cd" = 25 chars of 29 + 6 * fillers.
  assert len(text(16)) == 125
  assert quality.gopher_repetition(text(16), cfg) is None  # 25/125
  assert quality.gopher_repetition(text(15), cfg) == "top_2gram_char_frac"


def test_repetition_duplicate_5gram_edge():
  cfg = _only(_GR, dup_ngrams=((5, 0.15),))
  gram = ["aa", "bb", "cc", "dd", "eee"]  # "aa bb cc dd eee": 15 chars

  def text(extra_chars):
    f = _unique_words(28)
    f[-1] += "x" * extra_chars
    return " ".join(gram + f[:14] + gram + f[14:])

  # 2 x 15 covered chars; 22 + 9 + 28 * 6 = 199 chars before the extra.
  assert len(text(1)) == 200
  assert quality.gopher_repetition(text(1), cfg) is None  # 30/200
  assert quality.gopher_repetition(text(0), cfg) == "dup_5gram_char_frac"


def test_fineweb_line_punctuation_edge():
  cfg = _only(_FW, line_punct_thr=0.12)
  body = [f"a heading about {w}" for w in _unique_words(25)]
  three = [b + "." if i < 3 else b for i, b in enumerate(body)]
  four = [b + "." if i < 4 else b for i, b in enumerate(body)]
  assert quality.fineweb("\n".join(three), cfg) == "line_punct_ratio"
  assert quality.fineweb("\n".join(four), cfg) is None


def test_fineweb_short_lines_edge():
  cfg = _only(_FW, short_line_thr=0.67)
  short = [f"short {w}." for w in _unique_words(100)]
  long = [f"this line is comfortably longer than thirty chars {w}."
          for w in _unique_words(100)]
  assert quality.fineweb("\n".join(short[:66] + long[:34]), cfg) is None
  assert quality.fineweb("\n".join(short[:67] + long[:33]),
                         cfg) == "short_line_ratio"


def test_fineweb_duplicate_chars_edge():
  cfg = _only(_FW, char_dup_ratio=0.01)

  def text(total_chars):
    # "abc." twice: the second copy is 4 duplicated characters.
    rest = "y" * (total_chars - 8 - 1) + "."
    return "\n".join(["abc.", "abc.", rest])

  assert len(text(400).replace("\n", "")) == 400
  assert quality.fineweb(text(400), cfg) == "char_dup_ratio"  # 4/400
  assert quality.fineweb(text(401), cfg) is None  # 4/401


def test_fineweb_newline_ratio_edge():
  cfg = _only(_FW, newline_ratio=0.3)
  words = _unique_words(10)
  three = " ".join(words[:7]) + "\n" + "\n".join(words[7:10])
  four = " ".join(words[:6]) + "\n" + "\n".join(words[6:10])
  assert quality.fineweb(three, cfg) is None
  assert quality.fineweb(four, cfg) == "newline_ratio"


def test_c4_page_rules():
  cfg = quality.C4PageConfig()
  five = " ".join(f"Sentence {w} ends here." for w in _unique_words(5))
  assert quality.c4_page(five, cfg) is None
  assert quality.c4_page(five.rsplit(" Sentence", 1)[0], cfg) == "min_sentences"
  assert quality.c4_page(five + " Lorem ipsum dolor.", cfg) == "lorem_ipsum"
  assert quality.c4_page(five + " {x}", cfg) == "curly_bracket"
  assert quality.c4_page(five + " {x}", dataclasses.replace(
      cfg, curly_bracket=False)) is None


def test_quality_verdict_names_family_and_rule_and_can_be_disabled():
  cfg = quality.QualityConfig()
  junk = "buy now " * 60
  assert quality.quality_verdict(junk, cfg) == "c4.min_sentences"
  no_c4 = dataclasses.replace(cfg, c4=quality.C4PageConfig(enabled=False))
  assert quality.quality_verdict(junk, no_c4).startswith("gopher_")
  assert quality.quality_verdict(junk, dataclasses.replace(
      cfg, c4=quality.C4PageConfig(enabled=False),
      gopher_quality=_GQ(enabled=False),
      gopher_repetition=_GR(enabled=False),
      fineweb=_FW(enabled=False))) is None
