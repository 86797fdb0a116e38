"""The run context: what a process builds once, and the round it hands from stage to stage."""

import os
import shutil

import pytest

from qpo_jax import modes, rounds
from qpo_jax import context
from qpo_jax.context import Run
from qpo_jax.policy import trainer

from tests.helpers import repo_config

pytestmark = pytest.mark.integration  # the tiny config's run


def test_a_process_reads_the_task_and_the_backbone_once(tiny_run, monkeypatch):
  """The loop over a finished run (every stage skips, the report runs): the splits are cut
  once, the pretrained policy read once (for its spec), the frozen LM once, each round
  once."""
  calls = {}
  for module, name in ((context, "load_splits"), (context, "pretrained_policy"),
                       (context, "load_model"), (trainer, "load_final_params")):
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: (
        calls.update({_name: calls.get(_name, 0) + 1}) or _real(*a, **k)))
  result = modes.run("loop", repo_config("tiny.py"), tiny_run[0])
  assert calls == {"load_splits": 1, "pretrained_policy": 1, "load_model": 1,
                   "load_final_params": 2}
  assert result["methods"] == tiny_run[1]["methods"]


def test_the_round_a_stage_trained_is_handed_on_not_read_back(tiny_run, tmp_path, monkeypatch):
  """On one device a trained round stays in memory for the next stage, and its prompts are
  those of the round read back from disk."""
  work = str(tmp_path / "run")
  shutil.copytree(tiny_run[0], work)
  for name in ("round_2", "round_2.config.json"):
    path = os.path.join(work, "policy", name)
    (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
  config = repo_config("tiny.py")
  config.mesh.update(data=1)  # one device: a multi-device mesh lays the params out to train
  run = Run(config, work)
  rounds.train_policy_round(run, 2)
  assert run.held_round == 2
  reads = []
  real = trainer.load_final_params
  monkeypatch.setattr(trainer, "load_final_params",
                      lambda *a, **k: reads.append(a[0]) or real(*a, **k))
  queries = ["The striker scored twice in the final.", "Shares fell after the report."]
  handed = rounds.prompt_sampler(run, 2)(queries, collect=False, seed=0)
  assert reads == []  # handed on
  fresh = rounds.prompt_sampler(Run(config, work), 2)(queries, collect=False, seed=0)
  assert reads == [os.path.join(work, "policy", "round_2")] and handed == fresh
  run.drop_round()
  assert run.held_round is None


def test_on_a_multi_device_mesh_the_round_is_read_back(tiny_run):
  """The trained arrays are laid out for training there; a sampler reads the round from
  disk with the one-device layout it decodes with."""
  run = Run(repo_config("tiny.py"), tiny_run[0])
  assert run.mesh.size == 8
  run.hold_round(2, object())
  assert run.held_round is None
