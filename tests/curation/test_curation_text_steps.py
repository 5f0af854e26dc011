"""Normalize, language ID and C4 boilerplate line rules on hand-made text."""

import dataclasses

import pytest

from lifejax.curation import boilerplate, langid, normalize

_NORM = normalize.NormalizeConfig()
_BP = boilerplate.BoilerplateConfig()


def test_normalize_nfc_whitespace_and_control():
  text = "  Cafe\u0301\t bar\r\nsecond\u00a0line  \n\n\n\nthird\x00\x07 end\u200b "
  out = normalize.normalize_text(text, _NORM)
  assert out == "Café bar\nsecond line\n\nthird end"
  assert normalize.normalize_text(out, _NORM) == out  # idempotent


def test_normalize_rules_switch_off_individually():
  off = dataclasses.replace(_NORM, nfc=False)
  assert normalize.normalize_text("Cafe\u0301", off) == "Cafe\u0301"
  keep_control = dataclasses.replace(_NORM, strip_control=False)
  assert "\x07" in normalize.normalize_text("a\x07b", keep_control)
  keep_blank = dataclasses.replace(_NORM, collapse_blank_lines=False)
  assert normalize.normalize_text("a\n\n\n\nb", keep_blank) == "a\n\n\n\nb"
  assert normalize.normalize_text(" x ", dataclasses.replace(
      _NORM, enabled=False)) == " x "


def test_langid_keeps_english_drops_other_languages():
  cfg = langid.LangIdConfig()
  en = ("The committee published its annual report on the state of the "
        "regional railways and the maintenance of the northern bridges.")
  de = ("Der Ausschuss hat seinen Jahresbericht über den Zustand der "
        "regionalen Eisenbahnen und die Wartung der Brücken veröffentlicht.")
  reason, lang, prob = langid.language_verdict(en, cfg)
  assert reason is None and lang == "en" and prob > 0.9
  reason, lang, _ = langid.language_verdict(de, cfg)
  assert reason == "lang_de" and lang == "de"
  # Too short to judge: kept whatever it is.
  assert langid.language_verdict("Danke!", cfg)[0] is None
  # Another target set flips the decision.
  german = dataclasses.replace(cfg, languages=("de",))
  assert langid.language_verdict(de, german)[0] is None
  assert langid.language_verdict(en, german)[0] == "lang_en"


def test_langid_confidence_threshold():
  # Terse record-like English: English wins but with little confidence.
  text = "Order 18812 shipped to warehouse B on Monday"
  _, lang, prob = langid.language_verdict(
      text, langid.LangIdConfig(min_confidence=0.0))
  assert lang == "en"
  strict = langid.LangIdConfig(min_confidence=min(prob + 0.01, 1.0))
  lenient = langid.LangIdConfig(min_confidence=prob - 0.01)
  assert langid.language_verdict(text, strict)[0] == "low_confidence_en"
  assert langid.language_verdict(text, lenient)[0] is None


@pytest.mark.parametrize("line,expected", [
    ("This line has enough words.", None),
    ("Three words here.", None),  # exactly min_words_per_line
    ("Two words.", "too_few_words"),
    ("A line without terminal punctuation", "no_terminal_punct"),
    ("A line that trails off into an ellipsis...", "no_terminal_punct"),
    ('He said "yes."', None),
    ("Enable JavaScript to view this page.", "javascript"),
    ("This site uses cookies to improve your experience.", "policy"),
    ("Read our Privacy Policy before you continue.", "policy"),
    ("Terms of use apply to every visitor here.", "policy"),
    ("Word " + "x" * 1001 + " is far too long.", "too_long_word"),
    ("Word " + "x" * 1000 + " is just short enough.", None),
    ("© 2024 Kitchen Corner. All rights reserved.", "copyright"),
    ("Copyright 2019 by the town council.", "copyright"),
    ("The copyright of the map belongs to the council.", None),
])
def test_boilerplate_line_rules(line, expected):
  assert boilerplate.line_verdict(line, _BP) == expected


def test_boilerplate_removes_lines_keeps_paragraphs_and_citations():
  text = ("Home | About | Contact\n"
          "The bridge was completed in the spring of that year.[1]\n"
          "\n"
          "We use cookies to give you the best experience.\n"
          "Its central span was the longest in the region.[citation needed]\n"
          "Share this")
  out, removed = boilerplate.remove_boilerplate(text, _BP)
  assert out == ("The bridge was completed in the spring of that year.\n\n"
                 "Its central span was the longest in the region.")
  assert [r for r, _ in removed] == ["no_terminal_punct", "policy",
                                     "no_terminal_punct"]


def test_boilerplate_rules_switch_off_individually():
  loose = dataclasses.replace(_BP, require_terminal_punct=False,
                              min_words_per_line=None)
  assert boilerplate.line_verdict("Share this", loose) is None
  assert boilerplate.line_verdict("Enable JavaScript now", loose) == (
      "javascript")
  no_js = dataclasses.replace(loose, javascript=False)
  assert boilerplate.line_verdict("Enable JavaScript now", no_js) is None
