"""The run context: what a process builds once, and the round it hands from stage to stage."""

import os
import shutil

import jax
import pytest

from qpo_jax import modes, rounds
from qpo_jax import context
from qpo_jax.context import Run
from qpo_jax.policy import trainer

from tests.helpers import repo_config, run_python, tiny_config

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
  result = modes.run("loop", tiny_config(), tiny_run[0])
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
  config = tiny_config()  # one device: a multi-device mesh lays the params out to train
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


def test_release_for_training_drops_compiled_programs(tmp_path):
  """The scoring's compiled programs (one per shape bucket) are not kept under a training
  state: after D_0 they put round 1's peak at 3.89 GiB instead of 3.59."""
  add_one = jax.jit(lambda x: x + 1)
  add_one(1)
  assert add_one._cache_size() == 1  # pylint: disable=protected-access
  Run(repo_config("tiny.py"), str(tmp_path)).release_for_training()
  assert add_one._cache_size() == 0  # pylint: disable=protected-access


@pytest.mark.multiprocess
def test_freed_heap_goes_back_to_the_os_before_training():
  """A heap left full of holes (what scoring leaves) would sit under a training state in
  the resident set: `Run.release_for_training` gives its free pages back. A fresh process,
  so that the heap is this test's alone."""
  code = """
from qpo_jax import utils
def rss():
  return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])
blocks = [bytes(2000) for _ in range(150_000)]  # ~300 MB of malloc'd (not mmap'd) blocks
kept = blocks[::64]  # every 64th stays alive: the freed pages are holes, not the heap's top
del blocks
before = rss()
utils.return_freed_memory()
print(before, rss(), len(kept))
"""
  proc = run_python(code)
  assert proc.returncode == 0, proc.stderr[-2000:]
  before, after = map(int, proc.stdout.split()[:2])
  assert before - after > 200_000, (before, after)  # KiB: most of the ~300 MB freed
