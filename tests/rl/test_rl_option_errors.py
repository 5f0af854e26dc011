"""RL configs and stage arguments: bad values and options that cannot take
effect are errors naming the option, raised before any model is loaded."""

import inspect
import types

import pytest

from lifejax.losses import registry
from lifejax.rl import grpo, ppo, rlaif
from lifejax.rl import rollout as rollout_lib
from lifejax.stages import rl as rl_stages, rl_common
from lifejax.stages.rlaif import rlaif as rlaif_stage
from lifejax.world import judge as judge_lib

# The RL stages' loop config, whichever module holds the class.
RLLoopConfig = type(inspect.signature(rl_stages.grpo).parameters["loop"]
                    .default)

# Arguments of a stage call that must fail before it reads any of them.
MISSING = "/nonexistent/lifejax_run"


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt_len=0), "RolloutConfig.prompt_len"),
    (dict(max_new_tokens=0), "RolloutConfig.max_new_tokens"),
    (dict(temperature=-1.0), "RolloutConfig.temperature"),
    (dict(top_k=-5), "RolloutConfig.top_k"),
    (dict(top_p=1.5), "RolloutConfig.top_p"),
    (dict(top_p=0.0), "RolloutConfig.top_p"),
    (dict(chunk_size=-1), "RolloutConfig.chunk_size"),
])
def test_rollout_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    rollout_lib.RolloutConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_iterations=-1), "RLLoopConfig.num_iterations"),
    (dict(prompts_per_iteration=0), "RLLoopConfig.prompts_per_iteration"),
    (dict(epochs=0), "RLLoopConfig.epochs"),
    (dict(minibatch_size=0), "RLLoopConfig.minibatch_size"),
    (dict(num_microbatches=0), "RLLoopConfig.num_microbatches"),
    (dict(minibatch_size=6, num_microbatches=4),
     "RLLoopConfig.num_microbatches"),
    (dict(samples_every=-1), "RLLoopConfig.samples_every"),
    (dict(checkpoint_every=-1), "RLLoopConfig.checkpoint_every"),
])
def test_rl_loop_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    RLLoopConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(gamma=1.5), "PPOConfig.gamma"),
    (dict(lam=-0.1), "PPOConfig.lam"),
    (dict(vf_coef=-1.0), "PPOConfig.vf_coef"),
    (dict(ent_coef=-0.01), "PPOConfig.ent_coef"),
    (dict(target_kl=0.0), "PPOConfig.target_kl"),
    (dict(kl_horizon=-1.0), "PPOConfig.kl_horizon"),
    (dict(value_clip_eps=0.0), "PPOConfig.value_clip_eps"),
    (dict(score_clip=0.0), "PPOConfig.score_clip"),
])
def test_ppo_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ppo.PPOConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(clip_eps=0.0), "GRPOConfig.clip_eps"),
    (dict(kl_coef=-0.1), "GRPOConfig.kl_coef"),
    (dict(eps=-1e-4), "GRPOConfig.eps"),
    (dict(aggregation="mean"), "GRPOConfig.aggregation"),
])
def test_grpo_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    grpo.GRPOConfig(**kwargs)


def test_rlaif_config_rejects_an_empty_batch():
  with pytest.raises(ValueError, match="RLAIFConfig.prompts_per_batch"):
    rlaif.RLAIFConfig(prompts_per_batch=0)


def _ppo(tmp_path, **kw):
  args = dict(run_dir=str(tmp_path / "ppo"), sft_run=MISSING,
              prompt_files=[MISSING], reward_run=MISSING)
  args.update(kw)
  return rl_stages.ppo(**args)


def test_ppo_value_init_with_a_shared_critic_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="ppo.value_init"):
    _ppo(tmp_path, value_model="shared", value_init="sft")
  with pytest.raises(ValueError, match="ppo.value_init"):
    _ppo(tmp_path, value_model="shared", value_init="reward_model")
  assert not (tmp_path / "ppo").exists()


@pytest.mark.parametrize("kwargs, field", [
    (dict(value_model="both"), "ppo.value_model"),
    (dict(value_init="rm"), "ppo.value_init"),
    (dict(reward="rm"), "ppo.reward"),
    (dict(reward_run=None), "ppo.reward_run"),  # reward="reward_model"
    (dict(reward="judge", reward_run=None, value_init="reward_model"),
     "ppo.reward_run"),
    (dict(reward_judge="length_hackable"), "ppo.reward_judge"),
    (dict(reward_judge=judge_lib.LENGTH_HACKABLE), "ppo.reward_judge"),
    (dict(reward="judge", reward_judge="lenient"), "ppo.reward_judge"),
    (dict(loop=RLLoopConfig(prompts_per_iteration=6,
                                        minibatch_size=4)),
     "RLLoopConfig.minibatch_size"),
    (dict(rollout=rollout_lib.RolloutConfig(chunk_size=5)),
     "RolloutConfig.chunk_size"),
])
def test_ppo_stage_rejects_before_loading(tmp_path, kwargs, field):
  with pytest.raises(ValueError, match=field):
    _ppo(tmp_path, **kwargs)
  assert not (tmp_path / "ppo").exists()


def test_ppo_value_init_default_keeps_the_reward_model_critic():
  """value_init=None: the reward model's backbone when reward_run is given
  (what the old default "reward_model" did), else the SFT LM's; nothing
  for a shared critic."""
  resolve = rl_common.value_init
  assert resolve("separate", None, "runs/reward") == "reward_model"
  assert resolve("separate", None, None) == "sft"
  assert resolve("separate", "sft", "runs/reward") == "sft"
  assert resolve("separate", "reward_model", "runs/reward") == "reward_model"
  assert resolve("shared", None, "runs/reward") is None
  with pytest.raises(ValueError, match="ppo.value_init.*shared"):
    resolve("shared", "reward_model", "runs/reward")
  with pytest.raises(ValueError, match="ppo.reward_run"):
    resolve("separate", "reward_model", None)


@pytest.mark.parametrize("kwargs, field", [
    (dict(reward="judge", reward_run=MISSING), "grpo.reward_run"),
    (dict(reward="reward_model", reward_run=MISSING,
          reward_judge="safety_hackable"), "grpo.reward_judge"),
    (dict(reward="reward_model"), "grpo.reward_run"),
    # ppo's options cannot apply to grpo (one implementation, two names).
    (dict(value_model="separate"), "grpo.value_model"),
    (dict(value_init="sft"), "grpo.value_init"),
    (dict(ppo_config=ppo.PPOConfig()), "grpo.ppo_config"),
    (dict(grpo_config=grpo.GRPOConfig(group_size=3),
          loop=RLLoopConfig(prompts_per_iteration=2,
                                        minibatch_size=4)),
     "RLLoopConfig.minibatch_size"),
])
def test_grpo_stage_rejects_before_loading(tmp_path, kwargs, field):
  with pytest.raises(ValueError, match=field):
    rl_stages.grpo(run_dir=str(tmp_path / "grpo"), sft_run=MISSING,
                   prompt_files=[MISSING], **kwargs)
  assert not (tmp_path / "grpo").exists()


@pytest.mark.parametrize("kwargs", [
    dict(every_steps=5), dict(best_metric="eval/accuracy"),
    dict(best_mode="max")])
def test_rl_stages_refuse_checkpoint_fields_they_set(tmp_path, kwargs):
  """An RL run checkpoints per iteration and keeps the best by
  eval/reward; a CheckpointConfig field it would override is an error."""
  from lifejax.train.checkpoint import CheckpointConfig
  field = next(iter(kwargs))
  with pytest.raises(ValueError, match=f"CheckpointConfig.{field}"):
    _ppo(tmp_path, checkpoint=CheckpointConfig(**kwargs))
  with pytest.raises(ValueError, match=f"CheckpointConfig.{field}"):
    rl_stages.grpo(run_dir=str(tmp_path / "grpo"), sft_run=MISSING,
                   prompt_files=[MISSING],
                   checkpoint=CheckpointConfig(**kwargs))
  assert not (tmp_path / "ppo").exists() and not (tmp_path / "grpo").exists()


def test_ppo_stage_rejects_grpo_config(tmp_path):
  with pytest.raises(ValueError, match="ppo.grpo_config"):
    _ppo(tmp_path, grpo_config=grpo.GRPOConfig())
  assert not (tmp_path / "ppo").exists()


def test_rl_gin_names_fix_their_algorithm():
  """`ppo` and `grpo` bind the same arguments, each with its own defaults;
  the algorithm itself cannot be rebound from gin."""
  import gin
  with gin.unlock_config():
    with pytest.raises(ValueError, match="algorithm"):
      gin.parse_config("grpo.algorithm = 'ppo'")
  gin.clear_config()
  params = inspect.signature(rl_stages.ppo).parameters
  assert params["reward"].default == "reward_model"
  assert inspect.signature(rl_stages.grpo).parameters[
      "reward"].default == "judge"


@pytest.mark.parametrize("kwargs, field", [
    (dict(judge="judge", reward_run=MISSING), "rlaif.reward_run"),
    (dict(judge="reward_model", reward_run=MISSING,
          judge_preset="length_hackable"), "rlaif.judge_preset"),
    (dict(judge="reward_model"), "rlaif.reward_run"),
    (dict(judge="llm"), "rlaif.judge"),
    (dict(judge_preset="strict"), "rlaif.judge_preset"),
    (dict(num_prompts=0), "rlaif.num_prompts"),
    (dict(rollout=rollout_lib.RolloutConfig(chunk_size=3)),
     "RolloutConfig.chunk_size"),
])
def test_rlaif_stage_rejects_before_loading(tmp_path, kwargs, field):
  with pytest.raises(ValueError, match=field):
    rlaif_stage(run_dir=str(tmp_path / "rlaif"), policy_run=MISSING,
                prompt_files=[MISSING], **kwargs)
  assert not (tmp_path / "rlaif").exists()


# -- losses come from the registry by name -------------------------------------


@pytest.fixture
def private_registry(monkeypatch):
  registry.available_losses()  # load the built-ins first
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))


def test_rl_algorithms_build_the_registered_loss_by_name(private_registry):
  calls = []

  def recording(kind):
    def factory(*graphs, **hparams):
      calls.append((kind, graphs, hparams))
      return "loss_fn"
    return factory

  registry.register_loss("test_ppo_probe", kind="ppo")(recording("ppo"))
  registry.register_loss("test_grpo_probe", kind="grpo")(recording("grpo"))
  cfg = ppo.PPOConfig()
  layout = types.SimpleNamespace(kind="separate", lm_graphdef="LM",
                                 value_graphdef="V")
  assert ppo.PPO(cfg, loss="test_ppo_probe").make_loss(layout) == "loss_fn"
  gcfg = grpo.GRPOConfig()
  layout = types.SimpleNamespace(kind="policy", lm_graphdef="LM")
  assert grpo.GRPO(gcfg, loss="test_grpo_probe").make_loss(layout) == (
      "loss_fn")
  # The same arguments the built-in factories always got.
  assert calls == [
      ("ppo", ("LM", "V"), dict(clip_eps=cfg.clip_eps,
                                value_clip_eps=cfg.value_clip_eps,
                                vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef)),
      ("grpo", ("LM",), dict(
          clip_eps=gcfg.clip_eps, kl_coef=gcfg.kl_coef,
          aggregation=gcfg.aggregation, clip_eps_low=gcfg.clip_eps_low,
          clip_eps_high=gcfg.clip_eps_high,
          importance_sampling_level=gcfg.importance_sampling_level,
          norm_length=gcfg.norm_length))]


@pytest.mark.parametrize("stage, loss", [
    ("ppo", "no_such_loss"), ("grpo", "no_such_loss"), ("ppo", "grpo"),
    ("grpo", "dpo")])
def test_rl_stage_loss_names_resolve_through_the_registry(tmp_path, stage,
                                                          loss):
  with pytest.raises(KeyError, match=f"{stage}.loss") as err:
    if stage == "ppo":
      _ppo(tmp_path, loss=loss)
    else:
      rl_stages.grpo(run_dir=str(tmp_path / "grpo"), sft_run=MISSING,
                     prompt_files=[MISSING], loss=loss)
  msg = str(err.value)
  # The registry's message: every loss, or every loss of the stage's kind.
  assert f"'{loss}'" in msg and stage in msg.split(";")[-1]
  assert not (tmp_path / stage).exists()
