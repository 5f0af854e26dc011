"""Stage arguments: options that cannot take effect are errors naming them,
raised before the stage writes anything; losses come from the registry by
the stage's `loss` name (a plain config value)."""

import importlib

import pytest

from lifejax import sharding, stages
from lifejax.losses import registry
from lifejax.model.config import TransformerConfig

# The package exports the stage function under the module's name.
lifecycle_lib = importlib.import_module("lifejax.stages.lifecycle")

TINY = TransformerConfig(vocab_size=640, d_model=32, num_layers=2,
                         num_heads=4, num_kv_heads=2, mlp_dim=64)
MESH1 = sharding.MeshConfig(data=1, fsdp=1, model=1)
MISSING = "/nonexistent/lifejax_run"


def _pretrain(tmp_path, **kw):
  args = dict(run_dir=str(tmp_path / "run"), model=TINY,
              train_files=[MISSING], mesh=MESH1)
  args.update(kw)
  return stages.pretrain(**args)


@pytest.mark.parametrize("kwargs, field", [
    (dict(init_from=MISSING, tokenizer_path=MISSING),
     "pretrain.tokenizer_path"),
    (dict(init_from=MISSING, tokenizer_type="bpe"), "pretrain.tokenizer_type"),
    (dict(tokenizer_path=MISSING, tokenizer_type="bpe"),
     "pretrain.tokenizer_type"),
    (dict(tokenizer_type="wordpiece"), "pretrain.tokenizer_type"),
    (dict(eval_files=[MISSING], eval_holdout=0.1), "pretrain.eval_holdout"),
    (dict(forgetting_margin=0.2), "pretrain.forgetting_margin"),
])
def test_pretrain_rejects_options_that_cannot_apply(tmp_path, kwargs, field):
  with pytest.raises(ValueError, match=field):
    _pretrain(tmp_path, **kwargs)
  assert not (tmp_path / "run").exists()


def _sft(tmp_path, **kw):
  args = dict(run_dir=str(tmp_path / "run"), model=TINY, init_from=MISSING,
              train_files=[MISSING], mesh=MESH1)
  args.update(kw)
  return stages.sft(**args)


@pytest.mark.parametrize("kwargs, field", [
    (dict(general_share=0.2), "sft.general_share"),  # no general_files
    (dict(general_files=[MISSING], general_share=1.5), "sft.general_share"),
    (dict(general_share=-0.1), "sft.general_share"),
    (dict(train_on="final_assistant"), "sft.train_on"),
    (dict(forgetting_margin=0.2), "sft.forgetting_margin"),
])
def test_sft_rejects_options_that_cannot_apply(tmp_path, kwargs, field):
  with pytest.raises(ValueError, match=field):
    _sft(tmp_path, **kwargs)
  assert not (tmp_path / "run").exists()


def _dpo(tmp_path, **kw):
  args = dict(run_dir=str(tmp_path / "run"), model=TINY, init_from=MISSING,
              train_files=[MISSING], eval_file=MISSING, mesh=MESH1)
  args.update(kw)
  return stages.dpo(**args)


@pytest.mark.parametrize("loss, hparams, key", [
    ("dpo", {"tau": 0.1}, "tau"),  # an IPO hyperparameter
    ("ipo", {"beta": 0.1}, "beta"),
    ("simpo", {"label_smoothing": 0.1}, "label_smoothing"),
    ("dpo", {"ref_params": {}}, "ref_params"),  # the stage's own reference
])
def test_dpo_loss_hparams_must_be_the_losses_own(tmp_path, loss, hparams,
                                                 key):
  with pytest.raises(ValueError, match="dpo.loss_hparams") as err:
    _dpo(tmp_path, loss=loss, loss_hparams=hparams)
  assert f"'{key}'" in str(err.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("call, field", [
    (lambda t: _pretrain(t, loss="no_such_loss"), "pretrain.loss"),
    (lambda t: _sft(t, loss="no_such_loss"), "sft.loss"),
    (lambda t: _dpo(t, loss="no_such_loss"), "dpo.loss"),
    (lambda t: stages.reward(run_dir=str(t / "run"), model=TINY,
                             init_from=MISSING, train_files=[MISSING],
                             eval_file=MISSING, loss="no_such_loss"),
     "reward.loss"),
])
def test_unknown_stage_loss_lists_the_registered_ones(tmp_path, call, field):
  with pytest.raises(KeyError, match=field) as err:
    call(tmp_path)
  msg = str(err.value)
  assert "unknown loss 'no_such_loss'; registered losses:" in msg
  for name in registry.available_losses():
    assert name in msg
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("call, kind", [
    (lambda t: _pretrain(t, loss="dpo"), "lm"),
    (lambda t: _sft(t, loss="reward"), "lm"),
    (lambda t: _dpo(t, loss="lm"), "preference"),
    (lambda t: _dpo(t, loss="ppo"), "preference"),
])
def test_a_loss_of_another_kind_is_refused(tmp_path, call, kind):
  with pytest.raises(KeyError, match=f"is not a {kind} loss"):
    call(tmp_path)
  assert not (tmp_path / "run").exists()


def test_lifecycle_source_weights_must_name_pretrain_sources(tmp_path):
  with pytest.raises(ValueError, match="lifecycle.source_weights") as err:
    lifecycle_lib.lifecycle(root=str(tmp_path / "lc"), model=TINY,
                            pretrain_sources=("wiki", "web"),
                            source_weights={"wiki": 2.0, "mails": 3.0})
  assert "mails" in str(err.value)
  assert not (tmp_path / "lc").exists()


# -- the stages build exactly the registered factory -------------------------


class _Stop(Exception):
  """Raised by a probe factory once a stage has built both of its losses."""


@pytest.fixture
def probes(monkeypatch):
  """Registers recording factories under test-only names (in a private copy
  of the registry). A stage builds its loss twice, for the train and the
  eval step: the probe returns the real loss the first time and raises
  _Stop the second, before anything is compiled or trained."""
  registry.available_losses()  # load the built-ins first
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
  calls: list[tuple[str, int, dict]] = []

  def probe(name: str, kind: str, real_factory) -> None:
    def factory(*graphs, **hparams):
      calls.append((name, len(graphs), hparams))
      if len(calls) % 2 == 0:
        raise _Stop
      return real_factory(*graphs, **hparams)
    registry.register_loss(name, kind=kind)(factory)

  for name, kind in (("lm", "lm"), ("reward", "reward"),
                     ("ipo", "preference")):
    probe(f"test_probe_{name}", kind, registry.get_loss(name))
  return calls


def test_stages_build_their_loss_by_registered_name(tiny_runs, tmp_path,
                                                    probes):
  root, world = tiny_runs
  corpus = [str(world / "corpus" / "wiki.jsonl")]
  prefs = str(world / "preferences" / "train.jsonl")
  with pytest.raises(_Stop):
    stages.pretrain(run_dir=str(tmp_path / "pt"), model=TINY, mesh=MESH1,
                    train_files=corpus, init_from=str(root / "base"),
                    loss="test_probe_lm", z_loss=2e-4)
  with pytest.raises(_Stop):
    stages.sft(run_dir=str(tmp_path / "sft"), model=TINY, mesh=MESH1,
               init_from=str(root / "base"),
               train_files=[str(world / "instructions" / "train.jsonl")],
               loss="test_probe_lm")
  with pytest.raises(_Stop):
    stages.reward(run_dir=str(tmp_path / "rm"), model=TINY, mesh=MESH1,
                  init_from=str(root / "sft"), train_files=[prefs],
                  eval_file=prefs, loss="test_probe_reward")
  with pytest.raises(_Stop):
    stages.dpo(run_dir=str(tmp_path / "dpo"), model=TINY, mesh=MESH1,
               init_from=str(root / "sft"), train_files=[prefs],
               eval_file=prefs, loss="test_probe_ipo",
               loss_hparams={"tau": 0.2, "nll_weight": 0.5})
  # Each stage called the factory registered under its `loss` name (train,
  # then eval loss), with the arguments it always gave the built-in one.
  ipo = {"tau": 0.2, "nll_weight": 0.5}
  assert probes == [
      ("test_probe_lm", 1, {"z_loss": 2e-4}),
      ("test_probe_lm", 1, {"z_loss": 0.0}),
      ("test_probe_lm", 1, {}), ("test_probe_lm", 1, {}),
      ("test_probe_reward", 1, {}), ("test_probe_reward", 1, {}),
      ("test_probe_ipo", 1, ipo), ("test_probe_ipo", 1, ipo),
  ]
