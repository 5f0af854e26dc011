"""One cell of the tool-use experiment: does a directory tool, learned by
SFT and sharpened by GRPO, answer fact questions beyond what the model
memorised?

`tool_use_cell` (the gin entry, `run.stage = @tool_use_cell`):
  1. makes sure the demo's SFT model exists (the lifecycle root `base_root`
     run through `lifecycle.until='sft'`, lifecycle/default.gin; shared with
     other experiments);
  2. writes the question sets (data.py: every fact asked in both
     phrasings, facts dealt to train / dev / test, no dev or test fact is
     one the demo's SFT data asks about; "stated" facts appear in the
     pretraining corpus, "held out" facts nowhere);
  3. from the demo's SFT model, two SFT runs on the same train questions
     and the same budget (gin scope `tu_sft/`): `direct` answers them
     directly (the memorisation control: whatever fine-tuning on fact
     answers can store), `tool` calls the company directory first
     ("lookup: <subject>", the directory's observation as a user turn,
     then the answer; the loss covers both assistant turns, not the
     observation);
  4. GRPO from the `tool` model (gin scope `tu_grpo/`) on the train
     questions with the directory in the loop (multi-turn rollouts,
     `rl.multiturn`: token-in / token-out, observations loss-masked),
     rewarded by the world's programmatic judge on the final answer;
  5. answers every dev and test question greedily with four models: the
     demo's SFT model and `direct` closed-book (one turn, no tool), `tool`
     and `tool_grpo` with the directory (up to 2 turns), all with the same
     decoding. A question counts as answered correctly when the judge's
     correctness is 1 (the gold value stated, no distractor). For the tool
     models also: whether the call named the question's subject, whether
     the observation held the gold value, and (`<model>/oracle_call`) the
     answer turn alone after the correct call and its observation.

Nothing is selected on the test split: it is read once, after training,
like dev. Everything lands in `<root>/test_eval.json` (`RESULT`), the
per-question answers in `<root>/answers.jsonl` (`ANSWERS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if _REPO not in sys.path:  # experiments.tool_use_rl.data
  sys.path.insert(0, _REPO)

from lifejax import checks, sharding, sweep  # noqa: E402
from lifejax.data.jsonl import read_jsonl, write_jsonl  # noqa: E402
from lifejax.eval import generation, lifecycle_evals  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402
from lifejax.rl import multiturn  # noqa: E402
from lifejax.rl import rollout as rollout_lib  # noqa: E402
from lifejax.run import artifacts  # noqa: E402
from lifejax.stages.rl import grpo  # noqa: E402
from lifejax.stages.sft import sft  # noqa: E402
from lifejax.world import judge as judge_lib  # noqa: E402
from lifejax.world import tools as tools_lib  # noqa: E402

from experiments.tool_use_rl import data as data_lib  # noqa: E402

RESULT = "test_eval.json"
ANSWERS = "answers.jsonl"
DATA_DIR = "data"
SFT_SCOPE, GRPO_SCOPE = "tu_sft", "tu_grpo"
# (model, its run directory under the cell, answers with the directory)
MODELS = (("sft", None, False), ("direct", "direct", False),
          ("tool", "tool", True), ("tool_grpo", "tool_grpo", True))
# Diagnostics of the tool models: the answer turn alone, after the correct
# call and the directory's observation written into the prompt (the tool
# set's conversation without its final answer): can the model copy the
# answer out of the observation when the call is given?
ORACLE_CALL = (("tool/oracle_call", "tool"),
               ("tool_grpo/oracle_call", "tool_grpo"))
EVAL_SPLITS = ("dev", "test")


def answer_questions(run_dir: str, model: TransformerConfig, mesh: Any,
                     rules: Any,
                     record_sets: Sequence[Sequence[dict[str, Any]]],
                     cfg: rollout_lib.RolloutConfig,
                     tool: tools_lib.Tool | None, batch: int
                     ) -> list[list[rollout_lib.Rollout]]:
  """Greedy multi-turn answers of `run_dir`'s LM (an RL run's policy/)
  to each set of records in `record_sets` (the checkpoint is loaded and the
  sampler built once), `batch` at a time (one rollout each); `tool` None:
  every first turn is the answer."""
  graphdef, params = lifecycle_evals.lm_params(run_dir, model, mesh, rules)
  codec = rollout_lib.chat_codec(artifacts.load_template(run_dir),
                                 artifacts.load_tokenizer(run_dir))
  greedy = dataclasses.replace(cfg, temperature=0.0)
  sample = generation.make_sampler(
      generation.default_sample_fn(), graphdef, sharding.fetch(params),
      greedy.sampling_config(codec.stop_ids, codec.pad_id, codec.vocab_limit),
      batch)
  out = []
  for records in record_sets:
    out.append([])
    for s in range(0, len(records), batch):
      chunk = list(records[s:s + batch])
      out[-1].append(multiturn.collect(
          chunk, codec=codec, cfg=greedy, sample=sample,
          rng=jax.random.PRNGKey(0), tool=tool))
  return out


def _rows(model_name: str, split: str, records, rollouts,
          directory: tools_lib.Directory,
          subjects: dict[str, str]) -> list[dict]:
  """One row per question: the final answer, its judge score and
  correctness, and for tool models whether the call named the question's
  subject and whether the observation held the gold value."""
  rows = []
  i = 0
  for ro in rollouts:
    for j in range(ro.batch_size):
      rec = records[i]
      i += 1
      final = ro.texts[j]
      score = judge_lib.score(rec, final)
      called = [t["content"] for t in ro.transcripts[j][:-1]
                if t["role"] == "assistant"]
      observed = [t["content"] for t in ro.transcripts[j]
                  if t["role"] == "user"]
      query = directory.parse(called[0]) if called else None
      subject = subjects[rec["reference"]["fact_id"]]
      rows.append({
          "model": model_name, "split": split, "id": rec["id"],
          "group": rec["group"], "relation": rec["relation"],
          "fact_id": rec["reference"]["fact_id"],
          "correct": float(score.components["correctness"] == 1.0),
          "judge": score.total, "answer": final,
          "tool_calls": int(ro.tool_calls_B[j]),
          "call": called[0] if called else None,
          "call_names_subject": bool(
              query is not None and subject in directory.matches(query)),
          "observation_has_answer": bool(observed) and judge_lib.score(
              rec, observed[0]).components["correctness"] > 0,
          "stopped": bool(ro.stopped_B[j])})
  return rows


def _head(records: list[dict], n: int) -> list[dict]:
  """The first `n` records (0: all), taken from each question group in
  turn, so a short evaluation still covers both groups."""
  if not n:
    return records
  by_group = [[r for r in records if r["group"] == g]
              for g in data_lib.GROUPS]
  out: list[dict] = []
  for i in range(max(map(len, by_group))):
    out += [g[i] for g in by_group if i < len(g)]
  return out[:n]


def _summary(rows: list[dict]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for split in sorted({r["split"] for r in rows}):
    for m in [m for m, _, _ in MODELS] + [m for m, _ in ORACLE_CALL]:
      rs = [r for r in rows if r["split"] == split and r["model"] == m]
      if not rs:
        continue
      entry = {"n": len(rs),
               "accuracy": float(np.mean([r["correct"] for r in rs])),
               "judge": float(np.mean([r["judge"] for r in rs])),
               "tool_call_rate": float(np.mean([r["tool_calls"] > 0
                                                for r in rs])),
               "call_names_subject": float(np.mean(
                   [r["call_names_subject"] for r in rs])),
               "observation_has_answer": float(np.mean(
                   [r["observation_has_answer"] for r in rs]))}
      for g in data_lib.GROUPS:
        gs = [r for r in rs if r["group"] == g]
        entry[f"accuracy/{g}"] = (float(np.mean([r["correct"] for r in gs]))
                                  if gs else float("nan"))
        entry[f"n/{g}"] = len(gs)
      out.setdefault(split, {})[m] = entry
  return out


@gin.configurable
def tool_use_cell(
    root: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    shares: Sequence[float] = (0.4, 0.2, 0.4),
    eval_rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig(),
    eval_batch: int = 32,
    eval_records: int = 0,
    eval_splits: Sequence[str] = EVAL_SPLITS,
) -> dict[str, Any]:
  """Direct and tool SFT (scope tu_sft/), GRPO with the tool (scope
  tu_grpo/), then dev and test answers of every model (module docstring).

  root: the cell directory. base_root: the lifecycle root holding the
  demo's SFT run (None: <sweep root>/base). seed: both SFT runs' and the
  GRPO run's seed (data order, rollout sampling); the question sets do not
  depend on it. shares: the train / dev / test shares of the facts the
  demo's SFT data does not ask about. eval_rollout: the greedy answers'
  shapes (prompt_len, max_new_tokens per turn, max_turns,
  observation_len). eval_batch: questions answered at once. eval_records:
  questions per split (0: all; else that many, from both groups in turn;
  the tiny run's knob). eval_splits: which of dev / test to answer.
  """
  for split in eval_splits:
    checks.choice("tool_use_cell.eval_splits", split, EVAL_SPLITS)
  checks.at_least("tool_use_cell.eval_batch", eval_batch, 1)
  checks.at_least("tool_use_cell.eval_records", eval_records, 0)
  if eval_rollout.max_turns < 2:
    raise ValueError("tool_use_cell.eval_rollout.max_turns must be >= 2 "
                     "(a call, then the answer)")
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              "sft")
  sft_run = lr.stage("sft").root
  world = os.path.dirname(os.path.dirname(lr.world_instructions("train")))
  data_dir = os.path.join(root, DATA_DIR)
  counts = data_lib.build(world, data_dir, shares)
  with open(os.path.join(data_dir, "counts.json"), "w",
            encoding="utf-8") as f:
    json.dump(counts, f, indent=1)
  sft_summaries = {}
  for kind in ("direct", "tool"):
    run_dir = os.path.join(root, kind)
    with gin.config_scope(SFT_SCOPE):
      sft_summaries[kind] = sft(
          run_dir=run_dir, model=model, mesh=mesh, init_from=sft_run,
          train_files=[data_lib.path(data_dir, kind, "train")],
          eval_files=[data_lib.path(data_dir, kind, "dev")],
          template=artifacts.load_template(sft_run).name, seed=seed,
          stage_name=f"sft_{kind}")
  with gin.config_scope(GRPO_SCOPE):
    grpo_summary = grpo(
        run_dir=os.path.join(root, "tool_grpo"),
        sft_run=os.path.join(root, "tool"),
        prompt_files=[data_lib.path(data_dir, "qa", "train")],
        model=model, mesh=mesh, seed=seed, tool="directory",
        tool_world=world)

  jmesh = sharding.make_mesh(mesh)
  directory = tools_lib.Directory.from_world(world)
  subjects = {f["id"]: f["subject"] for f in read_jsonl(
      os.path.join(world, "facts", "facts.jsonl"))}
  # The oracle-call prompts hold the call and the observation too.
  oracle_cfg = dataclasses.replace(eval_rollout, max_turns=1,
                                   prompt_len=eval_rollout.context_len)
  questions = [_head(read_jsonl(data_lib.path(data_dir, "qa", split)),
                     eval_records) for split in eval_splits]
  convs = [_head(read_jsonl(data_lib.path(data_dir, "tool", split)),
                 eval_records) for split in eval_splits]
  # Each model answers every split from one load of its checkpoint.
  by_split: dict[str, list[dict]] = {split: [] for split in eval_splits}
  for name, sub, uses_tool in MODELS:
    run_dir = sft_run if sub is None else os.path.join(root, sub)
    per_split = answer_questions(
        run_dir, model, jmesh, mesh.rules, questions, eval_rollout,
        directory if uses_tool else None, eval_batch)
    for split, records, ros in zip(eval_splits, questions, per_split):
      by_split[split] += _rows(name, split, records, ros, directory,
                               subjects)
  for name, sub in ORACLE_CALL:
    per_split = answer_questions(os.path.join(root, sub), model, jmesh,
                                 mesh.rules, convs, oracle_cfg, None,
                                 eval_batch)
    for split, conv, ros in zip(eval_splits, convs, per_split):
      by_split[split] += _rows(name, split, conv, ros, directory, subjects)
  rows = [r for split in eval_splits for r in by_split[split]]
  write_jsonl(os.path.join(root, ANSWERS), rows)
  result = {"seed": seed, "base": os.path.relpath(lr.root, root),
            "counts": {k: v for k, v in counts.items() if k != "facts"},
            "sft_final_step": {k: v.get("final_step")
                               for k, v in sft_summaries.items()},
            "grpo_final_iteration": grpo_summary.get("final_iteration"),
            "eval": _summary(rows)}
  with open(os.path.join(root, RESULT), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
