"""How far above its SFT model can a policy get under the world's judge?
The ceilings behind issue 17's ">= 60% win rate vs SFT" target.

  python experiments/win_ceiling/ceiling.py ROOT [--samples=8] \
      [--temperature=1.0] [--seed=0] [--out=FILE.md]

Every arm is paired with SFT's own greedy test answers
(ROOT/sft/eval_answers.jsonl: the lifecycle's balanced test prompts) and
judged by the world's judge exactly as the lifecycle judges DPO and PPO
(policy_eval.paired_stats: ties count half, exact sign test, bootstrap CI):

  reference on learnable tasks: the world's reference answer on the
    learnable tasks (world.items.TASK_GROUPS), SFT's answer on the
    copy-dependent ones: the most any policy gains without learning to copy.
  reference everywhere: the ceiling if every task were learned.
  best of N SFT answers: of SFT's greedy answer and N samples from SFT at
    the temperature, the one the judge scores highest: what re-ranking SFT's
    own answers reaches, the in-support ceiling of RL against this judge
    (optimistic: picked by the judge that scores it).

Prints (and with --out writes, plus a .json next to it) one row per arm,
with wins per task.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl
from lifejax.eval import generation, instruct, policy_eval
from lifejax.model import sampling, transformer
from lifejax.run import artifacts
from lifejax.run.layout import LifecycleRoot, RunDir
from lifejax.world import items as items_lib
from lifejax.world import judge as judge_lib


def sft_rows(root: str) -> tuple[list[dict], list[dict]]:
  """(world test records, SFT's eval answer rows), in the rows' order."""
  lr = LifecycleRoot(root)
  rows = read_jsonl(RunDir(lr.stage("sft").root).eval_answers)
  records = {r["id"]: r for r in read_jsonl(lr.world_instructions("test"))}
  missing = [r["id"] for r in rows if r["id"] not in records]
  if missing:
    raise ValueError(f"{root}: SFT's eval answers name {len(missing)} ids "
                     f"that are not test prompts of the world, e.g. "
                     f"{missing[0]!r}")
  return [records[r["id"]] for r in rows], rows


def reference_answer(record: dict) -> str:
  return record["messages"][-1]["content"]


def sft_samples(root: str, records: list[dict], n: int, temperature: float,
                seed: int, spec: instruct.GenerationSpec) -> list[list[str]]:
  """n sampled SFT answers per record (list per record)."""
  run = LifecycleRoot(root).stage("sft").root
  cfg = artifacts.load_model_config(run)
  mesh_cfg = sharding.MeshConfig()
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, params = artifacts.load_params(run, transformer.Transformer, cfg,
                                           mesh, mesh_cfg.rules)
  params = jax.device_get(params)
  tok = artifacts.load_tokenizer(run)
  template = artifacts.load_template(run)
  greedy = generation.chat_config(template, tok, spec.max_new_tokens)
  scfg = dataclasses.replace(greedy, temperature=temperature)
  key = jax.random.key(seed)
  calls = iter(range(1 << 30))

  def draw(ids, mask):
    return sampling.generate(graphdef, params, ids, mask, scfg,
                             jax.random.fold_in(key, next(calls)))

  out = [[] for _ in records]
  for _ in range(n):
    for i, a in enumerate(generation.generate_responses(draw, tok, template,
                                                        records, spec)):
      out[i].append(a)
  return out


def arm_row(name: str, records: list[dict], answers: list[str],
            sft_answers: list[str]) -> dict[str, Any]:
  scores = [judge_lib.score(r, a).total for r, a in zip(records, answers)]
  ref = [judge_lib.score(r, a).total for r, a in zip(records, sft_answers)]
  row = {"arm": name, **policy_eval.paired_stats(scores, ref),
         "judge": float(np.mean(scores)), "sft_judge": float(np.mean(ref))}
  per = collections.defaultdict(lambda: [0, 0, 0])
  for r, s, s0 in zip(records, scores, ref):
    per[r["task"]][0 if s > s0 + 1e-9 else (2 if s < s0 - 1e-9 else 1)] += 1
  row["by_task"] = dict(sorted(per.items()))
  return row


def ceilings(root: str, samples: int, temperature: float, seed: int,
             spec: instruct.GenerationSpec) -> list[dict[str, Any]]:
  records, rows = sft_rows(root)
  sft = [r["answer"] for r in rows]
  learnable = set(items_lib.TASK_GROUPS["learnable"])
  arms = [arm_row("reference on learnable tasks", records,
                  [reference_answer(r) if r["task"] in learnable else a
                   for r, a in zip(records, sft)], sft),
          arm_row("reference everywhere", records,
                  [reference_answer(r) for r in records], sft)]
  if samples:
    drawn = sft_samples(root, records, samples, temperature, seed, spec)
    best = [max([a] + d, key=lambda x, r=r: judge_lib.score(r, x).total)
            for r, a, d in zip(records, sft, drawn)]
    arms.append(arm_row(f"best of {samples} SFT samples (T {temperature:g}) "
                        "and greedy, by the judge", records, best, sft))
  return arms


def table(arms: list[dict[str, Any]], root: str) -> str:
  tasks = list(arms[0]["by_task"])
  lines = ["| arm | win rate vs SFT [95% CI] | wins / ties / losses | "
           "sign p | judge (SFT) | " + " | ".join(
               f"{t} W/T/L" for t in tasks) + " |",
           "|---" * (5 + len(tasks)) + "|"]
  for a in arms:
    lines.append(
        f"| {a['arm']} | {100 * a['win_rate_vs_ref']:.1f}% "
        f"[{100 * a['win_rate_ci_lo']:.1f}, {100 * a['win_rate_ci_hi']:.1f}]"
        f" | {a['wins']:.0f} / {a['ties']:.0f} / {a['losses']:.0f} | "
        f"{a['sign_test_p']:.2g} | {a['judge']:.3f} ({a['sft_judge']:.3f}) | "
        + " | ".join("/".join(map(str, a["by_task"].get(t, [0, 0, 0])))
                     for t in tasks) + " |")
  n = int(arms[0]["wins"] + arms[0]["ties"] + arms[0]["losses"])
  return (f"Root `{os.path.basename(os.path.normpath(root))}`, {n} test "
          "prompts, paired with SFT's greedy answers.\n\n"
          + "\n".join(lines) + "\n")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("root")
  ap.add_argument("--samples", type=int, default=8,
                  help="SFT samples per prompt for best-of-N (0: skip)")
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--prompt_len", type=int, default=256)
  ap.add_argument("--max_new_tokens", type=int, default=64)
  ap.add_argument("--batch_size", type=int, default=24)
  ap.add_argument("--out")
  args = ap.parse_args()
  spec = instruct.GenerationSpec(args.prompt_len, args.max_new_tokens,
                                 args.batch_size)
  arms = ceilings(args.root, args.samples, args.temperature, args.seed, spec)
  text = table(arms, args.root)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w",
              encoding="utf-8") as f:
      json.dump(arms, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
