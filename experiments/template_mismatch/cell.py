"""One cell of the template-mismatch experiment: the demo's SFT model served
its test prompts through one prompt variant, checked and judged.

`template_mismatch_cell` (the gin entry, `run.stage = @template_mismatch_cell`):
  1. makes sure the tuned model exists: a lifecycle root run with
     `lifecycle.until='sft'` (the demo's pretraining + SFT; shared by every
     cell, built once under a file lock by the first cell that needs it);
  2. renders each test prompt with `variant` (`VARIANTS`): the template the
     model was trained with, another template, or the trained template with
     one of the field's template bugs;
  3. runs the parity checker on those exact token ids, both as a library
     call (`chat_parity.check_parity`) and as the CLI
     (`tools/check_template.py --run_dir=<sft> --prompts=...`);
  4. generates an answer to every prompt and scores it with the world's
     judge: greedy in the cell of seed `greedy_seed` (greedy is
     deterministic: once per variant) and sampled at `temperature` with the
     cell's seed in every cell.

Only the prompt differs between variants: the model, its params and the
decoding (including the stop ids, the trained template's end of turn and
EOS) are the same, so a difference in the answers is the prompt's doing.
Everything lands in `<root>/template_eval.json` (`RESULT`) and
`<root>/answers_<decode>.jsonl`.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from lifejax import checks, sharding, sweep
from lifejax.data import chat, chat_parity, chat_render, prompts
from lifejax.data.jsonl import read_jsonl, write_jsonl
from lifejax.eval import generation, instruct
from lifejax.model import sampling, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.world import judge as judge_lib

RESULT = "template_eval.json"
PROMPTS = "prompts.jsonl"
CHECK_OUTPUT = "check_template.txt"
# variant -> what is wrong with the prompt (None: nothing)
VARIANTS: dict[str, str | None] = {
    "own": None,
    "plain": "a different template: System:/User:/Assistant: text markers",
    "chatml": "a different template: ChatML's <|im_start|>/<|im_end|> as text",
    "no_assistant_marker": "the trained template without the final "
                           "assistant-start marker (the generation prompt)",
    "double_bos": "the trained template with BOS written twice",
    "system_in_user": "the trained template with the system prompt pasted "
                      "into the user turn",
    "trailing_newline": "the trained template with a newline after the "
                        "assistant-start marker",
}
_CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "check_template.py")


# The shared base (lifejax.sweep): <sweep root>/base unless bound.
default_base_root = sweep.default_base_root
ensure_base = sweep.ensure_lifecycle


def _marker_ids(tokenizer: Any, text: str) -> list[int]:
  """A template string as ids: its special id if it is one, else text."""
  special = tokenizer.special_ids
  return [special[text]] if text in special else tokenizer.encode(text)


def render(variant: str, template: chat.ChatTemplate, tokenizer: Any,
           record: Mapping[str, Any]) -> list[int]:
  """The prompt ids of `record` as `variant` writes them (see VARIANTS);
  `template` is the one the model was trained with."""
  checks.choice("template_mismatch_cell.variant", variant, tuple(VARIANTS))
  msgs = prompts.prompt_messages(record)
  if variant in ("plain", "chatml"):
    return chat_render.render_prompt(chat.get_template(variant), tokenizer,
                                     msgs)
  if variant == "system_in_user":
    if msgs[0]["role"] != "system" or msgs[1]["role"] != "user":
      raise ValueError(f"record {record.get('id')!r}: system_in_user needs "
                       "a system turn followed by a user turn")
    msgs = [{"role": "user", "content": msgs[0]["content"] + "\n\n"
             + msgs[1]["content"]}] + msgs[2:]
  ids = chat_render.render_prompt(template, tokenizer, msgs)
  if variant == "no_assistant_marker":
    gp = _marker_ids(tokenizer, template.generation_prompt)
    if ids[-len(gp):] != gp:
      raise ValueError(f"template {template.name!r}: the prompt does not end "
                       "with the generation prompt's ids")
    return ids[:-len(gp)]
  if variant == "double_bos":
    if not template.bos:
      raise ValueError(f"template {template.name!r} writes no BOS to double")
    return _marker_ids(tokenizer, template.bos) + ids
  if variant == "trailing_newline":
    return ids + tokenizer.encode("\n")
  return ids


def run_cli(sft_run: str, prompts_path: str,
            system_prompts: Sequence[str]) -> tuple[int, str]:
  """tools/check_template.py on a prompts file: (exit status, output)."""
  spec = importlib.util.spec_from_file_location("check_template", _CLI)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  out = io.StringIO()
  argv = [f"--run_dir={sft_run}", f"--prompts={prompts_path}"] + [
      f"--system_prompt={s}" for s in system_prompts]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    code = mod.main(argv)
  return code, out.getvalue()


def score_rows(records: Sequence[Mapping[str, Any]],
               answers: Sequence[str], stopped: Sequence[bool]
               ) -> list[dict[str, Any]]:
  rows = []
  for rec, ans, stop in zip(records, answers, stopped, strict=True):
    s = judge_lib.score(rec, ans)
    rows.append({"id": rec.get("id"), "task": rec["task"], "answer": ans,
                 "judge": s.total,
                 "correct": float(s.components["correctness"] >= 0.999
                                  and s.components["safety"] == 1.0),
                 "format": float(s.components["format"] >= 0.999),
                 "stopped": float(stop)})
  return rows


@gin.configurable
def template_mismatch_cell(
    root: str = gin.REQUIRED,
    variant: str = gin.REQUIRED,
    model: TransformerConfig = gin.REQUIRED,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    seed: int = 0,
    base_root: str | None = None,
    test_records: int = 0,
    generation_spec: instruct.GenerationSpec = instruct.GenerationSpec(),
    greedy_seed: int = 0,
    temperature: float = 0.7,
) -> dict[str, Any]:
  """The demo's SFT model on the test prompts rendered by `variant`;
  returns (and writes) `<root>/template_eval.json`.

  base_root: the lifecycle root holding the SFT run (None: <sweep
  root>/base). test_records: how many test prompts (0: all).
  temperature: of the sampled answers (> 0); the cell of seed
  `greedy_seed` adds greedy answers.
  """
  checks.choice("template_mismatch_cell.variant", variant, tuple(VARIANTS))
  checks.at_least("template_mismatch_cell.test_records", test_records, 0)
  if not temperature > 0:
    raise ValueError(f"template_mismatch_cell.temperature={temperature}: "
                     "must be > 0 (greedy answers come from greedy_seed)")
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  lr = ensure_base(base_root or default_base_root(root), "sft")
  sft_run = lr.stage("sft").root
  tokenizer = artifacts.load_tokenizer(sft_run)
  trained = artifacts.load_template(sft_run)
  tests = read_jsonl(lr.world_instructions("test"))
  tests = tests[:test_records] if test_records else tests
  rows = [render(variant, trained, tokenizer, r) for r in tests]
  too_long = sum(len(r) > generation_spec.prompt_len for r in rows)
  if too_long:
    raise ValueError(f"{too_long} {variant} prompts are longer than "
                     f"GenerationSpec.prompt_len={generation_spec.prompt_len}"
                     " (left-truncation would cut the very markers compared "
                     "here); raise it")
  # The parity check, on exactly the ids the model is given.
  system_prompts = sorted({m["content"] for r in read_jsonl(
      lr.world_instructions("train")) for m in r["messages"]
                           if m["role"] == "system"})
  findings = chat_parity.check_parity(trained, tokenizer, rows,
                                      system_prompts=system_prompts)
  prompts_path = write_jsonl(os.path.join(root, PROMPTS),
                             [{"ids": r} for r in rows])
  code, text = run_cli(sft_run, prompts_path, system_prompts)
  with open(os.path.join(root, CHECK_OUTPUT), "w", encoding="utf-8") as f:
    f.write(text)
  flagged = {f.index for f in findings}
  result: dict[str, Any] = {
      "variant": variant, "bug": VARIANTS[variant], "seed": seed,
      "base": os.path.relpath(lr.root, root), "test_records": len(tests),
      "max_new_tokens": generation_spec.max_new_tokens,
      "prompt_tokens_mean": float(np.mean([len(r) for r in rows])),
      "findings": dict(collections.Counter(f.kind for f in findings)),
      "prompts_flagged": len(flagged), "cli_exit": code, "decodes": {}}
  # The answers: same model, same decoding, same stops for every variant.
  graphdef, params = artifacts.load_params(
      sft_run, transformer.Transformer, model, sharding.make_mesh(mesh),
      mesh.rules)
  host = sharding.fetch(params)
  stops = chat_render.stop_ids(trained, tokenizer)
  ids, mask = prompts.left_pad(rows, generation_spec.prompt_len,
                               tokenizer.pad_id)
  decodes = {f"sampled_t{temperature:g}": temperature}
  if seed == greedy_seed:
    decodes = {"greedy": 0.0, **decodes}
  for name, temp in decodes.items():
    cfg = sampling.SamplingConfig(
        max_new_tokens=generation_spec.max_new_tokens, temperature=temp,
        stop_ids=tuple(stops), pad_id=tokenizer.pad_id,
        vocab_limit=tokenizer.vocab_size)
    sample = generation.make_sampler(generation.default_sample_fn(),
                                     graphdef, host, cfg,
                                     generation_spec.batch_size)
    toks, lengths = sample(ids, mask, jax.random.PRNGKey(seed))
    answers, stopped = [], []
    for i in range(len(tests)):
      out = [int(t) for t in toks[i, :lengths[i]]]
      stopped.append(bool(out) and out[-1] in stops)
      answers.append(tokenizer.decode([t for t in out if t not in stops]))
    per_prompt = score_rows(tests, answers, stopped)
    write_jsonl(os.path.join(root, f"answers_{name}.jsonl"), per_prompt)
    metrics = instruct.judge_responses(tests, answers)
    metrics["stop_rate"] = float(np.mean(stopped))
    metrics["answer_words"] = float(np.mean([len(a.split())
                                             for a in answers]))
    result["decodes"][name] = metrics
  with open(os.path.join(root, RESULT), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
