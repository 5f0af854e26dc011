"""PII redaction on tricky cases; decontamination at the n-gram edge."""

import dataclasses

import pytest

from lifejax.curation import decontam, pii

_PII = pii.PiiConfig()


@pytest.mark.parametrize("text,expected,kind,value", [
    ("Write to john.doe@example.com today.", "Write to <EMAIL> today.",
     "email", "john.doe@example.com"),
    ("mailto:ops@x.co.uk", "mailto:<EMAIL>", "email", "ops@x.co.uk"),
    ("https://site.org/c?email=jane%40corp.io&x=1",
     "https://site.org/c?email=<EMAIL>&x=1", "email", "jane%40corp.io"),
    ("Call (555) 123-4567 now.", "Call <PHONE> now.", "phone",
     "(555) 123-4567"),
    ("Call 555.123.4567, thanks", "Call <PHONE>, thanks", "phone",
     "555.123.4567"),
    ("UK office: +44 20 7946 0958.", "UK office: <PHONE>.", "phone",
     "+44 20 7946 0958"),
    ("Toll free 1-800-555-0199.", "Toll free <PHONE>.", "phone",
     "1-800-555-0199"),
    ("Host 192.168.1.10 is down.", "Host <IP_ADDRESS> is down.", "ip",
     "192.168.1.10"),
    ("Ping 2001:db8::8a2e:370:7334 now", "Ping <IP_ADDRESS> now", "ip",
     "2001:db8::8a2e:370:7334"),
])
def test_pii_redacts_tricky_cases(text, expected, kind, value):
  out, found = pii.redact_pii(text, _PII)
  assert out == expected
  assert found[kind] == [value]
  assert sum(len(v) for v in found.values()) == 1


@pytest.mark.parametrize("text", [
    "It costs $1,234.56 or 1234.56 EUR.",
    "Released on 2023-01-15, updated 12/05/2023 at 12:30:45.",
    "Upgrade to version 1.2.3.4 or v2.10.4 today.",
    "ISBN 978-3-16-148410-0 and order number 1234567890.",
    "Scores were 256.1.1.1 and 1.2.3.4.5 in the log.",
    "Use logo@2x.png for retina screens.",
    "Follow https://medium.com/@writer/post for updates.",
    "The C++ name std::map is not an address.",
    "Population grew from 1,200,000 to 3,400,000 people.",
])
def test_pii_leaves_ordinary_numbers_alone(text):
  out, found = pii.redact_pii(text, _PII)
  assert out == text
  assert not any(found.values())


def test_pii_kinds_switch_off_and_counts():
  text = "a@b.io, c@d.io, 10.0.0.1 and (555) 123-4567"
  out, found = pii.redact_pii(text, _PII)
  assert out == "<EMAIL>, <EMAIL>, <IP_ADDRESS> and <PHONE>"
  assert {k: len(v) for k, v in found.items()} == {"email": 2, "ip": 1,
                                                  "phone": 1}
  out, found = pii.redact_pii(text, dataclasses.replace(_PII, emails=False))
  assert "a@b.io" in out and "email" not in found


_QUESTION = ("Which river flows past the old granary of Harlow before it "
             "reaches the northern sea at Dunmore Bay?")  # 19 words


def _index(**kw):
  cfg = decontam.DecontamConfig(**kw)
  return decontam.build_index({"facts": [_QUESTION]}, cfg), cfg


def test_decontam_finds_13gram_ignores_12gram():
  index, _ = _index()
  words = _QUESTION.split()
  prefix = "Our travel notes for the spring were long and full of detail."
  leak13 = prefix + " " + " ".join(words[2:15]) + " and then we went home."
  leak12 = prefix + " " + " ".join(words[2:14]) + " and then we went home."
  hits = index.find(leak13)
  assert len(hits) == 1 and hits[0][1:] == (13, "facts")
  assert index.find(leak12) == []
  # Case and punctuation do not hide a leak.
  assert index.find(leak13.upper().replace(" ", " , ")) != []


def test_decontam_cut_mode_removes_only_the_span():
  index, _ = _index(mode="cut")
  words = _QUESTION.split()
  text = ("Before the quote. " + " ".join(words[:14]) +
          " After the quote, the article continues for a while.")
  hits = index.find(text)
  assert len(hits) == 2  # two overlapping 13-grams
  out = decontam.cut_spans(text, hits)
  assert out == ("Before the quote. After the quote, the article continues "
                 "for a while.")


def test_decontam_short_items_match_whole():
  short = "Who founded the city of Harlow in the valley"  # 9 words
  cfg = decontam.DecontamConfig()
  index = decontam.build_index({"s": [short]}, cfg)
  assert index.find("Quiz: who founded the city of Harlow in the valley? "
                    "Answer below.")
  assert not index.find("Who founded the city of Harlow in the hills")
  off = decontam.build_index({"s": [short]}, dataclasses.replace(
      cfg, match_short_items=False))
  assert not off.find("who founded the city of Harlow in the valley")
  too_short = decontam.build_index({"s": ["Who founded Harlow"]}, cfg)
  assert not too_short.find("who founded Harlow")
