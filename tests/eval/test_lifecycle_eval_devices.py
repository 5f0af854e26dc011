"""The lifecycle's evaluation entry points generate through
GenerationSpec.devices: on the tiny lifecycle's trained runs, with the 8
simulated devices, each one's answers come from data-parallel calls over
all 8 and equal its answers on one device."""

import dataclasses

import pytest

from lifejax import sharding
from lifejax.data.jsonl import read_jsonl
from lifejax.eval import generation, instruct, lifecycle_evals
from lifejax.run import artifacts
from lifejax.run.layout import LifecycleRoot
from lifejax.stages.lifecycle import balanced_subset


@pytest.fixture(scope="module")
def setup(tiny_lifecycle):
  lr = LifecycleRoot(tiny_lifecycle)
  sft_run, dpo_run = lr.stage("sft").root, lr.stage("dpo").root
  cfg = artifacts.load_model_config(sft_run)
  mesh_cfg = sharding.MeshConfig(data=1, fsdp=1, model=1)
  mesh = sharding.make_mesh(mesh_cfg)
  records = balanced_subset(read_jsonl(lr.world_instructions("validation")),
                            5)
  # The tiny lifecycle's shapes (lifecycle/tiny.gin), 4 rows per call: 5
  # prompts are one full call and one padded to 8 rows over 8 devices.
  spec = instruct.GenerationSpec(prompt_len=320, max_new_tokens=4,
                                 batch_size=4)
  return cfg, mesh, mesh_cfg.rules, sft_run, dpo_run, records, spec


def _spy(monkeypatch):
  calls = []
  run = generation.Placement.run

  def counted(self, fn, *rows):
    calls.append(len(self.devices))
    return run(self, fn, *rows)

  monkeypatch.setattr(generation.Placement, "run", counted)
  return calls


def test_dev_judge_policy_and_release_evals_run_on_all_devices(
    setup, monkeypatch):
  cfg, mesh, rules, sft_run, dpo_run, records, spec = setup
  everywhere = dataclasses.replace(spec, devices=-1)
  calls = _spy(monkeypatch)

  def evals(s):
    dev = lifecycle_evals.dev_judge(dpo_run, cfg, mesh, rules, sft_run,
                                    records, s)
    policy = lifecycle_evals.PolicyEval(cfg, mesh, rules, sft_run, records,
                                        s)(dpo_run)
    release = lifecycle_evals.release_eval(dpo_run, cfg, mesh, rules,
                                           sft_run, records, s)
    return dev, policy, release

  one = evals(spec)
  assert calls == []  # devices=1: today's path, no placement
  spread = evals(everywhere)
  # dev judge 2 calls, the policy's answers and SFT's (not in SFT's own
  # eval_answers for these prompts) 2 + 2, the release's golden set 2 and
  # its timed batch 1 + 1 (warm-up): every call on all 8 devices.
  assert calls == [8] * 10, calls
  assert spread[0] == one[0]
  for key in ("win_rate_vs_ref", "kl_to_ref", "instruct/format"):
    assert spread[1][key] == pytest.approx(one[1][key], abs=1e-6), key
  assert spread[2]["golden_pass_rate"] == one[2]["golden_pass_rate"]
