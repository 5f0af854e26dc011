"""One cell of the early-stopping experiment: an overfitting SFT run from the
demo's pretrained model, then its checkpoints measured on the test split.

`early_stopping_cell` (the gin entry, `run.stage = @early_stopping_cell`):
  1. makes sure the pretrained base exists: a lifecycle root built with
     `lifecycle.until='pretrain'` (shared by every cell and seed; built once,
     under a file lock, by the first cell that needs it);
  2. draws the small training set: `train_records` conversations of the
     world's train split, the same number per task, chosen by `seed`;
  3. runs the `sft` stage (gin scope `sft/`) from the base on that set for
     many epochs, evaluating the dev split (the world's validation
     instructions) every `sft/LoopConfig.eval_every` steps; keep-best writes
     the step with the lowest dev loss under best/, and an arm may add
     patience-based early stopping;
  4. measures each checkpoint named in `evaluate` ("last": the final step,
     "best": the best-on-dev step) on the test split: assistant-token loss
     over the test conversations and greedy answers to the test prompts
     scored by the world's judge (accuracy, judge score, format, per prompt).

Selection uses dev only; the test split is read after training, for the
checkpoints the run chose. Everything lands in `<root>/test_eval.json`
(`TEST_EVAL`), with the answers in `<root>/test_answers_<which>.jsonl`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import numpy as np

from lifejax import checks, sharding, sweep
from lifejax.data import chat, chat_render, sft as sft_data
from lifejax.data import sources as sources_lib
from lifejax.data.batching import example_lm_batch
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import generation, instruct
from lifejax.losses.registry import get_loss
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.stages.sft import sft
from lifejax.train.evaluate import evaluate as evaluate_loss
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training
from lifejax.world import judge as judge_lib

TEST_EVAL = "test_eval.json"
SFT_DIR = "sft"
TRAIN_SUBSET = "train_subset.jsonl"
CHECKPOINTS = ("last", "best")


# The shared base (lifejax.sweep): <sweep root>/base unless bound.
default_base_root = sweep.default_base_root
ensure_base = sweep.ensure_lifecycle


def draw_subset(records: Sequence[Mapping[str, Any]], n: int, seed: int
                ) -> list[Mapping[str, Any]]:
  """`n` records, the same number from each task (n must divide evenly),
  drawn without replacement by `seed`, in their original order."""
  by_task: dict[str, list[int]] = collections.defaultdict(list)
  for i, r in enumerate(records):
    by_task[r["task"]].append(i)
  tasks = sorted(by_task)
  if n < len(tasks) or n % len(tasks):
    raise ValueError(f"early_stopping_cell.train_records={n}: must be a "
                     f"positive multiple of the {len(tasks)} tasks {tasks}")
  per = n // len(tasks)
  short = {t: len(v) for t, v in by_task.items() if len(v) < per}
  if short:
    raise ValueError(f"early_stopping_cell.train_records={n}: needs {per} "
                     f"records per task, the train split has {short}")
  rng = np.random.default_rng(seed)
  picked = sorted(int(i) for t in tasks
                  for i in rng.choice(by_task[t], per, replace=False))
  return [records[i] for i in picked]


def params_digest(params: Any) -> str:
  """sha256 (16 hex) of every parameter's bytes, in tree order."""
  import jax  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(sharding.fetch(params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def assistant_tokens(records: Sequence[Mapping[str, Any]], tokenizer: Any,
                     template: chat.ChatTemplate) -> int:
  """Loss-weighted tokens of the conversations (assistant content + end of
  turn): one epoch's worth of SFT targets."""
  return int(sum(float(np.sum(chat_render.render_conversation(
      template, tokenizer, r["messages"])[1])) for r in records))


class TestSplit:
  """The test split's two measurements for any params of one model shape:
  assistant-token loss over the test conversations (the SFT loss, batched
  as the stage batches its dev set) and judged greedy answers."""

  def __init__(self, model: TransformerConfig, mesh_cfg: sharding.MeshConfig,
               tokenizer: Any, template: chat.ChatTemplate,
               records: Sequence[Mapping[str, Any]], seq_len: int,
               batch_size: int, spec: instruct.GenerationSpec):
    self.model, self.mesh_cfg = model, mesh_cfg
    self.mesh = sharding.make_mesh(mesh_cfg)
    self.tokenizer, self.template = tokenizer, template
    self.records, self.spec = list(records), spec
    self.seq_len, self.batch_size = seq_len, batch_size
    self.plan = plan_training(
        model_cfg=model, make_loss=get_loss("lm", kind="lm"),
        optimizer_cfg=OptimizerConfig(), mesh=self.mesh, rules=mesh_cfg.rules,
        example_batch=example_lm_batch(batch_size, seq_len))

  def loss(self, params: Any) -> dict[str, float]:
    source = sources_lib.InMemorySource(self.records, name="test",
                                        fields={"messages": list})
    batches = sft_data.sft_dataset(
        source, self.tokenizer, self.template, seq_len=self.seq_len,
        batch_size=self.batch_size, seed=0, shuffle=False, num_epochs=1,
        shard_index=0, shard_count=1, skip_bad=True)
    m = evaluate_loss(self.plan.eval_step, params, iter(batches),
                      self.plan.batch_shardings)
    return {"test_loss": m["eval/loss"], "test_loss_tokens": m["eval/tokens"]}

  def answers(self, graphdef: Any, params: Any) -> list[str]:
    gen = generation.make_generate(
        graphdef, sharding.fetch(params), generation.chat_config(
            self.template, self.tokenizer, self.spec.max_new_tokens))
    return generation.generate_responses(gen, self.tokenizer, self.template,
                                         self.records, self.spec)

  def __call__(self, run_dir: str, best: bool) -> tuple[dict, list[dict]]:
    graphdef, params = artifacts.load_params(
        run_dir, transformer.Transformer, self.model, self.mesh,
        self.mesh_cfg.rules, best=best)
    out = {"params_sha256": params_digest(params), **self.loss(params)}
    answers = self.answers(graphdef, params)
    out.update({f"test/{k}": v for k, v in
                instruct.judge_responses(self.records, answers).items()})
    rows = []
    for rec, ans in zip(self.records, answers, strict=True):
      s = judge_lib.score(rec, ans)
      rows.append({"id": rec.get("id"), "task": rec["task"], "answer": ans,
                   "judge": s.total,
                   "correct": float(s.components["correctness"] >= 0.999
                                    and s.components["safety"] == 1.0),
                   "format": float(s.components["format"] >= 0.999)})
    return out, rows


@gin.configurable
def early_stopping_cell(
    root: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    train_records: int = 100,
    test_records: int = 0,
    evaluate: Sequence[str] = CHECKPOINTS,
    seq_len: int = 384,
    batch_size: int = 8,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """Overfitting SFT from the pretrained base, then the test split on the
  checkpoints in `evaluate`; returns (and writes) `<root>/test_eval.json`.

  root: the cell directory. base_root: the lifecycle root of the pretrained
  base (None: <sweep root>/base, see `default_base_root`). train_records:
  the small training set's size (a multiple of the number of tasks).
  test_records: how many test prompts to use (0: all). seq_len/batch_size:
  the test-loss batches (set them to the SFT stage's, so test loss and dev
  loss are computed alike).
  """
  checks.at_least("early_stopping_cell.test_records", test_records, 0)
  for which in evaluate:
    checks.choice("early_stopping_cell.evaluate", which, CHECKPOINTS)
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = ensure_base(base_root or default_base_root(root), "pretrain")
  base_run = lr.stage("pretrain").root
  tokenizer = artifacts.load_tokenizer(base_run)
  template = chat.get_template("lifejax")
  train = draw_subset(read_jsonl(lr.world_instructions("train")),
                      train_records, seed)
  subset_path = write_jsonl(os.path.join(root, TRAIN_SUBSET), train)
  run_dir = os.path.join(root, SFT_DIR)
  with gin.config_scope("sft"):
    summary = sft(run_dir=run_dir, model=model, mesh=mesh,
                  init_from=base_run, train_files=[subset_path],
                  eval_files=[lr.world_instructions("validation")],
                  general_eval_files=[lr.world_eval("general_holdout")],
                  template=template.name, seed=seed)
  tests = read_jsonl(lr.world_instructions("test"))
  tests = tests[:test_records] if test_records else tests
  split = TestSplit(model, mesh, tokenizer, template, tests, seq_len,
                    batch_size, generation_spec)
  run = RunDir(run_dir)
  result: dict[str, Any] = {
      "seed": seed, "base": os.path.relpath(lr.root, root),
      "train_records": len(train),
      "train_assistant_tokens": assistant_tokens(train, tokenizer, template),
      "test_records": len(tests),
      "final_step": summary.get("final_step"),
      "stopped_early": summary.get("stopped_early"),
      "best_step": summary.get("best_step"),
      "steps": {"last": run.checkpoint_steps()[-1],
                "best": run.checkpoint_steps(best=True)[-1]},
      "checkpoints": {}}
  for which in evaluate:
    metrics, rows = split(run_dir, best=(which == "best"))
    result["checkpoints"][which] = metrics
    write_jsonl(os.path.join(root, f"test_answers_{which}.jsonl"), rows)
  for which in CHECKPOINTS:  # digests of both, evaluated or not
    if which not in result["checkpoints"]:
      _, params = artifacts.load_params(
          run_dir, transformer.Transformer, model, split.mesh, mesh.rules,
          best=(which == "best"))
      result["checkpoints"][which] = {"params_sha256": params_digest(params)}
  with open(os.path.join(root, TEST_EVAL), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
