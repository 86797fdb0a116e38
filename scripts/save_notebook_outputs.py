"""Runs colab/ notebooks top to bottom and saves their outputs in the .ipynb files.

The saved outputs (tables, plots) are what a reader sees on GitHub before running
anything; rerun this after changing a notebook or what it calls. Each notebook runs in
a fresh kernel from colab/ on one CPU device, as tests/test_notebooks.py runs it, with
the parameters cell as committed. A notebook that fails is left as it was.

  .venv/bin/python scripts/save_notebook_outputs.py [colab/NAME.ipynb ...]
"""

import glob
import os
import sys

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VOLATILE = ("execution",)  # per-cell timestamps: they would change every run


def save_outputs(path: str) -> None:
  book = nbformat.read(path, as_version=4)
  # no progress bars (a saved bar is noise), no notice that Jupyter's widgets are missing
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", TQDM_DISABLE="1",
             PYTHONWARNINGS="ignore:IProgress not found")
  env.pop("XLA_FLAGS", None)  # one device, as a user's kernel has
  client = nbclient.NotebookClient(book, timeout=1800, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "colab")}})
  client.execute(env=env)
  for cell in book.cells:
    for key in _VOLATILE:
      cell.metadata.pop(key, None)
  tmp = path + ".tmp"
  nbformat.write(book, tmp)
  os.replace(tmp, path)


def main(argv: list[str]) -> None:
  paths = argv or sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
  for path in paths:
    print("running", path, flush=True)
    save_outputs(path)


if __name__ == "__main__":
  main(sys.argv[1:])
