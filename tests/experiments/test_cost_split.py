"""The cost split's FLOP counting (experiments/cost_split/cost.py) against
hand-computed closed forms on a synthetic lifecycle root, and its errors.

The real runs' operative configs and summaries are read by the experiment's
tiny run (tests/experiments/test_experiments_tiny.py, pretrain and SFT of
the tiny lifecycle); here every stage kind is counted against arithmetic
done by hand for a model small enough to count on paper.
"""

import json
import os

import pytest

from experiments.cost_split import cost

# d 8, 2 heads x 4 dims, 1 kv head, mlp 16, 1 layer, vocab 32:
# per layer 8*4*(2*2 + 2*1) + 3*8*16 = 192 + 384 = 576; head 32*8 = 256.
N_MM = 832
MODEL = """
TransformerConfig.vocab_size = 32
TransformerConfig.d_model = 8
TransformerConfig.num_layers = 1
TransformerConfig.num_heads = 2
TransformerConfig.num_kv_heads = 1
TransformerConfig.head_dim = 4
TransformerConfig.mlp_dim = 16
"""


def _train(t):  # per token: 6 N + causal attention 6 * L * T * H * E
  return 6 * N_MM + 6 * 1 * t * 2 * 4


def _fwd(t):
  return _train(t) / 3


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _stage(root, name, gin, summary=None, metrics=()):
  _write(os.path.join(root, name, "operative_config.gin"), MODEL + gin)
  if summary is not None:
    _write(os.path.join(root, name, "summary.json"), json.dumps(summary))
  _write(os.path.join(root, name, "metrics.jsonl"),
         "".join(json.dumps(m) + "\n" for m in metrics))


@pytest.fixture
def root(tmp_path):
  r = str(tmp_path / "root")
  _stage(r, "pretrain", "pretrain/pretrain.batch_size = 4\n"
         "pretrain/pretrain.seq_len = 16\n", {"final_step": 10})
  # an unscoped binding is the fallback; the scoped one wins
  _stage(r, "sft", "sft.batch_size = 99\nsft/sft.batch_size = 2\n"
         "sft/sft.seq_len = 32\n", {"final_step": 5})
  _stage(r, "reward", "reward/reward.batch_size = 3\n"
         "reward/reward.seq_len = 24\n", {"final_step": 4})
  _stage(r, "dpo", "dpo/dpo.batch_size = 2\ndpo/dpo.seq_len = 24\n",
         {"final_step": 6})
  _stage(r, "ppo", "ppo/RLLoopConfig.prompts_per_iteration = 4\n"
         "ppo/RLLoopConfig.epochs = 2\nppo/RolloutConfig.prompt_len = 12\n"
         "ppo/RolloutConfig.max_new_tokens = 8\n"
         "ppo/ppo.reward = 'reward_model'\nppo/ppo.value_model = 'separate'\n"
         "ppo/ppo.grpo_config = None\n", {"final_step": 12},
         [{"step": 4, "iteration": 1.0}, {"step": 8, "iteration": 2.0},
          {"step": 12, "iteration": 3.0}])
  ledger = {"stages": [
      {"name": n, "kind": n, "run_dir": n, "status": "done", "seconds": s}
      for n, s in (("pretrain", 10.0), ("sft", 20.0), ("reward", 5.0),
                   ("dpo", 8.0), ("ppo", 6.0), ("release", 1.0))]}
  _write(os.path.join(r, "lifecycle.json"), json.dumps(ledger))
  return r


def test_every_stage_kind_matches_its_closed_form(root):
  c = {s.name: s for s in cost.stage_costs(root)}
  assert c["pretrain"].params == N_MM
  assert c["pretrain"].tokens == 10 * 4 * 16
  assert c["pretrain"].total == pytest.approx(640 * _train(16))
  assert c["sft"].tokens == 5 * 2 * 32  # the scoped batch size
  assert c["sft"].total == pytest.approx(320 * _train(32))
  assert c["reward"].tokens == 4 * 3 * 2 * 24
  assert c["reward"].train == pytest.approx(576 * _train(24))
  assert c["reward"].frozen == 0
  # DPO: the pairs trained, and the reference's forward once per sequence
  assert c["dpo"].tokens == 6 * 2 * 2 * 24
  assert c["dpo"].train == pytest.approx(576 * _train(24))
  assert c["dpo"].frozen == pytest.approx(576 * _fwd(24))
  # PPO: 3 iterations x 4 prompts of 12 + 8 tokens; sampling 1 forward,
  # scoring 4 (old policy, reference, reward model, critic), training
  # 2 epochs x (policy + critic)
  seq_tokens = 3 * 4 * 20
  assert c["ppo"].steps == 3 and c["ppo"].generated == 3 * 4 * 8
  assert c["ppo"].sample == pytest.approx(seq_tokens * _fwd(20))
  assert c["ppo"].frozen == pytest.approx(4 * seq_tokens * _fwd(20))
  assert c["ppo"].train == pytest.approx(2 * 2 * seq_tokens * _train(20))
  assert c["release"].total == 0 and c["release"].seconds == 1.0
  table = cost.as_table(list(c.values()))
  assert [r["stage"] for r in table] == list(c)
  total = sum(s.total for s in c.values())
  assert table[0]["FLOPs share"] == f"{100 * c['pretrain'].total / total:.1f}%"
  ex = cost.demo_explained(list(c.values()))
  assert ex["pretrain_tokens_per_param"] == pytest.approx(640 / N_MM)
  post = 320 + 576 + 576 + 2 * 2 * seq_tokens
  assert ex["post_over_pretrain_tokens"] == pytest.approx(post / 640)


def test_grpo_samples_groups_and_has_no_critic(root):
  _stage(root, "ppo", "ppo/RLLoopConfig.prompts_per_iteration = 4\n"
         "ppo/RLLoopConfig.epochs = 1\nppo/RolloutConfig.prompt_len = 12\n"
         "ppo/RolloutConfig.max_new_tokens = 8\nppo/ppo.reward = 'judge'\n"
         "ppo/ppo.grpo_config = @GRPOConfig()\nppo/GRPOConfig.group_size = 3\n",
         {"final_step": 2}, [{"step": 2, "iteration": 2.0}])
  c = {s.name: s for s in cost.stage_costs(root)}["ppo"]
  seq_tokens = 2 * 4 * 3 * 20
  assert c.frozen == pytest.approx(2 * seq_tokens * _fwd(20))  # no RM/critic
  assert c.train == pytest.approx(seq_tokens * _train(20))


def test_errors_name_the_file_and_what_is_missing(root):
  os.remove(os.path.join(root, "sft", "summary.json"))
  with pytest.raises(ValueError, match=r"sft/summary.json: missing"):
    cost.stage_costs(root)
  _write(os.path.join(root, "sft", "summary.json"), '{"final_step": 1}')
  _write(os.path.join(root, "reward", "operative_config.gin"), MODEL)
  with pytest.raises(ValueError, match=r"reward/operative_config.gin: no "
                     r"binding for reward/reward.batch_size"):
    cost.stage_costs(root)
  ledger = os.path.join(root, "lifecycle.json")
  with open(ledger) as f:
    data = json.load(f)
  data["stages"] = [{"name": "x", "kind": "mystery", "run_dir": "pretrain"}]
  _write(ledger, json.dumps(data))
  with pytest.raises(ValueError, match="kind 'mystery': no cost model"):
    cost.stage_costs(root)
  with pytest.raises(ValueError, match="not a lifecycle root"):
    cost.stage_costs(os.path.join(root, "nowhere"))


def test_real_scale_split():
  rows = {r["recipe"]: r for r in cost.real_scale_split()}
  llama = rows["Llama 2 70B"]
  assert llama["flops"]["pretrain"] == pytest.approx(6 * 70e9 * 2e12)
  assert llama["flops"]["sft"] == pytest.approx(6 * 70e9 * 27_540 * 4096 * 2)
  assert sum(llama["shares"].values()) == pytest.approx(1.0)
  chin = next(r for k, r in rows.items() if k.startswith("Chinchilla"))
  # compute-optimal N, D spend the whole budget: 6 N D = C
  assert 6 * chin["params"] * chin["pretrain_tokens"] == pytest.approx(
      3.14e23, rel=1e-6)


def test_a_skipped_stage_leaves_no_wall_split(root):
  costs = cost.stage_costs(root)
  assert cost.wall_known(costs)
  costs[0].status = "skipped"
  assert not cost.wall_known(costs)
  assert {r["wall share"] for r in cost.as_table(costs)} == {"—"}


def test_pretraining_at_20_tokens_per_param(root):
  costs = cost.stage_costs(root)
  ex = cost.demo_explained(costs)
  pre = costs[0]
  scale = 20 * N_MM / 640
  assert ex["pretrain_scale_to_20_tokens_per_param"] == pytest.approx(scale)
  others = sum(c.total for c in costs[1:])
  assert ex["pretrain_share_at_20_tokens_per_param"] == pytest.approx(
      pre.total * scale / (pre.total * scale + others))
