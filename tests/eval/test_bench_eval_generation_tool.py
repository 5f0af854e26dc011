"""tools/bench_eval_generation.py on the tiny lifecycle root: it runs both
placements on the stage's model and reports; timings are never asserted
(shared cores), the answers' agreement is."""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
_spec = importlib.util.spec_from_file_location(
    "bench_eval_generation",
    os.path.join(_ROOT, "tools", "bench_eval_generation.py"))
tool = importlib.util.module_from_spec(_spec)
sys.modules["bench_eval_generation"] = tool
_spec.loader.exec_module(tool)


def test_one_device_and_all_devices_give_the_same_answers(tiny_lifecycle,
                                                          tmp_path):
  out = tmp_path / "t.md"
  text = tool.main([f"--root={tiny_lifecycle}", "--stage=sft",
                    "--records=6", "--prompt_len=320",
                    "--max_new_tokens=4", "--batch_size=4", "--rounds=1",
                    f"--out={out}"])
  assert out.read_text() == text
  assert "(8 local devices" in text, text
  assert "| one device |" in text and "| all 8 devices |" in text
  assert "Identical answers: 6 of 6." in text, text
