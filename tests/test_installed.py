"""The package works installed, away from the repository: every module imports, the packaged
TweetEval files load, and the tiny loop runs (configs/ and experiments/ are not in it)."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import one_device_env

from tests.helpers import ROOT

SCRIPT = r"""
import importlib, os, pkgutil, sys
import qpo_jax
assert os.path.dirname(qpo_jax.__file__).startswith(sys.argv[1]), qpo_jax.__file__
names = [m.name for m in pkgutil.walk_packages(qpo_jax.__path__, "qpo_jax.")]
for name in names:
    importlib.import_module(name)
assert "qpo_jax.tables" not in names and "qpo_jax.benchmark" not in names
from qpo_jax.tasks import load_splits
_, splits = load_splits({"name": "tweet_emotion", "seed": 0, "data": {"kind": "files"}})
from qpo_jax import modes
from qpo_jax.utils import load_config
config = load_config(sys.argv[2])
config.loop.num_loops = 1
result = modes.run("loop", config, sys.argv[3])
print("modules", len(names), "tweets", len(splits["test"]), "qpo",
      result["methods"]["qpo_loop_1"]["zero_shot"])
"""


@pytest.mark.multiprocess
def test_installed_package_imports_and_runs_the_tiny_loop(tmp_path):
  src = tmp_path / "src"  # a clean copy, so the build leaves nothing in the checkout
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                           "__pycache__", ".pytest_cache"))
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(site), str(src)], check=True,
                 timeout=300)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = one_device_env()
  env["PYTHONPATH"] = str(site)  # dependencies from this environment, qpo_jax from the install
  r = subprocess.run([sys.executable, "-c", SCRIPT, str(site),
                      os.path.join(ROOT, "configs", "tiny.py"), str(tmp_path / "work")],
                     cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  words = r.stdout.strip().splitlines()[-1].split()
  assert words[0] == "modules" and int(words[1]) > 30, words
  assert words[2:4] == ["tweets", "1421"]  # TweetEval emotion's test split, from package data
  assert 0.0 <= float(words[5]) <= 1.0  # the tiny loop's QPO accuracy
