"""The math paper settings train: D_0 from real train-split query texts, then a training step."""

import os

import numpy as np
import pytest

from qpo_jax import loop
from qpo_jax import rounds
from qpo_jax.context import Run
from qpo_jax.policy import trainer
from qpo_jax.store import dataset
from qpo_jax.tasks import load_splits
from qpo_jax.workdir import Workdir

from tests.helpers import SHARED_DATA as DATA, repo_config
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data not present")]


def _config(task, tok_dir, **data):
  config = repo_config(f"paper.py:{task},zero_shot,llama-2-7b-chat")
  tiny = dict(name="random", preset="tiny-llama", tokenizer_path=tok_dir, dtype="float32",
              param_dtype="float32")
  config.target.update(tiny)
  config.target.local.update(batch_size=8, length_multiple=16)
  config.policy.update(tiny)
  config.task.data.dir = os.path.join(DATA, task)
  # a random target answers nothing right: no expert filter, so that 8 queries x 6 prompts
  # = 48 records train, one epoch being one step (the filter is tested in test_rewards)
  config.offline.update(num_queries=8, max_new_tokens=8, threshold=None, top_fraction=None,
                        **data)
  config.train.update(batch_size=48, epochs=1)
  config.progress = False
  return config


@pytest.mark.integration
@pytest.mark.parametrize("task", ["gsm8k", "svamp"])
def test_math_setting_builds_d0_and_trains_a_step(task, tmp_path, smollm2_tokenizer):
  tok_dir = str(tmp_path / "tok")
  smollm2_tokenizer.save_pretrained(tok_dir)
  config = _config(task, tok_dir)
  work = str(tmp_path / "run")
  manifest = loop.build_d0(Run(config, work))
  recs, _ = dataset.read_dataset(Workdir(work).data(0))
  _, splits = load_splits(config.task)
  train = {ex.query for ex in splits["train"]}
  assert manifest["count"] == len(recs) == 8 * 6 and manifest["queries"] == 8
  assert all(r.query in train and not r.query.startswith("#") for r in recs)
  rounds.train_policy_round(Run(config, work), 1)
  history = trainer.metrics_history(Workdir(work).round(1))
  assert [m["step"] for m in history] == [1] and np.isfinite(history[0]["loss"])


@pytest.mark.integration
@pytest.mark.parametrize("task", ["gsm8k", "svamp"])
def test_prompt_oirl_import_has_train_texts_only(task, tmp_path, smollm2_tokenizer):
  """The published logs become D_0 with real query texts; queries of our collect and test
  splits (GSM8K's logs cover all of train.jsonl, SVAMP's CV folds hold SVAMP problems) are
  dropped."""
  tok_dir = str(tmp_path / "tok")
  smollm2_tokenizer.save_pretrained(tok_dir)
  oirl = os.path.join(DATA, "prompt_oirl")
  config = _config(task, tok_dir, source="prompt_oirl",
                   path=os.path.join(oirl, "llama2_chat_logs", task))
  work = str(tmp_path / "run")
  loop.build_d0(Run(config, work))
  recs, manifest = dataset.read_dataset(Workdir(work).data(0))
  _, splits = load_splits(config.task)
  held_out = {loop._plain_text(ex.query) for s in ("collect", "test") for ex in splits[s]}
  assert not any(r.query.startswith("#") for r in recs)
  assert not {loop._plain_text(r.query) for r in recs} & held_out
  assert {r.prompt_source for r in recs} == set(config.offline.prompt_sources)
  if task == "gsm8k":  # the train split's queries, each with all 6 prompts' outcomes
    assert manifest["queries"] == len(splits["train"]) and len(recs) == 6 * len(splits["train"])
  else:  # the first 15,000 fold rows, less those that are SVAMP collect / test problems
    assert 5000 < manifest["queries"] < 15000
  config.train.update(batch_size=16, log_every=1)
  rounds.train_policy_round(Run(config, work), 1, stop_after=1)
  history = trainer.metrics_history(Workdir(work).round(1))
  assert [m["step"] for m in history] == [1] and np.isfinite(history[0]["loss"])
