"""tools/chinchilla.py: Chinchilla sizing from the published or a fitted law,
checked against lifejax/eval/scaling.py's closed form."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from lifejax.eval import scaling
from lifejax.model.config import TransformerConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "chinchilla_tool", os.path.join(_ROOT, "tools", "chinchilla.py"))
chinchilla = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chinchilla)
FIT_JSON = os.path.join(_ROOT, "experiments", "scaling_laws", "fit.json")


def test_budget_by_the_published_law(capsys):
  out = chinchilla.main(["--flops", "5.76e23"])
  n, d = scaling.compute_optimal(scaling.CHINCHILLA, 5.76e23)
  assert out["params"] == pytest.approx(float(n), rel=1e-12)
  assert out["tokens"] == pytest.approx(float(d), rel=1e-12)
  assert out["tokens_per_param"] == pytest.approx(float(d / n), rel=1e-12)
  assert out["loss"] == pytest.approx(
      float(scaling.CHINCHILLA.loss(n, d)), rel=1e-12)
  assert out["n_convention"] == "total"
  text = capsys.readouterr().out
  assert f"{float(n):.4g}" in text and f"{float(d):.4g}" in text
  assert "Hoffmann" in text


def test_inverse_gives_the_budget_at_which_a_size_is_optimal():
  out = chinchilla.main(["--params", "7e9"])
  assert out["tokens"] == pytest.approx(
      float(scaling.optimal_tokens(scaling.CHINCHILLA, 7e9)), rel=1e-12)
  assert out["flops"] == pytest.approx(6 * 7e9 * out["tokens"])
  back = chinchilla.main(["--flops", repr(out["flops"])])
  assert back["params"] == pytest.approx(7e9, rel=1e-9)


def _law_file(tmp_path, law, **extra):
  path = tmp_path / "fit.json"
  path.write_text(json.dumps({"law": law, **extra}))
  return str(path)


def test_fitted_law_and_a_lifejax_model(tmp_path, capsys):
  law = scaling.Law(E=1.5, A=50.0, B=400.0, alpha=0.4, beta=0.3)
  path = _law_file(tmp_path, law.to_dict(), n_convention="non_embedding")
  out = chinchilla.main(["--model", "test", "--law", path, "--seq", "128"])
  # gin_configs/models/test.gin: d 64, 2 layers, 4 heads of 16, 2 kv heads,
  # gated MLP 128: per layer 64*16*(2*4 + 2*2) + 3*64*128 weights.
  assert out["params"] == 2 * (64 * 16 * 12 + 3 * 64 * 128)
  assert out["tokens"] == pytest.approx(
      float(scaling.optimal_tokens(law, out["params"])), rel=1e-12)
  cfg = TransformerConfig(vocab_size=512, d_model=64, num_layers=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=128)
  from lifejax.model import flops
  assert out["lifejax_train_flops"] == pytest.approx(
      flops.train_flops_per_token(cfg, 128) * out["tokens"])
  assert "non-embedding" in capsys.readouterr().out
  # The published law counts every parameter.
  total = chinchilla.main(["--model", "test"])
  assert total["params"] == cfg.num_params()


@pytest.mark.parametrize("law,match", [
    ({"E": 1.0, "A": 1.0, "B": 1.0, "alpha": 0.3}, r"law\.beta: missing"),
    ({"E": 1.0, "A": "big", "B": 1.0, "alpha": 0.3, "beta": 0.3},
     r"law\.A='big'"),
    ({"E": 1.0, "A": 1.0, "B": 1.0, "alpha": 0.0, "beta": 0.3},
     r"law\.alpha=0\.0 must be > 0"),
])
def test_bad_law_file_names_the_field(tmp_path, capsys, law, match):
  path = _law_file(tmp_path, law)
  with pytest.raises(SystemExit) as e:
    chinchilla.main(["--flops", "1e20", "--law", path])
  assert e.value.code == 2
  assert re.search(match, capsys.readouterr().err)


def test_bad_arguments(tmp_path, capsys):
  for argv, match in ((["--flops", "-1"], "--flops=-1.0: must be > 0"),
                      (["--params", "1e9", "--seq", "8"], "--seq goes with"),
                      (["--flops", "1e20", "--law", str(tmp_path / "no")],
                       "cannot read"),
                      (["--model", "no_such_model"], "no_such_model"),
                      ([], "one of the arguments")):
    with pytest.raises(SystemExit):
      chinchilla.main(argv)
    assert match in capsys.readouterr().err
  path = _law_file(tmp_path, scaling.CHINCHILLA.to_dict(),
                   n_convention="embedding")
  with pytest.raises(SystemExit):
    chinchilla.main(["--flops", "1e20", "--law", path])
  assert "n_convention='embedding'" in capsys.readouterr().err


def test_reads_the_experiments_fit():
  """The committed fit of experiments/scaling_laws is a law the tool sizes
  with, in the convention it was fitted in."""
  with open(FIT_JSON) as f:
    doc = json.load(f)
  law = scaling.Law.from_dict(doc["law"])
  out = chinchilla.main(["--flops", "1e11", "--law", FIT_JSON])
  assert out["n_convention"] == doc["n_convention"] == "non_embedding"
  n, d = scaling.compute_optimal(law, 1e11)
  assert out["params"] == pytest.approx(float(n), rel=1e-12)
  assert out["tokens"] == pytest.approx(float(d), rel=1e-12)


def test_command_line():
  proc = subprocess.run(
      [sys.executable, os.path.join("tools", "chinchilla.py"), "--flops",
       "1e21"], cwd=_ROOT, capture_output=True, text=True, check=True)
  n, _ = scaling.compute_optimal(scaling.CHINCHILLA, 1e21)
  assert f"{float(n):.4g}" in proc.stdout
