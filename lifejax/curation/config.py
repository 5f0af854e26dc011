"""The curation configuration: one frozen dataclass per step.

Library code takes these typed configs; gin wiring lives in lifejax/stages.py.
`fingerprint` identifies a configuration, so a resumed run can refuse to mix
shards produced under different settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from lifejax.curation.boilerplate import BoilerplateConfig
from lifejax.curation.decontam import DecontamConfig
from lifejax.curation.dedup import ExactDedupConfig, NearDedupConfig
from lifejax.curation.langid import LangIdConfig
from lifejax.curation.minhash import MinHashConfig
from lifejax.curation.mix import MixConfig
from lifejax.curation.normalize import NormalizeConfig
from lifejax.curation.pii import PiiConfig
from lifejax.curation.quality import QualityConfig
from lifejax.curation.shards import InputConfig


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  """Steps run in this order: input checks, normalize, langid, boilerplate,
  quality (per document, per shard), exact then near dedup (global),
  decontam, pii (per document, per shard); then the mix table.

  Filters run before dedup so that a duplicate cluster keeps a document
  that passes them (and dedup has less to compare); PII is redacted last,
  on exactly the text that is written.
  """
  input: InputConfig = InputConfig()
  normalize: NormalizeConfig = NormalizeConfig()
  langid: LangIdConfig = LangIdConfig()
  boilerplate: BoilerplateConfig = BoilerplateConfig()
  quality: QualityConfig = QualityConfig()
  exact_dedup: ExactDedupConfig = ExactDedupConfig()
  near_dedup: NearDedupConfig = NearDedupConfig()
  decontam: DecontamConfig = DecontamConfig()
  pii: PiiConfig = PiiConfig()
  mix: MixConfig = MixConfig()
  # Within a duplicate cluster keep the copy from the earliest source listed
  # here (unlisted sources come after, by name), then by shard and line.
  keep_priority: tuple[str, ...] = ()
  examples_per_reason: int = 3

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def fingerprint(self) -> str:
    blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def embedded_world_config() -> CurationConfig:
  """Settings for the embedded world's corpus (`world/generator.py`).

  * Web heuristics (C4 line rules, Gopher, FineWeb, C4 page rules) run on
    the web crawl only: curated prose (wiki), dialogue (support_chat), mail
    threads (mail), tables (records) and the staff digest (digest) are not
    web pages, and real pipelines route such sources around web filters
    too. (Table rows have no terminal punctuation: the C4 line rules would
    empty every record.)
  * Language ID skips `records`: tables of IDs and prices carry too little
    language signal (py3langid gives most of them low English confidence).
  * Near-duplicates in this world are defined down to word-5-gram Jaccard
    0.5, below the 0.7-0.8 the 14x8 banding targets. 28 bands x 4 rows
    (same 112 hashes) puts the S-curve midpoint at ~0.43; verifying each
    candidate pair's signature-estimated Jaccard >= 0.5 removes the extra
    false candidates that low threshold lets in.
  * Duplicate clusters keep the curated copy over a web copy.
  """
  non_web = ("wiki", "support_chat", "records", "mail", "non_english",
             "digest")
  return CurationConfig(
      langid=LangIdConfig(exempt_sources=("records",)),
      boilerplate=BoilerplateConfig(exempt_sources=non_web),
      quality=QualityConfig(exempt_sources=non_web),
      near_dedup=NearDedupConfig(minhash=MinHashConfig(
          bands=28, rows=4, verify_threshold=0.5)),
      keep_priority=("wiki", "support_chat", "records", "mail", "non_english",
                     "digest", "web"),
  )
