"""LoRA on params trees that are not one LM: a reward model ({"backbone",
"head"}) and the RL layouts "separate" ({"policy", "value"}) and "shared"
({"lm", "value_head"}). Adapters go on every trunk, heads train in full,
trunk weights stay frozen, and B = 0 starts from the base model exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lifejax import sharding
from lifejax.losses import reward as reward_loss
from lifejax.model import heads, lora, transformer
from lifejax.model.config import TransformerConfig
from lifejax.rl import layout as layout_lib, ppo
from lifejax.train import state as state_lib
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training

CFG = TransformerConfig(vocab_size=32, d_model=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=64)
LCFG = lora.LoraConfig(rank=4, alpha=8.0, targets=("wq", "wv", "wo", "w_up"))
MESH_CFG = sharding.MeshConfig(data=1, fsdp=-1, model=1)
B, T = 4, 8


def _mesh():
  return sharding.make_mesh(MESH_CFG, jax.devices()[:2])


def _fill(abstract, seed: int):
  """N(0, 0.05) leaves in the abstract shapes, unit norm gains, and heads
  that are not zero (so a frozen-head bug would show)."""
  rng = np.random.default_rng(seed)

  def one(path, x):
    if str(path[-1].key) == "scale":
      return np.ones(x.shape, x.dtype)
    return (0.05 * rng.standard_normal(x.shape)).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(one, abstract)


def _keys(path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path)


def _lm_rows(rng, b=B, t=T):
  toks = rng.integers(1, CFG.vocab_size, (b, t + 1)).astype(np.int32)
  mask = np.zeros((b, t), np.float32)
  mask[:, t // 2:] = 1.0
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": mask,
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}


# -- the three trees ----------------------------------------------------------


def _reward_case():
  mesh = _mesh()
  _, abstract = nnx.split(heads.abstract(heads.RewardModel, CFG),
                          nnx.Param)
  params = _fill(nnx.to_pure_dict(abstract), seed=0)
  rng = np.random.default_rng(1)
  batch = {"chosen": _lm_rows(rng), "rejected": _lm_rows(rng)}
  plan_kw = dict(model_cfg=CFG, model_cls=heads.RewardModel,
                 make_loss=reward_loss.make_reward_loss_fn,
                 example_batch=batch)
  return mesh, params, batch, plan_kw


def _rl_case(kind: str):
  mesh = _mesh()
  layout, abstract, specs = layout_lib.make_layout(kind, CFG, mesh,
                                                   MESH_CFG.rules)
  params = _fill(abstract, seed=0)
  rng = np.random.default_rng(1)
  rows = _lm_rows(rng)
  # old log-probs and values of the starting params: ratio 1, no clipping.
  logp, values = jax.jit(layout.stats)(params, rows)
  batch = {**rows, "old_logp": np.asarray(logp),
           "old_values": np.asarray(values),
           "advantages": rng.standard_normal((B, T)).astype(np.float32),
           "returns": rng.standard_normal((B, T)).astype(np.float32)}
  algo = ppo.PPO(ppo.PPOConfig())
  plan_kw = dict(model_cfg=CFG, params_tree=(abstract, specs),
                 make_loss=lambda _: algo.make_loss(layout),
                 example_batch=batch)
  return mesh, params, batch, plan_kw


CASES = {"reward": _reward_case, "separate": lambda: _rl_case("separate"),
         "shared": lambda: _rl_case("shared")}
TRUNKS = {"reward": [("backbone",)],
          "separate": [("policy",), ("value", "backbone")],
          "shared": [("lm",)]}
HEADS = {"reward": ("head",), "separate": ("value", "head"),
         "shared": ("value_head",)}


def _plan(mesh, plan_kw, lora_cfg):
  return plan_training(
      optimizer_cfg=OptimizerConfig(learning_rate=1e-2, warmup_steps=0,
                                    total_steps=10, weight_decay=0.0),
      mesh=mesh, rules=MESH_CFG.rules, lora_cfg=lora_cfg, **plan_kw)


def _start(plan, params):
  base = plan.state_shardings[state_lib.base_params_key(plan.state_shardings)]
  with jax.set_mesh(plan.mesh):
    return plan.init_state(jax.device_put(
        jax.tree.map(np.copy, params), base))


def _at(tree, path):
  for k in path:
    tree = tree[k]
  return tree


@pytest.mark.parametrize("case", ["reward", "separate", "shared"])
def test_trunks_found_and_trainable_tree_layout(case):
  _, params, _, _ = CASES[case]()
  assert lora.trunk_paths(params) == TRUNKS[case]
  trainable = lora.init_lora(params, LCFG, jax.random.PRNGKey(0))
  paths = {_keys(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(trainable)[0]}
  for trunk in TRUNKS[case]:
    want = {trunk + ("layers", lora.GROUP[n], n, ab)
            for n in LCFG.targets for ab in ("a", "b")}
    assert {p for p in paths if p[:len(trunk)] == trunk} == want
  # Everything else in the trainable tree is a head leaf, at its own path.
  rest = {p for p in paths
          if not any(p[:len(t)] == t for t in TRUNKS[case])}
  head_paths = {_keys(p) for p, _ in
                jax.tree_util.tree_flatten_with_path(params)[0]
                if not any(_keys(p)[:len(t)] == t for t in TRUNKS[case])}
  assert rest == head_paths and rest
  assert all(p[:len(HEADS[case])] == HEADS[case] for p in rest)
  with pytest.raises(ValueError, match="no decoder trunk"):
    lora.init_lora({"head": _at(params, HEADS[case])}, LCFG,
                   jax.random.PRNGKey(0))


@pytest.mark.parametrize("case", ["reward", "separate", "shared"])
def test_a_lora_step_trains_adapters_and_heads_only(case):
  mesh, params, batch, plan_kw = CASES[case]()
  full = _plan(mesh, plan_kw, None)
  lplan = _plan(mesh, plan_kw, LCFG)
  full_state, lstate = _start(full, params), _start(lplan, params)
  frozen0 = jax.device_get(lstate["frozen"])
  trainable0 = jax.device_get(lstate["params"])

  # B = 0: the first step's loss (taken before its update) is the
  # full-finetune loss, bitwise.
  _, m_full = full.train_step(full_state, batch)
  lstate, m_lora = lplan.train_step(lstate, batch)
  np.testing.assert_array_equal(np.asarray(m_lora["loss"]),
                                np.asarray(m_full["loss"]))

  # The frozen base is bitwise unchanged.
  for a, b in zip(jax.tree.leaves(frozen0),
                  jax.tree.leaves(jax.device_get(lstate["frozen"]))):
    np.testing.assert_array_equal(a, b)

  # In the merged params only the target projections and the head moved.
  merged = jax.device_get(lora.merge(frozen0, jax.device_get(
      lstate["params"]), LCFG))
  changed = {_keys(p) for (p, a), b in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(merged)) if not np.array_equal(a, b)}
  allowed = {t + ("layers", lora.GROUP[n], n)
             for t in TRUNKS[case] for n in LCFG.targets}
  h = HEADS[case]
  heads_moved = {p for p in changed if p[:len(h)] == h}
  assert changed - heads_moved == allowed, changed
  assert any(p[-1] == "kernel" for p in heads_moved), changed
  # ... and in the trainable tree every adapter B left zero.
  for path, b0 in jax.tree_util.tree_flatten_with_path(trainable0)[0]:
    if _keys(path)[-1] == "b":
      assert not np.any(b0)
      assert np.any(_at(jax.device_get(lstate["params"]), _keys(path)))

  # Optimizer state exists only for the trainable tree.
  n_train = lora.num_params(lstate["params"])
  n_opt = lora.num_params(lstate["opt_state"])
  assert 2 * n_train <= n_opt < 2 * n_train + 16, (n_train, n_opt)
  assert n_train < 0.5 * lora.num_params(params)


def test_head_leaves_keep_their_param_specs():
  """Adapters are replicated; a head trained in full keeps its spec."""
  mesh, params, _, plan_kw = _reward_case()
  plan = _plan(mesh, plan_kw, LCFG)
  sh = plan.state_shardings
  assert sh["params"]["head"]["kernel"].spec == (
      sh["frozen"]["head"]["kernel"].spec)
  assert sh["params"]["head"]["kernel"].spec != P()  # over embed
  for leaf in jax.tree.leaves(sh["params"]["backbone"]):
    assert leaf.spec == P()


@pytest.mark.parametrize("case", ["reward", "separate", "shared"])
def test_merge_equals_w_plus_scaled_a_b_in_numpy(case):
  """With nonzero adapters, one projection per trunk equals W + s A @ B
  computed by hand; other trunk leaves are the base's; heads are the
  trainable tree's; unmerge gives the trunks back."""
  _, params, _, _ = CASES[case]()
  trainable = lora.init_lora(params, LCFG, jax.random.PRNGKey(3))
  noise = np.random.default_rng(4)
  trainable = jax.tree.map(
      lambda x: np.asarray(x) + 0.05 * noise.standard_normal(x.shape)
      .astype(np.float32), trainable)
  merged = jax.device_get(lora.merge(params, trainable, LCFG))
  for i, trunk in enumerate(TRUNKS[case]):
    name = ("wo", "wq")[i % 2]  # both input-axis layouts
    w = np.asarray(_at(params, trunk)["layers"]["attn"][name])
    ab = _at(trainable, trunk)["layers"]["attn"][name]
    a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
    y = w.shape[0]
    n_in = lora.INPUT_AXES[name]
    d_in = int(np.prod(w.shape[1:1 + n_in]))
    for layer in range(y):
      want = (w[layer].reshape(d_in, -1).astype(np.float64)
              + LCFG.scale * a[layer] @ b[layer])
      got = np.asarray(_at(merged, trunk)["layers"]["attn"][name][layer])
      np.testing.assert_allclose(got.reshape(d_in, -1), want, rtol=1e-5,
                                 atol=1e-6)
    assert not np.allclose(_at(merged, trunk)["layers"]["attn"][name], w)
    np.testing.assert_array_equal(_at(merged, trunk)["embed"],
                                  _at(params, trunk)["embed"])
    np.testing.assert_array_equal(
        _at(merged, trunk)["layers"]["attn"]["wk"],
        _at(params, trunk)["layers"]["attn"]["wk"])
  for (path, got), want in zip(
      jax.tree_util.tree_flatten_with_path(_at(merged, HEADS[case]))[0],
      jax.tree.leaves(_at(trainable, HEADS[case]))):
    np.testing.assert_array_equal(got, want, err_msg=str(path))
  back = jax.device_get(lora.unmerge(merged, trainable, LCFG))
  for trunk in TRUNKS[case]:
    for a, b in zip(jax.tree.leaves(_at(params, trunk)),
                    jax.tree.leaves(_at(back, trunk))):
      np.testing.assert_allclose(a, b, atol=1e-6)
  assert jax.tree.structure(merged) == jax.tree.structure(params)


def test_lm_tree_is_unchanged_by_the_generalization():
  """An LM tree's trainable tree is its adapters alone, keyed as before."""
  abstract = nnx.to_pure_dict(nnx.state(transformer.abstract_model(CFG),
                                        nnx.Param))
  params = _fill(abstract, seed=0)
  trainable = lora.init_lora(params, LCFG, jax.random.PRNGKey(1))
  assert set(trainable) == {"layers"}
  assert lora.trunk_paths(params) == [()]
  # The same A as a by-hand init of the root trunk with the same key.
  a = trainable["layers"]["attn"]["wq"]["a"]
  ref = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), 0),
                          a.shape, jnp.float32) / np.sqrt(a.shape[1])
  np.testing.assert_array_equal(a, ref)
