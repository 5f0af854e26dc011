"""Data curation: normalize, language ID, boilerplate, quality, dedup (exact +
MinHash LSH), PII, decontamination, mix; local (multiprocessing, resumable)
and Apache Beam runners. Entry point: `run_curation`."""

from lifejax.curation.config import CurationConfig
from lifejax.curation.pipeline import run_curation

__all__ = ["CurationConfig", "run_curation"]
