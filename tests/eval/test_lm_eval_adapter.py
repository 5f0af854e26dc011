"""lifejax.eval.lm_eval_adapter against a brute-force reference.

One tiny run is built once: a SentencePiece tokenizer trained here, random
params exported as an RL run's policy/ (so the adapter's run resolution is
exercised), a model whose vocab is larger than the tokenizer's. The
reference scores each token with its own forward over exactly the context
that token is conditioned on (one row per token; the row is filled past the
context with random tokens, which causal attention never reads), so it
shares no padding, bucketing, batching or windowing code with the adapter.
It runs through one jitted (64, 40) forward, and the adapter's buckets are
(16, 32): a handful of compilations in all.

Tolerance: 1e-4 absolute on sums of up to ~80 f32 log-probabilities (the
adapter's padded, batched forward and the reference's reduce in different
orders; the observed gap is ~1e-6).
"""

import json
import os
import random

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

lm_eval = pytest.importorskip("lm_eval")

# pylint: disable=g-import-not-at-top,wrong-import-position
from lm_eval.api.instance import Instance  # noqa: E402

from lifejax.data import hf_tokenizer_export  # noqa: E402
from lifejax.data import tokenizer as tokenizer_lib  # noqa: E402
from lifejax.eval import card, lm_eval_adapter  # noqa: E402
from lifejax.model import hf_export, transformer  # noqa: E402
from lifejax.model.config import TransformerConfig  # noqa: E402
from lifejax.run import artifacts  # noqa: E402
from lifejax.run.layout import LifecycleRoot, RunDir  # noqa: E402
from lifejax.run.lineage import (Lineage, TokenizerRef,  # noqa: E402
                                  write_lineage)
from lifejax.stages.lifecycle import lifecycle  # noqa: E402

WORDS = ("the cat dog sat on a mat red blue house river ran over hill big "
         "small green fox jumps lazy bird sings song morning evening").split()
MAX_LEN = 32
CFG = TransformerConfig(vocab_size=320, d_model=32, num_layers=1,
                        num_heads=4, num_kv_heads=2, mlp_dim=64,
                        max_seq_len=MAX_LEN)
REF_ROWS, REF_LEN = 64, 40
TOL = 1e-4


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
  return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


class Reference:
  """log p(target | context) from one forward per (context, target)."""

  def __init__(self, graphdef, params, vocab_limit: int):
    self.params, self.vocab_limit = params, vocab_limit
    self.fwd = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids))
    self.fill = np.random.default_rng(0)

  def next_logits(self, contexts):
    """(N, V) float64 logits after each context (len <= REF_LEN)."""
    out = []
    for s in range(0, len(contexts), REF_ROWS):
      chunk = contexts[s:s + REF_ROWS]
      ids = self.fill.integers(0, self.vocab_limit, (REF_ROWS, REF_LEN),
                               dtype=np.int32)
      for r, c in enumerate(chunk):
        ids[r, :len(c)] = c
      logits = np.asarray(self.fwd(self.params, ids), np.float64)
      out += [logits[r, len(c) - 1] for r, c in enumerate(chunk)]
    return np.stack(out)

  def score(self, contexts, targets):
    """(sum of log p(target_i | context_i), all targets greedy)."""
    logits = self.next_logits(contexts)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    lp = sum(logp[i, t] for i, t in enumerate(targets))
    greedy = all(int(np.argmax(logits[i, :self.vocab_limit])) == t
                 for i, t in enumerate(targets))
    return float(lp), greedy

  def loglikelihood(self, ctx, cont, max_len: int = MAX_LEN):
    """The adapter's contract: the row (ctx + cont) keeps its last
    max_len + 1 tokens; token j of the row is predicted from row[:j]."""
    row = (list(ctx) + list(cont))[-(max_len + 1):]
    first = len(row) - len(cont)
    return self.score([row[:j] for j in range(first, len(row))],
                      row[first:])

  def rolling(self, prefix: int, toks, max_len: int = MAX_LEN) -> float:
    """lm-eval's documented windows (LM.loglikelihood_rolling): tokens
    0..L-1 are predicted from the prefix and what precedes them; after
    that windows of L predictions, the one ending at b (exclusive) reading
    the L tokens before b - 1 (so the last one gets a full context)."""
    n, contexts = len(toks), []
    if not n:
      return 0.0
    for j in range(n):
      if j < max_len:
        contexts.append([prefix] + list(toks[:j]))
      else:
        b = min(max_len * ((j - max_len) // max_len + 2), n)
        contexts.append(list(toks[b - max_len - 1:j]))
    return self.score(contexts, list(toks))[0]

  def greedy(self, prompt, steps: int, eos: int):
    """Greedy ids after `prompt`, one full forward per step."""
    out = []
    for _ in range(steps):
      logits = self.next_logits([list(prompt) + out])[0]
      t = int(np.argmax(logits[:self.vocab_limit]))
      out.append(t)
      if t == eos:
        break
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(rl run dir, tokenizer, adapter, reference)."""
  base = tmp_path_factory.mktemp("lm_eval_adapter")
  rng = random.Random(0)
  tok = tokenizer_lib.train_sentencepiece(
      [_sentence(rng, 5, 15) + "." for _ in range(300)],
      str(base / "tok"), vocab_size=300)
  assert tok.vocab_size < CFG.vocab_size  # untrained rows exist
  rl_run = str(base / "ppo")
  policy = RunDir(rl_run).policy.root
  # Random normal params from the abstract shapes (building the model
  # eagerly costs seconds that the test does not need).
  _, abstract = nnx.split(transformer.abstract_model(CFG), nnx.Param)
  gen = np.random.default_rng(0)
  params = jax.tree.map(
      lambda a: (0.3 * gen.standard_normal(a.shape)).astype(a.dtype),
      nnx.to_pure_dict(abstract))
  artifacts.export_params(policy, params, step=3)
  write_lineage(policy, Lineage(
      stage="ppo_policy", model_kind="policy", model=CFG,
      tokenizer=TokenizerRef(tok.model_path, tok.vocab_size)))
  lm = lm_eval_adapter.LifejaxLM(rl_run, batch_size=4, buckets=(16,),
                                 max_gen_toks=8)
  ref = Reference(lm.graphdef, params, tok.vocab_size)
  return rl_run, tok, lm, ref


def _requests(kind, args):
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_run_resolution_and_tokenization(tiny):
  rl_run, tok, lm, _ = tiny
  assert lm_eval.api.registry.get_model("lifejax") is (
      lm_eval_adapter.LifejaxLM)
  assert lm.path == RunDir(rl_run).policy.root  # the RL run's policy
  assert lm.buckets == (16, 32) and lm.prefix_id == tok.bos_id == 3
  bos = [tok.bos_id]
  # A clean word boundary: whole-and-split equals separate encodings.
  assert lm.encode_pair("the cat", " sat") == (
      bos + tok.encode("the cat"), tok.encode(" sat"))
  # The context's trailing space moves to the continuation.
  assert lm.encode_pair("the cat ", "sat") == lm.encode_pair("the cat",
                                                              " sat")
  # A piece across the cut ("▁cat"): the continuation is encoded alone.
  assert tok.encode(" cat") == [tok.token_to_id("▁cat")]
  ctx, cont = lm.encode_pair("the c", "at")
  assert ctx == bos + tok.encode("the c")
  assert cont == tok.encode("at") and tok.decode(cont) == "at"
  # An empty context is the prefix token alone.
  assert lm.encode_pair("", "the cat") == (bos, tok.encode("the cat"))


def test_loglikelihood_equals_per_token_reference(tiny):
  _, tok, lm, ref = tiny
  rng = random.Random(1)
  args = [(_sentence(rng, 1, 6), " " + _sentence(rng, 1, 3))
          for _ in range(6)]
  args += [("", "the cat sat"), ("the c", "at"), ("a dog", "")]
  # Over max_length: the context loses its start.
  args.append((_sentence(rng, 20, 20), " red fox"))
  compiled = lm_eval_adapter._target_logprobs._cache_size()
  got = lm.loglikelihood(_requests("loglikelihood", args))
  assert lm_eval_adapter._target_logprobs._cache_size() - compiled <= 2
  assert len(lm.encode_pair(*args[-1])[0]) > MAX_LEN
  # is_greedy both ways: the reference's greedy continuation, then the same
  # with its last token changed.
  ctx = [tok.bos_id] + tok.encode("the big dog")
  best = ref.greedy(ctx, 4, tok.eos_id)
  other = best[:-1] + [(best[-1] + 1) % tok.vocab_size]
  (lp_best, g_best), (lp_other, g_other) = lm.score_tokens(
      [(ctx, best), (ctx, other)])
  assert g_best and not g_other and lp_best > lp_other
  diffs = []
  for (c, x), (lp, greedy) in zip(args, got):
    ctx, cont = lm.encode_pair(c, x)
    want_lp, want_greedy = ref.loglikelihood(ctx, cont) if cont else (0, True)
    diffs.append(abs(lp - want_lp))
    assert greedy == want_greedy, (c, x)
  print(f"loglikelihood max abs diff {max(diffs):.2e}")
  assert max(diffs) < TOL
  assert any(lp < -5 for lp, _ in got)  # nonzero scores were compared


def test_loglikelihood_rolling_equals_windowed_reference(tiny):
  _, tok, lm, ref = tiny
  rng = random.Random(2)
  docs = [_sentence(rng, 2, 4), _sentence(rng, 14, 14),
          _sentence(rng, 30, 30), ""]
  lengths = [len(tok.encode(d)) for d in docs]
  assert lengths[0] < MAX_LEN < lengths[1] < 2 * MAX_LEN < lengths[2]
  got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling",
                                           [(d,) for d in docs]))
  want = [ref.rolling(tok.bos_id, tok.encode(d)) for d in docs]
  diffs = [abs(a - b) for a, b in zip(got, want)]
  print(f"loglikelihood_rolling max abs diff {max(diffs):.2e}")
  assert max(diffs) < TOL and got[-1] == 0.0
  # A document's windows cover each token once: shorter max_length,
  # different conditioning, different total.
  assert abs(ref.rolling(tok.bos_id, tok.encode(docs[2]), 16) - want[2]) > 1


def test_generate_until_equals_greedy_reference(tiny):
  _, tok, lm, ref = tiny
  prompts = ["the cat sat on", "a big red fox", "blue river"]
  texts = []
  for p in prompts:
    ids = ref.greedy([tok.bos_id] + tok.encode(p), 8, tok.eos_id)
    texts.append(tok.decode([i for i in ids if i != tok.eos_id]))
  assert all(len(t) >= 4 for t in texts), texts
  # A 2-character stop string whose first occurrence is mid-text.
  firsts = [k for k in range(1, len(texts[0]) - 1)
            if texts[0].find(texts[0][k:k + 2]) == k]
  cut = firsts[len(firsts) // 2]
  stop = texts[0][cut:cut + 2]
  args = [(prompts[0], {"until": [stop], "max_gen_toks": 8}),
          (prompts[1], {"until": ["\x00never"], "max_gen_toks": 8}),
          (prompts[2], {"until": "\x00never", "do_sample": False,
                        "temperature": 0.0})]
  got = lm.generate_until(_requests("generate_until", args))
  assert got == [texts[0][:cut], texts[1], texts[2]]
  with pytest.raises(ValueError, match="do_sample"):
    lm.generate_until(_requests("generate_until",
                                [("a", {"do_sample": True})]))
  with pytest.raises(ValueError, match="num_beams"):
    lm.generate_until(_requests("generate_until", [("a", {"num_beams": 2})]))


def _mc_task(tmp_path, docs) -> str:
  data = tmp_path / "tiny_mc.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in docs))
  task = {"task": "tiny_mc", "dataset_path": "json",
          "dataset_kwargs": {"data_files": {"test": str(data)},
                             "cache_dir": str(tmp_path / "hf_cache")},
          "test_split": "test", "output_type": "multiple_choice",
          "doc_to_text": "Question: {{question}}\nAnswer:",
          "doc_to_choice": "choices", "doc_to_target": "label",
          "metric_list": [{"metric": "acc", "aggregation": "mean",
                           "higher_is_better": True}]}
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  (tasks / "tiny_mc.yaml").write_text(yaml.safe_dump(task))
  return str(tasks)


def test_local_task_accuracy_equals_direct_computation(tiny, tmp_path,
                                                      monkeypatch):
  rl_run, tok, lm, ref = tiny
  # simple_evaluate's environment report imports torch and runs
  # torch.utils.collect_env (seconds, nothing this test reads).
  import lm_eval.evaluator
  monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda _: None)
  rng = random.Random(3)
  docs = [{"question": _sentence(rng, 2, 5),
           "choices": rng.sample(WORDS, 3)} for _ in range(6)]
  # Labels from the reference: half the docs right, half wrong, so an
  # accuracy of exactly 0.5 needs every document scored correctly.
  want = []
  for i, d in enumerate(docs):
    context = f"Question: {d['question']}\nAnswer:"
    lls = []
    for choice in d["choices"]:
      cont = tok.encode(" " + choice)
      assert tok.encode(context) + cont == tok.encode(
          context + " " + choice)
      lls.append(ref.loglikelihood([tok.bos_id] + tok.encode(context),
                                   cont)[0])
    assert len(set(np.round(lls, 3))) == 3  # no near ties
    want.append(lls)
    d["label"] = int(np.argmax(lls) if i % 2 else np.argmin(lls))
  results = lm_eval_adapter.evaluate_tasks(
      rl_run, ["tiny_mc"], _mc_task(tmp_path, docs), batch_size=4,
      buckets=(16,), log_samples=True)
  assert results["results"]["tiny_mc"]["acc,none"] == 0.5
  samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
  got = [[r[0][0] for r in s["resps"]] for s in samples]
  mc_diff = np.abs(np.array(got) - np.array(want)).max()
  print(f"multiple-choice loglikelihood max abs diff {mc_diff:.2e}")
  assert mc_diff < TOL
  assert lm_eval_adapter.flat_metrics(results)["lm_eval/tiny_mc/acc"] == 0.5
  # The lifecycle option refuses, before any work, what cannot run.
  with pytest.raises(ValueError, match="not defined"):
    lifecycle(root=str(tmp_path / "lc"), model=CFG,
              lm_eval_tasks=["hellaswag"],
              lm_eval_include_path=str(tmp_path / "tasks"))
  with pytest.raises(ValueError, match="go together"):
    lifecycle(root=str(tmp_path / "lc"), model=CFG, lm_eval_tasks=["x"])
  assert not os.path.exists(tmp_path / "lc")


def test_hf_directory_scores_like_the_run(tiny, tmp_path):
  rl_run, tok, lm, _ = tiny
  hf_dir = str(tmp_path / "hf")
  hf_export.save_hf_checkpoint(hf_dir, CFG, jax.device_get(lm.params))
  hf_tokenizer_export.save_hf_tokenizer(hf_dir, tok)
  hf = lm_eval_adapter.LifejaxLM(hf_dir, model=CFG, batch_size=4,
                                 buckets=(16,))
  assert type(hf.tok).__name__ == "HFTokenizer"
  args = [("the cat", " sat on"), ("", "blue river")]
  a = lm.loglikelihood(_requests("loglikelihood", args))
  b = hf.loglikelihood(_requests("loglikelihood", args))
  hf_diff = max(abs(x - y) for (x, _), (y, _) in zip(a, b))
  print(f"HF directory vs run max abs diff {hf_diff:.2e}")
  assert hf_diff < TOL


def test_model_card_lm_eval_section(tmp_path):
  root = LifecycleRoot(str(tmp_path / "root"))
  sft, release = root.stage("sft"), root.stage("release")
  for rd in (sft, release):
    os.makedirs(rd.root)
  with open(root.ledger, "w") as f:
    json.dump({"stages": [
        {"name": "sft", "kind": "sft", "run_dir": "sft"},
        {"name": "release", "kind": "release", "run_dir": "release"}]}, f)
  with open(release.stage_file, "w") as f:
    json.dump({"stage": "release", "candidate": "sft"}, f)
  _, plain = card.build_card(root.root, "sft")
  assert "lm_eval" not in plain  # no lm-eval metrics: the card is unchanged
  with open(release.eval, "w") as f:
    json.dump({"candidate": "sft", "golden_pass_rate": 0.5,
               "lm_eval/tiny_mc/acc": 0.5,
               "lm_eval/tiny_mc/acc_norm": 0.25,
               "lm_eval/other/exact_match/strict": 1.0}, f)
  _, c = card.build_card(root.root, "sft")
  assert c["lm_eval"]["tasks"] == {
      "tiny_mc": {"acc": 0.5, "acc_norm": 0.25},
      "other": {"exact_match/strict": 1.0}}
  assert c["lm_eval"]["eval"]["path"] == os.path.relpath(release.eval,
                                                         sft.root)
  assert list(c).index("lm_eval") == list(c).index("eval_report") + 1
  with open(release.stage_file, "w") as f:
    json.dump({"stage": "release", "candidate": "dpo"}, f)
  assert "lm_eval" not in card.build_card(root.root, "sft")[1]
