"""The curated API (`import qpo_jax`) and the installed command behave as main.py does."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

import qpo_jax
from qpo_jax import rounds
from qpo_jax.context import Run

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
  assert policy.prompts(queries) == rounds.prompt_sampler(Run(config, tiny_run[0]), 2)(queries,
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


def test_a_target_takes_strings_only_for_one_field_tasks():
  from qpo_jax.tasks import get_task
  target = qpo_jax.Target(get_task("boolq"), backend=None, cache=None, max_new_tokens=1)
  with pytest.raises(ValueError, match=r"task 'boolq' has fields \['passage', 'question'\]: "
                     "pass Examples, not strings"):
    target.answers(["Is the sky blue?"], "Answer yes or no.")
  target = qpo_jax.Target(get_task("topics"), backend=None, cache=None, max_new_tokens=1)
  with pytest.raises(ValueError, match="a plain string has no gold answer to score"):
    target.accuracy(["The striker scored twice"], "Topic?")


@pytest.mark.integration
def test_readers_give_what_the_run_wrote_and_the_target_answers_once(tiny_run, tmp_path):
  from qpo_jax import evaluation
  from qpo_jax.context import Run
  from qpo_jax.tasks import task_of

  work = tiny_run[0]
  config = qpo_jax.load_config("tiny")
  assert qpo_jax.finished_rounds(work) == [1, 2]
  metrics = qpo_jax.training_metrics(work, 1)
  assert metrics and {"step", "loss", "ce", "mse"} <= set(metrics[-1])
  records, manifest = qpo_jax.read_dataset(work, 0)
  assert len(records) == manifest["count"] > 0
  qs = qpo_jax.queries(config, 6)
  assert [q.uid for q in qs] == [q.uid for q in qpo_jax.queries(config, 6)]  # seeded
  assert len({q.uid for q in qs}) == 6 and all(q.uid.startswith("all:") for q in qs)
  target = qpo_jax.load_target(config, str(tmp_path / "w"))
  prompt = "What is the main topic of the sentence?"
  want = evaluation.evaluate_pairs(task_of(config.task), Run(config).target,
                                   [(q, prompt) for q in qs])  # no cache: asked afresh
  assert target.accuracy(qs, prompt) == evaluation.accuracy(want)
  calls = sum(u["calls"] for u in target.usage().values())
  assert [o.pred for o in target.outcomes(qs, prompt)] == [o.pred for o in want]
  assert sum(u["calls"] for u in target.usage().values()) == calls  # cached: no new call
  answers = target.answers([q.query for q in qs[:2]], prompt)  # plain strings
  assert answers == [task_of(config.task).options(q)[o.pred] for q, o in zip(qs, want[:2])]


@pytest.mark.integration
def test_serving_policy_answers_with_the_policy_s_prompt_then_stops(tiny_run):
  import urllib.error
  import urllib.request

  config = qpo_jax.load_config("tiny")
  config.serve.port = 0  # any free port on 127.0.0.1
  query = "Heavy rain is expected all weekend"
  with qpo_jax.serving_policy(config, tiny_run[0]) as url:
    assert url.startswith("http://127.0.0.1:")
    body = json.dumps({"messages": [{"role": "user", "content": query}], "max_tokens": 8})
    request = urllib.request.Request(f"{url}/chat/completions", body.encode(),
                                     {"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(request, timeout=120).read())
  assert reply["qpo"]["prompt"] == qpo_jax.load_policy(config, tiny_run[0]).prompts([query])[0][0]
  with pytest.raises(urllib.error.URLError):
    urllib.request.urlopen(request, timeout=5)
