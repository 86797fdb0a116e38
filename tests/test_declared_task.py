"""A task declared in a file (docs/your_own_task.md, run as written there) works in every mode."""

import json
import os
import re

import pytest

from qpo_jax import loop, modes
from qpo_jax.tasks import declared, load_splits, task_of
from qpo_jax.tasks.base import Example

from tests.helpers import ROOT, tiny_config
DOC = open(os.path.join(ROOT, "docs", "your_own_task.md")).read()
BLOCKS = dict(re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S))


@pytest.fixture()
def reviews(tmp_path):
  """The documented task file, and data in the documented format (its two rows and more)."""
  folder = tmp_path / "reviews"
  folder.mkdir()
  (folder / "task.yaml").write_text(BLOCKS["yaml"])
  documented = BLOCKS["jsonl"].strip().splitlines()
  good = ["A joy to watch.", "Wonderful acting throughout.", "I loved every minute."]
  bad = ["Dull and far too long.", "The worst film this year.", "I walked out early."]
  rows = [json.dumps({"review": f"{t} (take {i})", "label": label})
          for i in range(12) for texts, label in ((good, "Positive"), (bad, "Negative"))
          for t in texts]
  (folder / "train.jsonl").write_text("\n".join(documented + rows[:48]) + "\n")
  (folder / "test.jsonl").write_text("\n".join(rows[48:]) + "\n")
  return folder


def _config(folder):
  config = tiny_config()
  config.task.file = str(folder / "task.yaml")
  config.task.data.kind = "files"
  return config


def test_the_documented_task_reads_renders_and_splits(reviews):
  config = _config(reviews)
  loop.validate(config)
  task, splits = load_splits(config.task)
  assert (task.name, task.kind, task.verbalizers) == ("review_sentiment", "choice",
                                                      ("Negative", "Positive"))
  first = Example("x", {"text": "The plot was gripping from start to end."}, label=1)
  assert task.render(first, "Is the review Negative or Positive?") == BLOCKS["text"].strip()
  assert {k: len(v) for k, v in splits.items()} == {"train": 40, "collect": 5,
                                                    "validation": 5, "test": 24}
  assert {ex.label for ex in splits["train"]} == {0, 1}
  assert task.source_prompts["none"] == ("",) and len(task.source_prompts["manual"]) == 2


@pytest.mark.parametrize("change,message", [
    ({"option": ["a"]}, "unknown keys ['option']"),
    ({"kind": "regression"}, "kind 'regression' is not 'choice' or 'math'"),
    ({"answer": None}, "a choice task needs `answer`"),
    ({"splits": {"train": ["train", 0, 0.8], "dev": ["train", 0.8, 1]}}, "splits.dev must be"),
    ({"prompts": {"manual": [3]}}, "prompts must map a source name to a list of prompts"),
])
def test_a_mistake_names_the_file_and_the_key(tmp_path, reviews, change, message):
  import yaml
  spec = yaml.safe_load(BLOCKS["yaml"])
  spec.update(change)
  spec = {k: v for k, v in spec.items() if v is not None}
  path = tmp_path / "bad.yaml"
  path.write_text(yaml.safe_dump(spec))
  with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
    declared.load_task(str(path))


def test_a_row_that_does_not_fit_names_the_file_and_record(reviews):
  with open(reviews / "train.jsonl", "a") as f:
    f.write(json.dumps({"review": "Fine.", "label": "Neutral"}) + "\n")
  with pytest.raises(ValueError, match=r"train.jsonl, record 50: .*label 'Neutral' is not one "
                     r"of the options \['Negative', 'Positive'\]"):
    load_splits(_config(reviews).task)


def test_math_and_per_row_options(tmp_path):
  (tmp_path / "q.jsonl").write_text(
      json.dumps({"question": "2 + 3?", "answer": "5"}) + "\n")
  (tmp_path / "m.yaml").write_text("name: sums\nkind: math\nfields: {question: Question}\n"
                                   "data: {files: {train: q.jsonl, test: q.jsonl}}\n")
  task = declared.load_task(str(tmp_path / "m.yaml"))
  assert task.to_example({"question": "2 + 3?", "answer": "5"}, "u").answer == 5
  (tmp_path / "c.yaml").write_text("name: mc\nkind: choice\nfields: {context: Passage}\n"
                                   "answer: Answer\nlabel: gold\n")
  task = declared.load_task(str(tmp_path / "c.yaml"))
  ex = task.to_example({"context": "Sky?", "options": ["blue", "green"], "gold": "Green"}, "u")
  assert (ex.options, ex.label, task.options(ex)) == (("blue", "green"), 1, ("blue", "green"))


@pytest.mark.integration
def test_every_mode_runs_on_the_declared_task(reviews, tmp_path):
  config = _config(reviews)
  config.loop.num_loops = 1
  work = str(tmp_path / "w")
  result = modes.run("loop", config, work)
  assert result["task"] == "review_sentiment" and result["num_test_queries"] == 8
  assert {p["prompt"] for p in result["source_prompts"]} >= {"Sentiment?", "Good or bad?"}
  queries = tmp_path / "mine.txt"
  queries.write_text("What a lovely film.\nA complete waste of time.\n")
  config.optimize.update(input=str(queries), answer=True)
  assert modes.run("optimize", config, work)["rows"] == 2
  rows = [json.loads(x) for x in open(os.path.join(work, "optimized.jsonl"))]
  assert all(r["answer"] in ("Negative", "Positive") for r in rows)
  assert task_of(config.task).name == "review_sentiment"
