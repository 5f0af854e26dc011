"""notebooks/walkthrough.ipynb executes top to bottom on a tiny lifecycle."""

import os

import nbclient
import nbformat
from ipykernel import kernelspec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
NOTEBOOK = os.path.join(REPO, "notebooks", "walkthrough.ipynb")


def _outputs(nb, kind: str) -> str:
  out = []
  for c in nb.cells:
    for o in c.get("outputs", []):
      if o.get("output_type") == "stream" and kind == "text":
        out.append(o["text"])
      elif kind in o.get("data", {}):
        out.append(o["data"][kind])
  return "\n".join(out)


def test_walkthrough_executes(tiny_lifecycle, tmp_path, monkeypatch):
  # A kernel spec for this interpreter in a private prefix: nothing is
  # installed into the user's Jupyter directories.
  kernelspec.install(prefix=str(tmp_path), kernel_name="python3")
  monkeypatch.setenv("JUPYTER_PATH",
                     str(tmp_path / "share" / "jupyter"))
  monkeypatch.setenv("LIFEJAX_RUN_DIR", tiny_lifecycle)
  monkeypatch.setenv("LIFEJAX_NOTEBOOK_TOKENS", "8")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")  # one device in the kernel
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"
                 ), "commit the notebook without outputs"
  client = nbclient.NotebookClient(
      nb, kernel_name="python3", timeout=300,
      resources={"metadata": {"path": REPO}})
  client.execute()  # raises CellExecutionError on any failing cell

  markdown = _outputs(nb, "text/markdown")
  text = _outputs(nb, "text")
  assert "| `pretrain` |" in markdown and "| `dpo` |" in markdown
  assert "| task | prompt | base | SFT | DPO |" in markdown
  assert "missing_generation_prompt" in text
  assert _outputs(nb, "image/png")  # the report's plots are shown
