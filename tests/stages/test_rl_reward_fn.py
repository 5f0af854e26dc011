"""A Python reward function for PPO/GRPO (reward="python", reward_fn):
options checked before anything loads, each sample scored by the function,
wrong results named. The end-to-end run is tests/cli/test_bring_your_own.py.
"""

import math

import numpy as np
import pytest

from lifejax.rl import rollout as rollout_lib
from lifejax.stages import rl as rl_stages, rl_common

MISSING = "/nonexistent/lifejax_run"


def contains_answer(record, response):
  return float(record["answer"] in response) + 0.5 * len(response)


def one_argument(response):
  return 0.0


def _grpo(tmp_path, **kw):
  return rl_stages.grpo(run_dir=str(tmp_path / "grpo"), sft_run=MISSING,
                        prompt_files=[MISSING], **kw)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(reward="python"), ValueError, r'grpo.reward="python" needs '
     r"grpo.reward_fn"),
    (dict(reward_fn=contains_answer), ValueError,
     r"grpo.reward_fn is set but has no effect: grpo.reward is 'judge'"),
    (dict(reward="reward_model", reward_run=MISSING,
          reward_fn=contains_answer), ValueError, "grpo.reward_fn"),
    (dict(reward="python", reward_fn=one_argument), TypeError,
     r"grpo.reward_fn=.*one_argument\(response\) cannot be called as "
     r"fn\(record, response\)"),
    (dict(reward="python", reward_fn="my_module.my_reward"), TypeError,
     "grpo.reward_fn='my_module.my_reward' is not callable"),
    (dict(reward="python", reward_fn=contains_answer,
          reward_judge="length_hackable"), ValueError, "grpo.reward_judge"),
    (dict(reward="python", reward_fn=contains_answer, reward_run=MISSING),
     ValueError, "grpo.reward_run"),
    (dict(reward="pyhton", reward_fn=contains_answer), ValueError,
     "grpo.reward"),
])
def test_grpo_rejects_reward_fn_options_before_loading(tmp_path, kwargs,
                                                       error, match):
  with pytest.raises(error, match=match):
    _grpo(tmp_path, **kwargs)
  assert not (tmp_path / "grpo").exists()


def test_ppo_takes_the_same_options(tmp_path):
  with pytest.raises(ValueError, match='ppo.reward="python" needs '
                     "ppo.reward_fn"):
    rl_stages.ppo(run_dir=str(tmp_path / "ppo"), sft_run=MISSING,
                  prompt_files=[MISSING], reward="python")


def test_stages_without_a_reward_fn_refuse_python():
  """RLAIF and online DPO have no reward_fn option, so "python" is not one
  of their choices."""
  with pytest.raises(ValueError, match="rlaif.judge"):
    rl_common.check_reward("rlaif", "python", None, "default",
                           reward_field="judge", judge_field="judge_preset")


def _rollout(records, texts):
  n = len(records)
  return rollout_lib.Rollout(
      records=records, rows={}, response_BxN=np.zeros((n, 1), np.int32),
      lengths_B=np.ones(n, np.int32), stopped_B=np.ones(n, bool),
      texts=texts)


def test_function_scorer_scores_each_sample_and_names_the_function():
  records = [{"id": "a", "answer": "Five"}, {"id": "b", "answer": "Blue"}]
  scorer = rl_common.FunctionScorer(contains_answer, "grpo.reward_fn")
  score_B = scorer(_rollout(records, ["Five.", "Red"]))
  assert score_B.dtype == np.float32
  np.testing.assert_allclose(score_B, [1.0 + 2.5, 1.5])
  assert scorer.name == f"{__name__}.contains_answer"

  info = rl_common.scorer(None, "python", None, "default", 0.0, 0,
                          reward_fn=contains_answer)[1]
  assert info == {"kind": "python",
                  "function": f"{__name__}.contains_answer",
                  "missing_stop_penalty": 0.0}


@pytest.mark.parametrize("value, error, match", [
    ("1.0", TypeError, "returns a float, got str"),
    (None, TypeError, "returns a float, got NoneType"),
    (True, TypeError, "returns a float, got bool"),
    (np.array([1.0]), TypeError, "returns a float, got ndarray"),
    (math.nan, ValueError, "must be finite"),
    (-math.inf, ValueError, "must be finite"),
])
def test_function_scorer_rejects_a_bad_result(value, error, match):
  def bad(record, response):
    return value

  scorer = rl_common.FunctionScorer(bad, "grpo.reward_fn")
  with pytest.raises(error, match=rf"grpo.reward_fn=.*bad returned .* for "
                     rf"prompt 'q7': .*{match}"):
    scorer(_rollout([{"id": "q7"}], ["text"]))


def test_function_scorer_takes_numpy_and_int_results():
  for value in (np.float32(0.25), np.int64(2), 3):
    scorer = rl_common.FunctionScorer(lambda r, t, v=value: v)
    assert scorer(_rollout([{}], ["x"]))[0] == np.float32(value)
