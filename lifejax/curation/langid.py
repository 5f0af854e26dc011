"""Step 2, language identification with py3langid.

py3langid ships its naive-Bayes model (97 languages) inside the wheel, so it
works offline; its normalized probabilities are temperature-calibrated by text
length. The identifier is loaded once per process (~1 s) and cached.
"""

from __future__ import annotations

import dataclasses
import functools

from py3langid.langid import MODEL_FILE, LanguageIdentifier


@dataclasses.dataclass(frozen=True)
class LangIdConfig:
  """Keep a document if a target language has enough probability.

  As in FineWeb (fastText English score >= 0.65), the test is on the target
  language's own probability, not on the top label. `min_chars`: shorter
  texts carry too little signal to judge and are kept. `max_chars`: only a
  prefix this long is classified (bounds the cost).
  """
  enabled: bool = True
  languages: tuple[str, ...] = ("en",)
  min_confidence: float = 0.65
  min_chars: int = 20
  max_chars: int = 4000
  exempt_sources: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def _identifier() -> LanguageIdentifier:
  return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_probs(text: str, max_chars: int = 4000) -> list[tuple[str, float]]:
  """(ISO 639-1 code, probability) for every known language, best first."""
  return [(lang, float(p)) for lang, p in _identifier().rank(text[:max_chars])]


def language_verdict(text: str, config: LangIdConfig
                     ) -> tuple[str | None, str, float]:
  """Decides one text.

  Returns:
    (reason or None if kept, language, probability). A kept text reports its
    best target language; a dropped one its top language, with reason
    "lang_<code>" (another language wins) or "low_confidence_<code>" (a
    target wins but below `min_confidence`).
  """
  if len(text) < config.min_chars:
    return None, "und", 0.0
  probs = language_probs(text, config.max_chars)
  top_lang, top_prob = probs[0]
  target = [(p, lang) for lang, p in probs if lang in config.languages]
  best_prob, best_lang = max(target) if target else (0.0, "und")
  if best_prob >= config.min_confidence:
    return None, best_lang, best_prob
  if top_lang in config.languages:
    return f"low_confidence_{top_lang}", top_lang, top_prob
  return f"lang_{top_lang}", top_lang, top_prob
