"""Runs (or resumes) the pipeline test's curation as its own process, so a
test can kill it with SIGKILL.

  python tests/curation/curation_driver.py <corpus_dir> <out_dir>
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_curation_pipeline as t  # noqa: E402  (its config and eval set)

from lifejax.curation import run_curation  # noqa: E402

run_curation(Path(sys.argv[1]), Path(sys.argv[2]), t._CONFIG,  # pylint: disable=protected-access
             eval_sets=t._EVAL, num_workers=1)  # pylint: disable=protected-access
