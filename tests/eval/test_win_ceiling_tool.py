"""experiments/win_ceiling/ceiling.py on the tiny lifecycle: its arms are
paired with SFT's recorded test answers and judged as the lifecycle judges
policies; its greedy "samples" are SFT's own answers."""

import importlib.util
import os

from lifejax.eval import instruct
from lifejax.world import judge as judge_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _tool():
  spec = importlib.util.spec_from_file_location(
      "win_ceiling", os.path.join(REPO, "experiments", "win_ceiling",
                                  "ceiling.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_ceilings_pair_with_sfts_own_answers(tiny_lifecycle):
  tool = _tool()
  records, rows = tool.sft_rows(tiny_lifecycle)
  sft = [r["answer"] for r in rows]
  # The tiny lifecycle's eval generation (gin_configs/lifecycle/tiny.gin).
  spec = instruct.GenerationSpec(320, 4, 4)
  # Temperature 0 is greedy: the lifecycle's own SFT test answers.
  assert [d[0] for d in tool.sft_samples(tiny_lifecycle, records, 1, 0.0, 0,
                                         spec)] == sft
  arms = tool.ceilings(tiny_lifecycle, 2, 1.0, 0, spec)
  assert [a["arm"].split(" ")[0] for a in arms] == ["reference", "reference",
                                                    "best"]
  n = len(records)
  learnable = {"fact_qa", "refuse_pii"}
  for a in arms:
    assert a["wins"] + a["ties"] + a["losses"] == n
    assert sum(map(sum, a["by_task"].values())) == n
  # By hand: the reference beats SFT where the judge scores it higher.
  score = lambda r, x: judge_lib.score(r, x).total  # noqa: E731
  better = [score(r, r["messages"][-1]["content"]) > score(r, s) + 1e-9
            for r, s in zip(records, sft)]
  assert arms[1]["wins"] == sum(better)
  assert arms[0]["wins"] == sum(b for b, r in zip(better, records)
                                if r["task"] in learnable)
  for task, (w, t, l) in arms[0]["by_task"].items():
    if task not in learnable:
      assert w == l == 0, task
  # Best-of-N includes SFT's greedy answer: it never loses to it.
  assert arms[2]["losses"] == 0
  text = tool.table(arms, tiny_lifecycle)
  assert text.count("\n| ") == 4
