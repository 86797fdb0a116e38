"""The colab/ notebooks run top to bottom in a fresh kernel, so they cannot rot.

Each notebook has one cell tagged `parameters`; the test points its WORKDIR at a
temp dir and runs every cell with nbclient from colab/ (where a user opens them),
on one CPU device, then checks an output that shows the notebook did its job.
"""

import glob
import os
import re

import nbclient
import nbformat
import pytest

from tests.conftest import one_device_env

from tests.helpers import ROOT, SHARED_DATA
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
NEEDS_SHARED_DATA = {"inspect_offline_data.ipynb"}
EXPECTED = {  # notebook -> text its outputs must contain
    "quickstart": "| QPO loop 2 |",
    "inspect_offline_data": "8587 records",
    "train_and_sample_policy": "R* = 100.0",
    "evaluate_prompts": "per-query oracle",
    "use_policy": "answer with QPO prompt",
}


def _output_text(book) -> str:
  return "\n".join(
      o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
      for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_every_notebook_is_checked():
  assert sorted(os.path.basename(p)[:-6] for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p)[:-6])
def test_saved_outputs_show_the_result_and_the_plots(path):
  """What GitHub shows before anyone runs it (scripts/save_notebook_outputs.py writes it)."""
  book = nbformat.read(path, as_version=4)
  assert EXPECTED[os.path.basename(path)[:-6]] in _output_text(book)
  for cell in book.cells:
    if cell.cell_type == "code" and re.search(r"display\(Image|plt\.show\(", cell.source):
      assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:80]
    if cell.cell_type == "code":
      assert not any(o.output_type == "error" for o in cell.outputs), cell.source[:80]


@pytest.mark.multiprocess
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p)[:-6])
def test_notebook_runs_top_to_bottom(path, tmp_path):
  if os.path.basename(path) in NEEDS_SHARED_DATA and not os.path.isdir(SHARED_DATA):
    pytest.skip(f"{SHARED_DATA} (the authors' published log) is not present")
  book = nbformat.read(path, as_version=4)
  params = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1, "one cell tagged 'parameters'"
  source, n = re.subn(r'^WORKDIR = "[^"]*"', f"WORKDIR = {str(tmp_path / 'work')!r}",
                      params[0].source, flags=re.M)
  assert n == 1, "the parameters cell sets WORKDIR"
  params[0].source = source
  client = nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "colab")}})
  client.execute(env=one_device_env())
  assert EXPECTED[os.path.basename(path)[:-6]] in _output_text(book)
  assert os.path.isdir(tmp_path / "work")
