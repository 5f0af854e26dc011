"""One cell of the forgetting 2x2: an SFT run from the demo's pretrained
model at one learning rate and one general-mix share, then its domain skill
and its general text measured on held-out data.

`forgetting_cell` (the gin entry, `run.stage = @forgetting_cell`):
  1. makes sure the pretrained base exists: a lifecycle root built with
     `lifecycle.until='pretrain'` (the demo's `runs/demo_base`, shared;
     built once, under a file lock, by the first cell that needs it);
  2. runs the `sft` stage (gin scope `sft/`) from the base on the world's
     train instructions with `learning_rate` and `general_share` (the share
     of each step's batches drawn from the curated web shards, the
     retained pretraining text the lifecycle mixes in); both are this
     cell's own bindings, so an arm never touches the scopes the base is
     built with;
  3. measures the last checkpoint (and, once per sweep root, the base
     model, `BASE_EVAL`) on:
       dev    assistant-token loss on the world's validation instructions
              (the split the high learning rate was chosen on);
       test   assistant-token loss on the world's test instructions and
              greedy answers to the test prompts scored by the world's
              judge (domain skill);
       general  perplexity of the world's frozen general holdout
              (`world/eval/general_holdout.jsonl`, the forgetting panel's
              pages: written from sentence templates no training page
              uses; `disjointness` checks it against the web shards).

Everything lands in `<root>/forgetting_eval.json` (`CELL_EVAL`), the
answers in `<root>/test_answers.jsonl`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from lifejax import checks, sharding, sweep
from lifejax.data import chat, files, pipeline, sft as sft_data
from lifejax.data import sources as sources_lib
from lifejax.data.batching import example_lm_batch
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import generation, instruct
from lifejax.losses.registry import get_loss
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.stages.sft import sft
from lifejax.train.evaluate import evaluate as evaluate_loss
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training
from lifejax.world import judge as judge_lib
from lifejax.world import text as wt

CELL_EVAL = "forgetting_eval.json"
BASE_EVAL = "base_eval.json"        # in the sweep root, shared by the cells
SFT_DIR = "sft"
ANSWERS = "test_answers.jsonl"
BASE_ANSWERS = "base_test_answers.jsonl"
GENERAL_SOURCE = "web"              # lifecycle.sft_general_sources' default


def sweep_root(cell_root: str) -> str:
  """<sweep root> for a cell at <sweep root>/<arm>/seed<k>."""
  return os.path.dirname(os.path.dirname(os.path.abspath(cell_root)))


class Measure:
  """The held-out measurements for any params of one model shape: loss over
  conversations (assistant tokens, batched as the SFT stage batches its dev
  set), perplexity of plain text, and judged greedy answers."""

  def __init__(self, model: TransformerConfig, mesh_cfg: sharding.MeshConfig,
               tokenizer: Any, template: chat.ChatTemplate, seq_len: int,
               batch_size: int, spec: instruct.GenerationSpec):
    self.model, self.mesh_cfg = model, mesh_cfg
    self.mesh = sharding.make_mesh(mesh_cfg)
    self.tokenizer, self.template, self.spec = tokenizer, template, spec
    self.seq_len, self.batch_size = seq_len, batch_size
    self.plan = plan_training(
        model_cfg=model, make_loss=get_loss("lm", kind="lm"),
        optimizer_cfg=OptimizerConfig(), mesh=self.mesh, rules=mesh_cfg.rules,
        example_batch=example_lm_batch(batch_size, seq_len))

  def load(self, run_dir: str) -> tuple[Any, Any]:
    return artifacts.load_params(run_dir, transformer.Transformer,
                                 self.model, self.mesh, self.mesh_cfg.rules)

  def conversation_loss(self, params: Any, records: Sequence[Mapping[str, Any]]
                        ) -> dict[str, float]:
    source = sources_lib.InMemorySource(list(records), name="conv",
                                        fields={"messages": list})
    batches = sft_data.sft_dataset(
        source, self.tokenizer, self.template, seq_len=self.seq_len,
        batch_size=self.batch_size, seed=0, shuffle=False, num_epochs=1,
        shard_index=0, shard_count=1, skip_bad=True)
    m = evaluate_loss(self.plan.eval_step, params, iter(batches),
                      self.plan.batch_shardings)
    return {"loss": m["eval/loss"], "tokens": m["eval/tokens"]}

  def text_perplexity(self, params: Any, path: str) -> dict[str, float]:
    batches = pipeline.lm_eval_dataset(
        files.source_from_path(path), self.tokenizer, seq_len=self.seq_len,
        batch_size=self.batch_size, shard_index=0, shard_count=1)
    m = evaluate_loss(self.plan.eval_step, params, iter(batches),
                      self.plan.batch_shardings)
    return {"loss": m["eval/loss"], "perplexity": m["eval/perplexity"],
            "tokens": m["eval/tokens"]}

  def answers(self, graphdef: Any, params: Any,
              records: Sequence[Mapping[str, Any]]
              ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    if not records:
      return {}, []
    gen = generation.make_generate(
        graphdef, sharding.fetch(params), generation.chat_config(
            self.template, self.tokenizer, self.spec.max_new_tokens))
    answers = generation.generate_responses(gen, self.tokenizer,
                                            self.template, records, self.spec)
    metrics = instruct.judge_responses(records, answers)
    rows = []
    for rec, ans in zip(records, answers, strict=True):
      s = judge_lib.score(rec, ans)
      rows.append({"id": rec.get("id"), "task": rec["task"], "answer": ans,
                   "judge": s.total,
                   "correct": float(s.components["correctness"] >= 0.999
                                    and s.components["safety"] == 1.0),
                   "format": float(s.components["format"] >= 0.999)})
    return metrics, rows

  def __call__(self, run_dir: str, dev: Sequence[Mapping[str, Any]],
               test: Sequence[Mapping[str, Any]],
               prompts: Sequence[Mapping[str, Any]], general_path: str
               ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    graphdef, params = self.load(run_dir)
    d = self.conversation_loss(params, dev)
    t = self.conversation_loss(params, test)
    g = self.text_perplexity(params, general_path)
    judged, rows = self.answers(graphdef, params, prompts)
    out = {"dev_loss": d["loss"], "dev_tokens": d["tokens"],
           "test_loss": t["loss"], "test_tokens": t["tokens"],
           "general_loss": g["loss"], "general_ppl": g["perplexity"],
           "general_tokens": g["tokens"], "test_prompts": len(prompts),
           **{f"test/{k}": v for k, v in judged.items()}}
    return out, rows


def disjointness(holdout_path: str, general_paths: Sequence[str],
                 n: int = 13) -> dict[str, Any]:
  """How the general holdout relates to the text SFT mixes in: pages whose
  text appears verbatim in the mix, and pages sharing a word n-gram (the
  usual contamination n, 13) or an 8-gram with it."""
  holdout = read_jsonl(holdout_path)
  mix = [r["text"] for p in general_paths for r in read_jsonl(p)]
  texts = set(mix)
  grams = {k: set().union(*(wt.shingles(t, k) for t in mix)) for k in (n, 8)}
  out: dict[str, Any] = {
      "holdout_pages": len(holdout), "mix_documents": len(mix),
      "verbatim_pages": sum(r["text"] in texts for r in holdout)}
  for k, g in grams.items():
    out[f"pages_sharing_{k}gram"] = sum(
        bool(wt.shingles(r["text"], k) & g) for r in holdout)
  return out


def base_eval(path: str, measure: Measure, base_run: str, *args: Any
              ) -> dict[str, Any]:
  """The base model's measurements, computed once per sweep root (under a
  file lock) and shared by every cell."""
  with open(path + ".lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(path):
      metrics, rows = measure(base_run, *args)
      write_jsonl(os.path.join(os.path.dirname(path), BASE_ANSWERS), rows)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
      os.replace(path + ".tmp", path)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@gin.configurable
def forgetting_cell(
    root: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    optimizer: OptimizerConfig = gin.REQUIRED,
    learning_rate: float = 1e-3,
    general_share: float = 0.0,
    test_records: int = 0,
    seq_len: int = 384,
    batch_size: int = 8,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """SFT from the pretrained base at (learning_rate, general_share), then
  the held-out measurements; returns (and writes) `<root>/CELL_EVAL`.

  root: the cell directory. base_root: the lifecycle root of the pretrained
  base (None: <sweep root>/base). learning_rate: the SFT peak learning
  rate. general_share: the
  probability a step's batch is retained general web text. test_records:
  how many test prompts get judged answers (0: all). optimizer: the SFT
  optimizer (bind `@sft/OptimizerConfig()`, the lifecycle's SFT schedule);
  its learning rate is replaced by `learning_rate`.
  seq_len/batch_size: the measurement batches (set them to the SFT stage's).
  """
  checks.in_range("forgetting_cell.general_share", general_share, 0.0, 1.0)
  checks.at_least("forgetting_cell.test_records", test_records, 0)
  if learning_rate <= 0:
    raise ValueError(f"forgetting_cell.learning_rate={learning_rate}: must "
                     "be > 0")
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              "pretrain")
  base_run = lr.stage("pretrain").root
  tokenizer = artifacts.load_tokenizer(base_run)
  template = chat.get_template("lifejax")
  general_files = lr.curated_files(GENERAL_SOURCE)
  holdout = lr.world_eval("general_holdout")
  run_dir = os.path.join(root, SFT_DIR)
  optimizer = dataclasses.replace(optimizer, learning_rate=learning_rate)
  with gin.config_scope("sft"):
    summary = sft(run_dir=run_dir, model=model, mesh=mesh,
                  init_from=base_run,
                  train_files=[lr.world_instructions("train")],
                  eval_files=[lr.world_instructions("validation")],
                  general_files=general_files, general_share=general_share,
                  optimizer=optimizer, template=template.name, seed=seed)
  dev = read_jsonl(lr.world_instructions("validation"))
  test = read_jsonl(lr.world_instructions("test"))
  prompts = test[:test_records] if test_records else test
  measure = Measure(model, mesh, tokenizer, template, seq_len, batch_size,
                    generation_spec)
  args = (dev, test, prompts, holdout)
  base = base_eval(os.path.join(sweep_root(root), BASE_EVAL), measure,
                   base_run, *args)
  metrics, rows = measure(run_dir, *args)
  write_jsonl(os.path.join(root, ANSWERS), rows)
  result: dict[str, Any] = {
      "seed": seed, "learning_rate": learning_rate,
      "general_share": general_share,
      "base_root": os.path.relpath(lr.root, root),
      "final_step": summary.get("final_step"),
      "skipped_steps": summary.get("skipped_steps"),
      "disjointness": disjointness(holdout, general_files),
      "base": base, "cell": metrics}
  with open(os.path.join(root, CELL_EVAL), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
