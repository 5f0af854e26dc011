"""Progress bars carry the active stage label (lifecycle runs)."""

import io

from tqdm.auto import tqdm

from lifejax.train import metrics


def test_label_is_scoped_and_nests():
  assert metrics.progress_desc("train") == "train"
  with metrics.progress_label("[2/6 sft]"):
    assert metrics.progress_desc("train") == "[2/6 sft] train"
    with metrics.progress_label("[5/6 ppo]"):
      assert metrics.progress_desc("rl") == "[5/6 ppo] rl"
    assert metrics.progress_desc("train") == "[2/6 sft] train"
  assert metrics.progress_desc("train") == "train"


def test_bar_shows_label_step_loss_and_eta():
  out = io.StringIO()
  with metrics.progress_label("[1/6 pretrain]"):
    bar = tqdm(total=10, desc=metrics.progress_desc("train"), file=out,
               mininterval=0)
  bar.update(3)
  bar.set_postfix(loss="2.5000")
  bar.close()
  text = out.getvalue()
  assert "[1/6 pretrain] train" in text
  assert "3/10" in text and "loss=2.5000" in text
  assert "<" in text  # tqdm's elapsed<remaining (the ETA)
