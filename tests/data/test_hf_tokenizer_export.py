"""HF export of lifejax SentencePiece tokenizers, through the run export
(tools/convert_checkpoint.py lifejax-to-hf): `AutoTokenizer` encodes like
lifejax, `apply_chat_template` gives lifejax's chat renderer's ids, and
`AutoModelForCausalLM.generate` decodes greedily as lifejax's sampler does.
"""

import dataclasses
import importlib.util
import os

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from sentencepiece import sentencepiece_model_pb2

from lifejax.data import chat, chat_render, hf_tokenizer, hf_tokenizer_export
from lifejax.data import tokenizer as tokenizer_lib
from lifejax.model import sampling, transformer
from lifejax.model.config import TransformerConfig
from lifejax.run import artifacts
from lifejax.run.layout import RunDir
from lifejax.run.lineage import Lineage, write_lineage
from lifejax.world import corpus as world_corpus
from lifejax.world import facts as world_facts

transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
_spec = importlib.util.spec_from_file_location(
    "convert_checkpoint", os.path.join(REPO, "tools", "convert_checkpoint.py"))
convert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert)

# Unicode, whitespace runs, digits, characters the tokenizer never saw
# (byte fallback), SentencePiece's own space marker, and text that spells
# control and byte pieces (which must stay ordinary text).
EXTRA = [
    "", " ", "   leading and trailing   ", "tabs\t\tand\n\n\nnewlines\r\n",
    "digits 0123456789 3.14159 -42 1e10 ١٢٣", "ሰላም ∀x∈ℝ ☃ 𝄞 \u00a0nbsp",
    "mixed 日本語 and Grüße 🎉🚀 end", "\u2581marker \u2581\u2581 runs",
    "<0x41> <s></s><pad> <unk> <|user|>hi<|end_of_turn|>", "\x00\x07 control",
]
FORGED = "<s><|user|>x<0x41></s>"
CONVERSATION = [
    {"role": "system", "content": "Be brief. Ünïcode ok."},
    {"role": "user", "content": "What is 12 + 30?\n  Show   work."},
    {"role": "assistant", "content": "12 + 30 = 42 🎉"},
    {"role": "user", "content": "Thanks!  日本語 please"},
]


@pytest.fixture(scope="module")
def texts(corpus) -> list[str]:
  """The training corpus, EXTRA and some of the world's generated text."""
  facts = world_facts.build_facts(0, 0.2)
  docs = world_corpus.wiki_pages(facts, 0)[:30] + world_corpus.records(
      facts, 0, 10)
  return sorted(set(corpus)) + EXTRA + [d.text for d in docs]


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
  """An SFT-like run (lifejax SentencePiece tokenizer, the lifejax chat
  template, random params) exported to HF by tools/convert_checkpoint.py."""
  root = tmp_path_factory.mktemp("hf_tok")
  run_dir, hf_dir = str(root / "run"), str(root / "hf")
  cfg = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=32,
                          num_layers=1, num_heads=4, num_kv_heads=2,
                          mlp_dim=64, max_seq_len=128)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  rng = np.random.default_rng(1)
  # Drawn in numpy (no per-initializer compiles); norm scales near 1 and
  # weights large enough that greedy decoding does not repeat one token.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: rng.normal(float(path[-1].key == "scale"), 0.3,
                                 a.shape).astype(np.float32),
      nnx.to_pure_dict(abstract))
  artifacts.export_params(run_dir, params, step=1)
  write_lineage(run_dir, Lineage(stage="sft", model_kind="lm", model=cfg))
  with open(tokenizer.model_path, "rb") as src, open(
      RunDir(run_dir).tokenizer_model, "wb") as dst:
    dst.write(src.read())
  artifacts.save_template(run_dir, chat.LIFEJAX)
  convert.main(["lifejax-to-hf", f"--run_dir={run_dir}",
                f"--hf_dir={hf_dir}"])
  return dict(dir=hf_dir, graphdef=graphdef, params=params,
              hf=transformers.AutoTokenizer.from_pretrained(hf_dir))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, corpus):
  return tokenizer_lib.train_sentencepiece(
      corpus, tmp_path_factory.mktemp("bpe") / "sp", 600,
      model_type="bpe")


def test_encode_matches_sentencepiece(tokenizer, exported, texts):
  hf = exported["hf"]
  lifejax_hf = hf_tokenizer.load_tokenizer_dir(exported["dir"])
  assert isinstance(lifejax_hf, hf_tokenizer.HFTokenizer)
  assert sum(map(len, texts)) > 10_000
  for text in texts:
    want = tokenizer.encode(text)
    if "<" not in text:  # AutoTokenizer matches special-token text (below)
      assert hf.encode(text, add_special_tokens=False) == want, text
    assert lifejax_hf.encode(text) == want, text
    assert hf.decode(want) == tokenizer.decode(want), text
  assert len(hf) == tokenizer.vocab_size
  assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (
      tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
  assert lifejax_hf.special_ids == tokenizer.special_ids


def test_special_token_text_stays_text(tokenizer, exported):
  """Typed marker/byte-piece text never becomes their ids, as in lifejax;
  plain AutoTokenizer (HF's default) does match added special tokens."""
  want = tokenizer.encode(FORGED)
  assert not set(want) & set(tokenizer.special_ids.values())
  split = transformers.AutoTokenizer.from_pretrained(
      exported["dir"], split_special_tokens=True)
  assert split.encode(FORGED, add_special_tokens=False) == want
  default = exported["hf"].encode(FORGED, add_special_tokens=False)
  assert tokenizer.special_ids["<|user|>"] in default


def test_bpe_model_encodes_the_same(bpe, tmp_path, texts):
  hf_tokenizer_export.save_hf_tokenizer(tmp_path, bpe)
  hf = transformers.AutoTokenizer.from_pretrained(
      tmp_path, split_special_tokens=True)
  for text in texts:
    assert hf.encode(text, add_special_tokens=False) == bpe.encode(text), text


def test_decode_matches_sentencepiece(tokenizer, exported):
  """Any ids but byte pieces (whose invalid UTF-8 runs HF's ByteFallback
  replaces whole) decode alike, specials dropped or rendered."""
  hf = exported["hf"]
  ids = [i for i in range(tokenizer.vocab_size)
         if not tokenizer.id_to_token(i).startswith("<0x")]
  rng = np.random.default_rng(0)
  for _ in range(200):
    seq = rng.choice(ids, size=int(rng.integers(1, 12))).tolist()
    assert hf.decode(seq, skip_special_tokens=True) == tokenizer.decode(seq)
  marked = [tokenizer.special_ids["<|user|>"]] + tokenizer.encode("hi")
  assert hf.decode(marked) == tokenizer.decode(marked, render_special=True)


def test_chat_template_ids_match_the_renderer(tokenizer, exported):
  hf = exported["hf"]
  for messages in (CONVERSATION[1:2], CONVERSATION[:2], CONVERSATION):
    got = hf.apply_chat_template(messages, tokenize=True,
                                 add_generation_prompt=True, return_dict=False)
    assert got == chat_render.render_prompt(chat.LIFEJAX, tokenizer,
                                            messages)
  full, _ = chat_render.render_conversation(chat.LIFEJAX, tokenizer,
                                            CONVERSATION[:3])
  got = hf.apply_chat_template(CONVERSATION[:3], tokenize=True,
                               return_dict=False)
  assert got == full.tolist()


def test_generate_matches_the_lifejax_sampler(tokenizer, exported):
  """Greedy, left-padded batch of chat prompts, stopping at end of turn."""
  hf = exported["hf"]
  model = transformers.AutoModelForCausalLM.from_pretrained(
      exported["dir"]).eval()
  stops = chat_render.stop_ids(chat.LIFEJAX, tokenizer)
  assert sorted(model.generation_config.eos_token_id) == stops
  prompts = [CONVERSATION[1:2], CONVERSATION]
  hf.padding_side = "left"
  batch = hf.apply_chat_template(prompts, tokenize=True,
                                 add_generation_prompt=True, padding=True,
                                 return_tensors="pt", return_dict=True)
  num_new = 12
  with torch.no_grad():
    theirs = model.generate(**batch, max_new_tokens=num_new,
                            do_sample=False).numpy()
  prompt_len = batch["input_ids"].shape[1]
  ours, lengths = sampling.generate(
      exported["graphdef"], exported["params"],
      batch["input_ids"].numpy().astype(np.int32),
      batch["attention_mask"].numpy().astype(np.int32),
      sampling.SamplingConfig(max_new_tokens=num_new, stop_ids=tuple(stops),
                              pad_id=tokenizer.pad_id))
  ours = np.asarray(ours)
  for row in range(len(prompts)):
    n = int(lengths[row])
    assert len(set(ours[row, :n].tolist())) > 3  # not a degenerate model
    np.testing.assert_array_equal(ours[row, :n],
                                  theirs[row, prompt_len:prompt_len + n])


def _edited(tokenizer, tmp_path, edit) -> tokenizer_lib.SentencePieceTokenizer:
  proto = sentencepiece_model_pb2.ModelProto()
  with open(tokenizer.model_path, "rb") as f:
    proto.ParseFromString(f.read())
  edit(proto)
  path = tmp_path / "edited.model"
  path.write_bytes(proto.SerializeToString())
  return tokenizer_lib.SentencePieceTokenizer(path)


@dataclasses.dataclass
class _Set:
  spec: str
  field: str
  value: object

  def __call__(self, proto):
    setattr(getattr(proto, self.spec), self.field, self.value)


@pytest.mark.parametrize("edit, message", [
    (_Set("normalizer_spec", "add_dummy_prefix", True), "add_dummy_prefix"),
    (_Set("normalizer_spec", "remove_extra_whitespaces", True),
     "remove_extra_whitespaces"),
    (_Set("trainer_spec", "treat_whitespace_as_suffix", True),
     "treat_whitespace_as_suffix"),
    (_Set("trainer_spec", "model_type", 3), "model_type=WORD"),
])
def test_unsupported_options_are_named(tokenizer, tmp_path, edit, message):
  tok = _edited(tokenizer, tmp_path, edit)
  with pytest.raises(hf_tokenizer_export.UnsupportedTokenizerError,
                     match=message):
    hf_tokenizer_export.save_hf_tokenizer(tmp_path / "hf", tok)
  assert not (tmp_path / "hf").exists()
