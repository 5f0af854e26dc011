"""The run directory contract: every file name a stage writes or reads.

A run directory (`RunDir`) is what one stage leaves; a lifecycle root
(`LifecycleRoot`) holds the generated world, the curated corpus, one run
directory per stage and the lifecycle's own reports. Every other module
asks these classes for paths instead of spelling file names, so renaming a
file is a one-line change here (and the on-disk names below are the ones
existing runs and the recorded demo use: keep them).
"""

from __future__ import annotations

import os
import re

# -- names inside a run directory --------------------------------------------
LINEAGE = "lineage.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG_GIN = "config.gin"
OPERATIVE_GIN = "operative_config.gin"
STAGE_FILE = "stage.json"
TOKENIZER_MODEL = "tokenizer.model"
CHAT_TEMPLATE = "chat_template.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
# inside each checkpoints/<step>/ (and best/<step>/), written last: the
# content checksums that make the checkpoint complete
CHECKPOINT_MANIFEST = "lifejax_checksums.json"
QUARANTINE = "quarantine"  # bad checkpoints, moved aside (never deleted)
SAMPLES = "samples"
HELDOUT = "heldout"
EVAL = "eval.json"
# One row per evaluation prompt: the answer and its scores (paired analysis).
EVAL_ANSWERS = "eval_answers.jsonl"
# Each held-out source's per-row (summed loss, token weight).
EVAL_ROWS = "eval_rows.json"
# Per held-out fact: whether each phrasing ranked the true value first.
FACT_RANK = "fact_rank.json"
SIDE_BY_SIDE = "side_by_side.md"
REWARD_STATS = "reward_stats.json"
REWARD_EVAL = "reward_eval.json"
REWARD_EVAL_PNG = "reward_eval.png"
PREFERENCES = "preferences.jsonl"
RLAIF_REPORT = "rlaif_report.json"
LOSS_CURVE = "loss_curve.png"
RL_CURVES = "rl_curves.png"
TENSORBOARD = "tensorboard"
MODEL_CARD = "model_card.yaml"
POLICY = "policy"
HF_EXPORT = "hf_export"
# written by tools/convert_checkpoint.py for a run imported from HF
MODEL_CONFIG_JSON = "model_config.json"
MODEL_GIN = "model.gin"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
_STEP_SAMPLE = "step_{:06d}.jsonl"
_ITER_SAMPLE = "iter_{:06d}.jsonl"
_STEP_RE = re.compile(r"^step_(\d+)\.jsonl$")

# -- names inside a lifecycle root -------------------------------------------
LEDGER = "lifecycle.json"
WORLD = "world"
CURATED = "curated"
WORLD_MANIFEST = "manifest.json"
CURATION_REPORT = "curation_report.json"
CURATION_REPORT_MD = "curation_report.md"
REPORT = "report.md"
PLOTS = "plots"
LOSS_CURVES_PLOT = "loss_curves.png"
REWARD_VS_KL_PLOT = "reward_vs_kl.png"
FORGETTING_PLOT = "forgetting.png"


def step_sample_name(step: int) -> str:
  """The file name of a trainer's eval samples at `step`."""
  return _STEP_SAMPLE.format(int(step))


def iteration_sample_name(iteration: int) -> str:
  """The file name of an RL iteration's rollout samples."""
  return _ITER_SAMPLE.format(int(iteration))


def _jsonl_files(d: str) -> list[str]:
  if not os.path.isdir(d):
    return []
  return sorted(os.path.join(d, f) for f in os.listdir(d)
                if f.endswith(".jsonl"))


class RunDir:
  """Paths of one stage's run directory (nothing is created or read)."""

  def __init__(self, path: str | os.PathLike[str]):
    self.root = os.path.abspath(os.fspath(path))

  def __repr__(self) -> str:
    return f"RunDir({self.root!r})"

  def __fspath__(self) -> str:
    return self.root

  def __eq__(self, other: object) -> bool:
    return isinstance(other, RunDir) and other.root == self.root

  def __hash__(self) -> int:
    return hash(self.root)

  def _p(self, name: str) -> str:
    return os.path.join(self.root, name)

  # files
  lineage = property(lambda self: self._p(LINEAGE))
  summary = property(lambda self: self._p(SUMMARY))
  metrics = property(lambda self: self._p(METRICS))
  config_gin = property(lambda self: self._p(CONFIG_GIN))
  operative_gin = property(lambda self: self._p(OPERATIVE_GIN))
  stage_file = property(lambda self: self._p(STAGE_FILE))
  tokenizer_model = property(lambda self: self._p(TOKENIZER_MODEL))
  chat_template = property(lambda self: self._p(CHAT_TEMPLATE))
  eval = property(lambda self: self._p(EVAL))
  eval_answers = property(lambda self: self._p(EVAL_ANSWERS))
  eval_rows = property(lambda self: self._p(EVAL_ROWS))
  fact_rank = property(lambda self: self._p(FACT_RANK))
  side_by_side = property(lambda self: self._p(SIDE_BY_SIDE))
  reward_stats = property(lambda self: self._p(REWARD_STATS))
  reward_eval = property(lambda self: self._p(REWARD_EVAL))
  reward_eval_png = property(lambda self: self._p(REWARD_EVAL_PNG))
  preferences = property(lambda self: self._p(PREFERENCES))
  rlaif_report = property(lambda self: self._p(RLAIF_REPORT))
  loss_curve = property(lambda self: self._p(LOSS_CURVE))
  rl_curves = property(lambda self: self._p(RL_CURVES))
  model_card = property(lambda self: self._p(MODEL_CARD))
  model_config_json = property(lambda self: self._p(MODEL_CONFIG_JSON))
  model_gin = property(lambda self: self._p(MODEL_GIN))
  chat_template_jinja = property(lambda self: self._p(CHAT_TEMPLATE_JINJA))
  # directories
  checkpoints = property(lambda self: self._p(CHECKPOINTS))
  best = property(lambda self: self._p(BEST))
  samples = property(lambda self: self._p(SAMPLES))
  heldout = property(lambda self: self._p(HELDOUT))
  tensorboard = property(lambda self: self._p(TENSORBOARD))
  hf_export = property(lambda self: self._p(HF_EXPORT))

  @property
  def policy(self) -> RunDir:
    """The LM an RL run exports (a plain LM run directory of its own)."""
    return RunDir(self._p(POLICY))

  def lm_run(self) -> RunDir:
    """The LM run of a stage: an RL run's exported policy if present, else
    this run itself."""
    return self.policy if os.path.isdir(self.policy.root) else self

  def checkpoint_dir(self, best: bool = False) -> str:
    """checkpoints/ (latest steps) or best/ (best steps by an eval metric)."""
    return self.best if best else self.checkpoints

  def quarantine_dir(self, best: bool = False) -> str:
    """quarantine/checkpoints/ (or quarantine/best/): where a corrupt or
    incomplete checkpoint is moved aside."""
    return os.path.join(self.root, QUARANTINE, BEST if best else CHECKPOINTS)

  def checkpoint_steps(self, best: bool = False) -> list[int]:
    """The saved steps under checkpoints/ (or best/), ascending."""
    d = self.checkpoint_dir(best)
    if not os.path.isdir(d):
      return []
    return sorted(int(s) for s in os.listdir(d) if s.isdigit())

  def sample_file(self, step: int) -> str:
    """samples/step_<6 digits>.jsonl: a trainer's eval samples at `step`."""
    return os.path.join(self.samples, step_sample_name(step))

  def iteration_sample_file(self, iteration: int) -> str:
    """samples/iter_<6 digits>.jsonl: an RL iteration's rollout samples."""
    return os.path.join(self.samples, iteration_sample_name(iteration))

  def sample_steps(self) -> list[int]:
    """Steps with a samples/step_*.jsonl file, ascending."""
    if not os.path.isdir(self.samples):
      return []
    return sorted(int(m.group(1)) for m in map(_STEP_RE.match,
                                               os.listdir(self.samples)) if m)

  def sample_files(self) -> list[str]:
    """Every samples/*.jsonl file (step_ and iter_), sorted by name."""
    return _jsonl_files(self.samples)

  def heldout_file(self, name: str) -> str:
    """heldout/<name>.jsonl: documents of source `name` held out for eval."""
    return os.path.join(self.heldout, f"{name}.jsonl")

  def heldout_files(self) -> list[str]:
    """Every heldout/*.jsonl file, sorted."""
    return _jsonl_files(self.heldout)


class LifecycleRoot:
  """Paths of a lifecycle root: world/, curated/, one run per stage, the
  ledger (lifecycle.json), report.md with its plots/, model cards."""

  def __init__(self, path: str | os.PathLike[str]):
    self.root = os.path.abspath(os.fspath(path))

  def __repr__(self) -> str:
    return f"LifecycleRoot({self.root!r})"

  def __fspath__(self) -> str:
    return self.root

  def _p(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  ledger = property(lambda self: self._p(LEDGER))
  world = property(lambda self: self._p(WORLD))
  curated = property(lambda self: self._p(CURATED))
  world_manifest = property(lambda self: self._p(WORLD, WORLD_MANIFEST))
  curation_report = property(lambda self: self._p(CURATED, CURATION_REPORT))
  curation_report_md = property(
      lambda self: self._p(CURATED, CURATION_REPORT_MD))
  report = property(lambda self: self._p(REPORT))
  plots = property(lambda self: self._p(PLOTS))
  world_corpus = property(lambda self: self._p(WORLD, "corpus"))

  # the report's plots
  loss_curves_plot = property(lambda self: self._p(PLOTS, LOSS_CURVES_PLOT))
  reward_vs_kl_plot = property(
      lambda self: self._p(PLOTS, REWARD_VS_KL_PLOT))
  forgetting_plot = property(lambda self: self._p(PLOTS, FORGETTING_PLOT))

  def stage(self, name: str) -> RunDir:
    """The run directory of stage `name` (<root>/<name>)."""
    return RunDir(self._p(name))

  def model_card(self, name: str) -> str:
    """The model card of stage `name`'s candidate."""
    return self.stage(name).model_card

  def world_instructions(self, split: str) -> str:
    """world/instructions/<split>.jsonl (train | validation | test)."""
    return self._p(WORLD, "instructions", f"{split}.jsonl")

  def world_instructions_dir(self) -> str:
    return self._p(WORLD, "instructions")

  def world_preferences(self, split: str) -> str:
    """world/preferences/<split>.jsonl (chosen/rejected pairs)."""
    return self._p(WORLD, "preferences", f"{split}.jsonl")

  def world_eval(self, name: str) -> str:
    """world/eval/<name>.jsonl (fact_questions, general_holdout, ...)."""
    return self._p(WORLD, "eval", f"{name}.jsonl")

  def curated_dir(self, source: str) -> str:
    """curated/<source>/: the curated shards of one source."""
    return self._p(CURATED, source)

  def curated_files(self, source: str) -> list[str]:
    """The curated/<source>/*.jsonl shards, sorted."""
    return _jsonl_files(self.curated_dir(source))
