"""The curated API (`import qpo_jax`) and the installed command behave as main.py does."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

import qpo_jax
from qpo_jax.policy import rounds

from tests.helpers import ROOT, repo_config


def test_packaged_configs_load_by_name_like_their_files():
  assert {"quickstart", "tiny", "nlu", "paper", "tweet_emotion"} <= set(
      qpo_jax.packaged_configs())
  by_name = qpo_jax.load_config("tiny")
  assert by_name == repo_config("tiny.py")
  assert qpo_jax.load_config("nlu:task=boolq").task.name == "boolq"
  assert by_name.is_locked
  with pytest.raises(FileNotFoundError, match="config file nothere.py does not exist"):
    qpo_jax.load_config("nothere.py")


def test_run_checks_the_config_first_as_main_does(tmp_path):
  config = qpo_jax.load_config("tiny")
  config.train.batch_size = -1
  with pytest.raises(ValueError, match="train.batch_size=-1 must be a positive whole number"):
    qpo_jax.run("loop", config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.integration
def test_load_policy_writes_the_runs_prompts(tiny_run):
  config = qpo_jax.load_config("tiny")
  policy = qpo_jax.load_policy(config, tiny_run[0])
  queries = ["Heavy rain is expected all weekend", "Our team won the final match"]
  assert policy.round == 2
  assert policy.prompts(queries) == rounds.policy_prompts(config, tiny_run[0], 2, queries,
                                                          collect=False, seed=0)
  drawn = policy.prompts(queries, samples=3, seed=1)
  assert [len(d) for d in drawn] == [3, 3]


@pytest.mark.multiprocess
def test_the_installed_command_runs_a_packaged_config(tmp_path):
  command = os.path.join(os.path.dirname(sys.executable), "qpo-jax")
  r = subprocess.run([command, "--config", "tiny", "--mode=generate",
                      f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True,
                     timeout=600, cwd=str(tmp_path))  # not the checkout: the installed package
  assert r.returncode == 0, r.stderr[-2000:]
  assert [a["question"] for a in json.loads((tmp_path / "w" / "answers.json").read_text())] == [
      "What is the capital of France?", "Hi"]


@pytest.mark.multiprocess
def test_a_built_wheel_carries_the_configs_and_the_command(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(tmp_path), ROOT], check=True, capture_output=True, timeout=600)
  wheel, = [p for p in tmp_path.iterdir() if p.suffix == ".whl"]
  names = zipfile.ZipFile(wheel).namelist()
  for f in ("quickstart.py", "base.py", "tiny.py", "nlu.py"):
    assert f"qpo_jax/configs/{f}" in names, f
  entry = next(n for n in names if n.endswith("entry_points.txt"))
  assert "qpo-jax = qpo_jax.cli:run" in zipfile.ZipFile(wheel).read(entry).decode()
