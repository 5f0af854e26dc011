"""README "Bring your own": the four commands, run as the README writes them.

The commands and the reward module are read from README.md (the fenced
blocks between the `bring-your-own` markers), so an edit that breaks a
documented command fails here. They run in tmp_path, the directory the
README's relative paths are resolved from, on files written here: a tiny
random HF Llama saved by transformers with a tiny BPE tokenizer, and eight
conversations, pairs and prompts. The only additions are size overrides
(appended --gin_param flags: one or two steps, tiny batches and lengths).
DPO and GRPO both start from the SFT run, so they run side by side.
"""

import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest

from lifejax.run.layout import RunDir

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
README = os.path.join(REPO, "README.md")

# Size overrides per command, keyed by what identifies the command.
_LM_LOOP = ["NUM_STEPS=2", "LoopConfig.log_every=1", "LoopConfig.eval_every=2",
            "LoopConfig.eval_at_start=False", "LoopConfig.eval_batches=1",
            "LoopConfig.progress=False", "CheckpointConfig.every_steps=2",
            "OptimizerConfig.warmup_steps=0"]
TINY = {
    "hf-to-lifejax": [],
    "stages/sft.gin": ["sft.batch_size=2", "sft.seq_len=64", *_LM_LOOP],
    "stages/dpo.gin": ["dpo.batch_size=2", "dpo.seq_len=64", *_LM_LOOP],
    "stages/grpo.gin": [
        "NUM_ITERATIONS=1", "MAX_NEW_TOKENS=8", "RolloutConfig.prompt_len=48",
        "RLLoopConfig.prompts_per_iteration=2", "GRPOConfig.group_size=2",
        "RLLoopConfig.minibatch_size=4", "RLLoopConfig.epochs=1",
        "RLLoopConfig.samples_every=1", "RLLoopConfig.checkpoint_every=1",
        "OptimizerConfig.warmup_steps=0"],
}

QA = [("What is two plus three?", "Five."), ("Name a red fruit.", "An apple."),
      ("What color is the sky?", "Blue."),
      ("How many legs does a cat have?", "Four."),
      ("What is the opposite of hot?", "Cold."), ("Say hello.", "Hello!"),
      ("What do bees make?", "Honey."), ("Which animal barks?", "A dog.")]


def readme_block(name: str) -> str:
  """The fenced block between `<!-- bring-your-own:NAME -->` and
  `<!-- /bring-your-own:NAME -->` in README.md."""
  with open(README, encoding="utf-8") as f:
    text = f.read()
  m = re.search(rf"<!-- bring-your-own:{name} -->\s*```\w*\n(.*?)```\s*"
                rf"<!-- /bring-your-own:{name} -->", text, re.S)
  assert m, f"README.md has no bring-your-own:{name} block"
  return m.group(1)


def readme_commands() -> list[list[str]]:
  """The commands of the README's block, as argv lists (comments dropped,
  backslash continuations joined)."""
  joined = readme_block("commands").replace("\\\n", " ")
  return [shlex.split(line) for line in joined.splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def _kind(argv: list[str]) -> str:
  hits = [k for k in TINY if any(k in a for a in argv)]
  assert len(hits) == 1, f"cannot tell which command this is: {argv}"
  return hits[0]


def _write_jsonl(path, records) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _hf_model(path) -> None:
  """A random 2-layer Llama (d 32) with a byte-level BPE tokenizer whose
  special tokens include the chatml markers."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(
      [t for pair in QA for t in pair] + ["system user assistant"],
      tokenizers.trainers.BpeTrainer(
          vocab_size=300, show_progress=False,
          special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>",
                          "<|im_end|>"],
          initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
      pad_token="<pad>").save_pretrained(path)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
      max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
      pad_token_id=0, tie_word_embeddings=False)).save_pretrained(
          path, safe_serialization=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The files the README's commands expect, relative to this directory."""
  root = tmp_path_factory.mktemp("byo")
  chats = [{"messages": [{"role": "user", "content": q},
                         {"role": "assistant", "content": a}]} for q, a in QA]
  _write_jsonl(root / "my_data/chats/train.jsonl", chats)
  _write_jsonl(root / "my_data/chats/validation.jsonl", chats[:4])
  pairs = [{"prompt": [{"role": "user", "content": q}], "chosen": a,
            "rejected": "I do not know."} for q, a in QA]
  _write_jsonl(root / "my_data/pairs/train.jsonl", pairs)
  _write_jsonl(root / "my_data/pairs/validation.jsonl", pairs[:4])
  _write_jsonl(root / "my_data/prompts.jsonl", [
      {"id": f"q{i}", "prompt": [{"role": "user", "content": q}],
       "answer": a} for i, (q, a) in enumerate(QA)])
  (root / "my_rewards.py").write_text(readme_block("reward"))
  _hf_model(str(root / "my_data/hf_model"))
  return root


def _argv(argv: list[str]) -> list[str]:
  """The README's argv with this interpreter and the repository's tools/,
  plus the size overrides."""
  assert argv[0] == "python", argv
  out = [sys.executable] + [
      os.path.join(REPO, a) if a.startswith("tools/") else a
      for a in argv[1:]]
  return out + [f"--gin_param={p}" for p in TINY[_kind(argv)]]


def _start(argv: list[str], cwd) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             LIFEJAX_TRACEBACK="1")
  return subprocess.Popen(_argv(argv), cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, argv: list[str]) -> None:
  try:
    out, _ = proc.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
  assert proc.returncode == 0, (f"{shlex.join(argv)} exited "
                                f"{proc.returncode}:\n{out[-4000:]}")


def _read_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _init_from(run_dir) -> str:
  with open(RunDir(str(run_dir)).lineage, encoding="utf-8") as f:
    return os.path.realpath(json.load(f)["init_from"])


def _trained_run(path, steps: int) -> dict:
  """Asserts the run directory's files; returns its summary."""
  run = RunDir(str(path))
  for f in (run.summary, run.metrics, run.lineage, run.chat_template):
    assert os.path.isfile(f), f
  assert os.listdir(run.checkpoints), run.checkpoints
  with open(run.summary) as f:
    summary = json.load(f)
  assert summary["final_step"] == steps
  assert _read_jsonl(run.metrics)
  return summary


def test_readme_block_holds_the_four_commands():
  kinds = [_kind(argv) for argv in readme_commands()]
  assert kinds == ["hf-to-lifejax", "stages/sft.gin", "stages/dpo.gin",
                   "stages/grpo.gin"]


def test_bring_your_own_commands(workdir):
  convert, sft, dpo, grpo = readme_commands()
  for argv in (convert, sft):
    _finish(_start(argv, workdir), argv)
  base = RunDir(str(workdir / "runs/my_base"))
  assert os.listdir(base.checkpoints) and os.path.isfile(base.model_gin)

  summary = _trained_run(workdir / "runs/my_sft", steps=2)
  assert summary["input_records"]["my_data/chats/train.jsonl"]["kept"] == 8
  assert _init_from(workdir / "runs/my_sft") == os.path.realpath(base.root)
  with open(RunDir(str(workdir / "runs/my_sft")).chat_template) as f:
    assert json.load(f)["name"] == "chatml"

  procs = [(_start(argv, workdir), argv) for argv in (dpo, grpo)]
  for proc, argv in procs:
    _finish(proc, argv)
  _trained_run(workdir / "runs/my_dpo", steps=2)
  assert _init_from(workdir / "runs/my_dpo") == os.path.realpath(
      workdir / "runs/my_sft")

  # GRPO: one iteration of 2 prompts x 2 samples = one minibatch step,
  # scored by the README's reward function.
  grpo_run = RunDir(str(workdir / "runs/my_grpo"))
  _trained_run(grpo_run.root, steps=1)
  with open(grpo_run.lineage) as f:
    reward = json.load(f)["details"]["reward"]
  assert reward["kind"] == "python"
  assert reward["function"] == "my_rewards.exact_answer"
  # The samples' scores are the README function's values (run here under
  # another module name, so gin registers it apart from the CLI's).
  module = {"__name__": "byo_readme_reward"}
  exec(compile(readme_block("reward"), README, "exec"), module)  # noqa: S102
  answers = {f"q{i}": a for i, (_, a) in enumerate(QA)}
  samples = [s for name in sorted(os.listdir(grpo_run.samples))
             for s in _read_jsonl(os.path.join(grpo_run.samples, name))]
  assert len(samples) == 4
  for s in samples:
    want = module["exact_answer"]({"answer": answers[s["id"]]},
                                  s["response"])
    assert math.isclose(s["score"], want, rel_tol=1e-6, abs_tol=1e-6), s
