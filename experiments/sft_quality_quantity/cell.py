"""One cell of the SFT quality-vs-quantity experiment: SFT from the demo's
pretrained model on a demonstration set of a given quality and size, then
greedy answers to the test prompts, judged.

`sft_qq_cell` (the gin entry, `run.stage = @sft_qq_cell`):
  1. makes sure the pretrained base exists: a lifecycle root built through
     `pretrain` (shared by every cell and seed; built once, under a file
     lock, by the first cell that needs it);
  2. selects the demonstrations from the world's mixed-quality SFT pool
     (the train instructions, each labelled with the flaw it carries or
     none; see lifejax/world/generator.py `_demo_flaws`): per task,
     `per_task[quantity]` records of which `round(noisy_share * n)` carry
     a flaw for quality 'noisy' and none for 'clean'. The draw is a
     per-seed permutation of each task's clean and flawed records, and
     every arm takes a prefix of it, so within a seed the sets are nested
     (few ⊂ many, and the clean part of a noisy set is a clean set's
     prefix): the arms differ only in the factor they name;
  3. runs the `sft` stage (gin scope `sft/`) from the base on that set for
     the same number of optimizer steps in every arm;
  4. measures the last checkpoint on the test split: assistant-token loss
     over the test conversations (against the clean references), and
     greedy answers to the test prompts scored by the world's judge
     (accuracy per task group, format, judge, and per flaw kind the share
     of answers showing it, lifejax.eval.instruct.judge_responses).

Nothing is selected: the test split is read once, after training.
Everything lands in `<root>/test_eval.json` (`TEST_EVAL`), the per-prompt
scores in `<root>/test_answers.jsonl` (`ANSWERS`).
"""

from __future__ import annotations

import collections
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
from lifejax.stages.sft import sft
from lifejax.train.evaluate import evaluate as evaluate_loss
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training
from lifejax.world import judge as judge_lib

TEST_EVAL = "test_eval.json"
ANSWERS = "test_answers.jsonl"
SFT_DIR = "sft"
TRAIN_SUBSET = "train_subset.jsonl"
QUALITIES = ("clean", "noisy")
QUANTITIES = ("few", "many")


def split_pool(records: Sequence[Mapping[str, Any]]
               ) -> dict[str, dict[str, list[int]]]:
  """{task: {"clean": indices, "flawed": indices}} of the SFT pool by the
  per-record flaw label (absent or None: the reference demonstration)."""
  out: dict[str, dict[str, list[int]]] = collections.defaultdict(
      lambda: {"clean": [], "flawed": []})
  for i, r in enumerate(records):
    out[r["task"]]["flawed" if r.get("flaw") else "clean"].append(i)
  return dict(out)


def select(records: Sequence[Mapping[str, Any]], quality: str,
           per_task: int, noisy_share: float, seed: int
           ) -> list[Mapping[str, Any]]:
  """The demonstrations of one cell, in pool order: per task `per_task`
  records, `round(noisy_share * per_task)` of them flawed when `quality`
  is 'noisy' (none when 'clean'). Each task's clean and flawed records are
  permuted by `seed` alone, and the cell takes a prefix of each, so the
  sets of one seed are nested across arms."""
  checks.choice("sft_qq_cell.quality", quality, QUALITIES)
  checks.at_least("sft_qq_cell.per_task", per_task, 1)
  checks.in_range("sft_qq_cell.noisy_share", noisy_share, 0.0, 1.0)
  n_flawed = round(noisy_share * per_task) if quality == "noisy" else 0
  n_clean = per_task - n_flawed
  pool = split_pool(records)
  rng = np.random.default_rng(seed)
  picked: list[int] = []
  for task in sorted(pool):
    clean = rng.permutation(pool[task]["clean"])
    flawed = rng.permutation(pool[task]["flawed"])
    if len(clean) < n_clean or len(flawed) < n_flawed:
      raise ValueError(
          f"sft_qq_cell: task {task!r} needs {n_clean} clean and {n_flawed} "
          f"flawed demonstrations ({quality}, {per_task} per task, "
          f"noisy_share {noisy_share}); the pool has {len(clean)} clean and "
          f"{len(flawed)} flawed")
    picked += [int(i) for i in clean[:n_clean]]
    picked += [int(i) for i in flawed[:n_flawed]]
  return [records[i] for i in sorted(picked)]


def assistant_tokens(records: Sequence[Mapping[str, Any]], tokenizer: Any,
                     template: chat.ChatTemplate) -> int:
  """Loss-weighted tokens of the conversations (assistant content + end of
  turn): one epoch's worth of SFT targets."""
  return int(sum(float(np.sum(chat_render.render_conversation(
      template, tokenizer, r["messages"])[1])) for r in records))


def pool_flaw_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """The flaw rates of the demonstrations themselves, by the detector that
  scores the answers (as lifejax.stages.lifecycle reports the demo pool)."""
  rates = instruct.judge_responses(
      records, [r["messages"][-1]["content"] for r in records])
  return {k: v for k, v in rates.items() if k.startswith("flaw/")}


def test_loss(model: TransformerConfig, mesh: Any, rules: Any, params: Any,
              tokenizer: Any, template: chat.ChatTemplate,
              records: Sequence[Mapping[str, Any]], seq_len: int,
              batch_size: int) -> dict[str, float]:
  """Assistant-token loss over `records` (batched as the SFT stage batches
  its dev set)."""
  plan = plan_training(
      model_cfg=model, make_loss=get_loss("lm", kind="lm"),
      optimizer_cfg=OptimizerConfig(), mesh=mesh, rules=rules,
      example_batch=example_lm_batch(batch_size, seq_len))
  source = sources_lib.InMemorySource(list(records), name="test",
                                      fields={"messages": list})
  batches = sft_data.sft_dataset(
      source, tokenizer, template, seq_len=seq_len, batch_size=batch_size,
      seed=0, shuffle=False, num_epochs=1, shard_index=0, shard_count=1,
      skip_bad=True)
  m = evaluate_loss(plan.eval_step, params, iter(batches),
                    plan.batch_shardings)
  return {"test_loss": m["eval/loss"], "test_loss_tokens": m["eval/tokens"]}


def answer_rows(records: Sequence[Mapping[str, Any]],
                answers: Sequence[str]) -> list[dict[str, Any]]:
  """Per test prompt: the answer, its judge total, correct / format (0/1)
  and each flaw kind the detector finds (0/1; instruct.flaws)."""
  rows = []
  for rec, ans in zip(records, answers, strict=True):
    s = judge_lib.score(rec, ans)
    rows.append({
        "id": rec.get("id"), "task": rec["task"], "answer": ans,
        "judge": s.total,
        "correct": float(s.components["correctness"] >= 0.999
                         and s.components["safety"] == 1.0),
        "format": float(s.components["format"] >= 0.999),
        **{f"flaw/{k}": float(v)
           for k, v in instruct.flaws(rec, ans, s).items()}})
  return rows


@gin.configurable
def sft_qq_cell(
    root: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    quality: str = "clean",
    quantity: str = "few",
    few_per_task: int = 20,
    many_per_task: int = 100,
    noisy_share: float = 0.4,
    test_records: int = 0,
    seq_len: int = 384,
    batch_size: int = 8,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
) -> dict[str, Any]:
  """SFT from the pretrained base on one quality x quantity demonstration
  set, then the test split; returns (and writes) `<root>/test_eval.json`.

  root: the cell directory. base_root: the lifecycle root of the pretrained
  base (None: <sweep root>/base, see sweep.default_base_root). quality:
  'clean' (flawed demonstrations filtered out) or 'noisy' (`noisy_share` of
  each task's demonstrations flawed). quantity: 'few' (`few_per_task` per
  task) or 'many' (`many_per_task`). test_records: how many test prompts
  to use (0: all). seq_len/batch_size: the test-loss batches (set them to
  the SFT stage's).
  """
  checks.choice("sft_qq_cell.quantity", quantity, QUANTITIES)
  checks.at_least("sft_qq_cell.few_per_task", few_per_task, 1)
  checks.at_least("sft_qq_cell.many_per_task", many_per_task, few_per_task)
  checks.at_least("sft_qq_cell.test_records", test_records, 0)
  per_task = few_per_task if quantity == "few" else many_per_task
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              "pretrain")
  base_run = lr.stage("pretrain").root
  tokenizer = artifacts.load_tokenizer(base_run)
  template = chat.get_template("lifejax")
  pool = read_jsonl(lr.world_instructions("train"))
  train = select(pool, quality, per_task, noisy_share, seed)
  subset_path = write_jsonl(os.path.join(root, TRAIN_SUBSET), train)
  run_dir = os.path.join(root, SFT_DIR)
  with gin.config_scope("sft"):
    summary = sft(run_dir=run_dir, model=model, mesh=mesh,
                  init_from=base_run, train_files=[subset_path],
                  eval_files=[lr.world_instructions("validation")],
                  template=template.name, seed=seed)
  tests = read_jsonl(lr.world_instructions("test"))
  tests = tests[:test_records] if test_records else tests
  cpu_mesh = sharding.make_mesh(mesh)
  graphdef, params = artifacts.load_params(
      run_dir, transformer.Transformer, model, cpu_mesh, mesh.rules)
  result: dict[str, Any] = {
      "seed": seed, "quality": quality, "quantity": quantity,
      "base": os.path.relpath(lr.root, root),
      "train_records": len(train),
      "train_flawed": sum(bool(r.get("flaw")) for r in train),
      "train_flaw_labels": dict(collections.Counter(
          r["flaw"] for r in train if r.get("flaw"))),
      "train_assistant_tokens": assistant_tokens(train, tokenizer, template),
      "train_pool_flaws": pool_flaw_rates(train),
      "test_records": len(tests),
      "final_step": summary.get("final_step"),
      "dev": {k: v for k, v in summary.get("eval", {}).items()
              if k.startswith("eval/sft_")},
      **test_loss(model, cpu_mesh, mesh.rules, params, tokenizer, template,
                  tests, seq_len, batch_size)}
  gen = generation.make_generate(
      graphdef, sharding.fetch(params), generation.chat_config(
          template, tokenizer, generation_spec.max_new_tokens))
  answers = generation.generate_responses(gen, tokenizer, template, tests,
                                          generation_spec)
  result.update({f"test/{k}": v for k, v in
                 instruct.judge_responses(tests, answers).items()})
  write_jsonl(os.path.join(root, ANSWERS), answer_rows(tests, answers))
  with open(os.path.join(root, TEST_EVAL), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
