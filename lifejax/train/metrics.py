"""Run-directory metrics: metrics.jsonl, TensorBoard events, PNG curves."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lifejax.data.jsonl import append_jsonl, read_jsonl
from lifejax.run.layout import RunDir

_PROGRESS_LABEL = contextvars.ContextVar("progress_label", default="")


@contextlib.contextmanager
def progress_label(label: str) -> Iterator[None]:
  """Names the progress bars opened inside (e.g. "[3/7] sft"), so a
  multi-stage run shows which stage the step/loss/ETA line belongs to."""
  token = _PROGRESS_LABEL.set(label)
  try:
    yield
  finally:
    _PROGRESS_LABEL.reset(token)


def progress_desc(default: str) -> str:
  """The progress bar title: the active label, else `default`."""
  label = _PROGRESS_LABEL.get()
  return f"{label} {default}" if label else default


def finite_json(obj: Any, path: str = "") -> tuple[Any, dict[str, str]]:
  """`obj` with every non-finite float replaced by None, and {dotted key:
  what it was} for each replacement (strict JSON has no NaN)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None, {path or ".": repr(obj)}
  if isinstance(obj, Mapping):
    out, why = {}, {}
    for k, v in obj.items():
      out[k], w = finite_json(v, f"{path}.{k}" if path else str(k))
      why.update(w)
    return out, why
  if isinstance(obj, (list, tuple)):
    out, why = [], {}
    for i, v in enumerate(obj):
      o, w = finite_json(v, f"{path}[{i}]")
      out.append(o)
      why.update(w)
    return out, why
  return obj, {}


def write_summary(path: str, summary: Mapping[str, Any]) -> None:
  """Writes summary.json atomically; non-finite numbers become null, listed
  under "non_finite" ({key: "nan"}) so a reader sees why."""
  clean, why = finite_json(dict(summary))
  if why:
    clean["non_finite"] = {**clean.get("non_finite", {}), **why}
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(clean, f, indent=2, default=str, allow_nan=False)
  os.replace(tmp, path)


class MetricsWriter:
  """Appends one JSON object per logged step; mirrors scalars to TensorBoard."""

  def __init__(self, run_dir: str, tensorboard: bool = True):
    os.makedirs(run_dir, exist_ok=True)
    self.path = RunDir(run_dir).metrics
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # lazy: only for real runs
      self._tb = SummaryWriter(RunDir(run_dir).tensorboard)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    row = {"step": int(step)}
    for k, v in metrics.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else str(v)
      if self._tb is not None and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))
    # Opened per row (cheap at logging rates): a resumed run's first append
    # drops a torn last line left by the killed one (data.jsonl's policy).
    append_jsonl(self.path, row)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  """Rows of a metrics.jsonl file by step (data.jsonl's torn-last-line
  policy); a restarted run's repeated steps keep the last."""
  by_step: dict[tuple[int, frozenset], dict] = {}
  for r in read_jsonl(path):
    by_step[(r["step"], frozenset(k for k in r if k != "step"))] = r
  return sorted(by_step.values(), key=lambda r: r["step"])


def series(rows: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r["step"], r[key]) for r in rows
         if key in r and isinstance(r[key], (int, float))]
  if not pts:
    return np.zeros(0), np.zeros(0)
  s, v = zip(*pts)
  return np.asarray(s), np.asarray(v, dtype=float)


def plot_curves(metrics_path: str, out_png: str,
                keys: Sequence[str] = ("loss", "eval/loss"),
                title: str = "") -> str:
  """Writes a PNG with one line per key found in metrics.jsonl."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(metrics_path)
  fig, ax = plt.subplots(figsize=(6, 4))
  for key in keys:
    s, v = series(rows, key)
    if len(s):
      ax.plot(s, v, label=key, marker="o" if len(s) < 30 else None)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title or os.path.basename(os.path.dirname(metrics_path)))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png
