"""The loss registry: lookup by name, helpful errors, no silent overrides."""

from __future__ import annotations

import functools

import pytest

from lifejax.losses import dpo, grpo, lm, ppo, registry, reward


def test_builtins_are_registered():
  names = registry.available_losses()
  assert names == sorted(names)
  assert set(names) >= {"lm", "reward", "dpo", "cdpo", "ipo", "simpo", "orpo",
                        "kto", "ppo", "grpo"}
  assert registry.get_loss("lm") is lm.make_lm_loss_fn
  assert registry.get_loss("reward") is reward.make_reward_loss_fn
  assert registry.get_loss("dpo") is dpo.make_dpo_loss_fn
  assert registry.get_loss("simpo") is dpo.make_simpo_loss_fn
  assert registry.get_loss("ppo") is ppo.make_ppo_loss_fn
  assert registry.get_loss("grpo") is grpo.make_grpo_loss_fn


def test_unknown_name_lists_registered():
  with pytest.raises(KeyError) as err:
    registry.get_loss("dpoo")
  msg = str(err.value)
  assert "'dpoo'" in msg
  for name in ("dpo", "ipo", "ppo", "grpo", "reward"):
    assert name in msg


def test_register_and_conflicts(monkeypatch):
  registry.available_losses()  # load the built-ins first
  # Register into a copy, so the toy loss does not outlive the test.
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

  def make_toy_loss_fn(graphdef):
    del graphdef
    return lambda params, batch, rng: (0.0, {})

  registry.register_loss("test_registry_toy")(make_toy_loss_fn)
  assert registry.get_loss("test_registry_toy") is make_toy_loss_fn
  assert "test_registry_toy" in registry.available_losses()
  # The same function again (a module reload) is fine ...
  registry.register_loss("test_registry_toy")(make_toy_loss_fn)

  # ... a different one under a taken name is not.
  def other_factory(graphdef):
    return make_toy_loss_fn(graphdef)

  with pytest.raises(ValueError, match="already registered"):
    registry.register_loss("dpo")(other_factory)
  with pytest.raises(ValueError, match="already registered"):
    registry.register_loss("test_registry_toy")(
        functools.partial(make_toy_loss_fn))
  with pytest.raises(ValueError, match="non-empty"):
    registry.register_loss("")
  assert registry.get_loss("dpo") is dpo.make_dpo_loss_fn


def test_make_preference_loss_fn_rejects_other_losses():
  with pytest.raises(KeyError, match="not a preference loss"):
    dpo.make_preference_loss_fn("ppo", None)
  with pytest.raises(TypeError, match="ref_params"):
    dpo.make_preference_loss_fn("simpo", None, ref_params={"w": 1})
  with pytest.raises(ValueError, match="reference-free"):
    dpo.build_preference_loss_fn(None, dpo.simpo_objective,
                                 needs_reference=False, ref_params={"w": 1})
  with pytest.raises(ValueError, match="label_smoothing"):
    dpo.make_preference_loss_fn("cdpo", None, label_smoothing=0.5)
  with pytest.raises(KeyError, match="aggregation"):
    grpo.make_grpo_loss_fn(None, aggregation="mean")


def _builtin(kind):
  # Other test modules register losses under "test_" names in the same
  # process (the registry is global); the built-ins are the rest.
  return [n for n in registry.available_losses(kind)
          if not n.startswith("test_")]


def test_builtin_kinds_and_lookup_by_kind():
  assert _builtin("preference") == ["cdpo", "dpo", "ipo", "orpo", "simpo"]
  assert _builtin("unpaired") == ["kto"]
  assert _builtin("lm") == ["lm"]
  for name in ("reward", "ppo", "grpo"):
    assert _builtin(name) == [name]
  assert registry.get_loss("dpo", kind="preference") is dpo.make_dpo_loss_fn
  with pytest.raises(KeyError, match="not a preference loss") as err:
    registry.get_loss("ppo", kind="preference", option="dpo.loss")
  msg = str(err.value)
  assert msg.startswith("\"dpo.loss: 'ppo'")
  assert "preference losses: cdpo, dpo, ipo, orpo, simpo" in msg
  with pytest.raises(KeyError, match="dpo.loss: unknown loss 'dpoo'"):
    registry.get_loss("dpoo", kind="preference", option="dpo.loss")


def test_a_kind_change_is_a_conflict(monkeypatch):
  registry.available_losses()
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
  registry.register_loss("dpo", kind="preference")(dpo.make_dpo_loss_fn)
  with pytest.raises(ValueError, match="already registered"):
    registry.register_loss("dpo", kind="lm")(dpo.make_dpo_loss_fn)
  with pytest.raises(ValueError, match="kind"):
    registry.register_loss("test_registry_toy", kind="")


def test_check_hparams_names_the_option():
  registry.check_hparams(dpo.make_ipo_loss_fn, {"tau": 0.2, "nll_weight": 1},
                         "dpo.loss_hparams")
  with pytest.raises(ValueError, match="dpo.loss_hparams") as err:
    registry.check_hparams(dpo.make_ipo_loss_fn, {"beta": 0.1},
                           "dpo.loss_hparams")
  assert "'beta'" in str(err.value) and "'tau'" in str(err.value)
  with pytest.raises(ValueError, match="set by the stage"):
    registry.check_hparams(dpo.make_dpo_loss_fn, {"ref_params": {}},
                           "dpo.loss_hparams", reserved=("ref_params",))
  # A factory taking **kwargs takes any key.
  registry.check_hparams(lambda g, **kw: None, {"anything": 1}, "x.loss")
