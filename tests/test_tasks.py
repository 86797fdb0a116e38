"""Task registry and loaders: the real files under ../shared/data, tfds mock data, general formats."""

import json
import os

import numpy as np
import pytest

from qpo_jax import prompts, tasks
from qpo_jax.tasks import base, sources

from tests.helpers import SHARED_DATA as DATA, repo_config
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data not present")


def _splits(name, **data):
  return tasks.load_splits({"name": name, "seed": 0, "data": data})


@needs_data
def test_tweet_emotion_files():
  task, s = _splits("tweet_emotion", dir=os.path.join(DATA, "tweet_emotion"))
  # spec: train = 80% of train, collect = validation, test = test; ours: validation = the
  # other 20% of train. Train's repeated tweets and those also in a later split are dropped
  # (2606 -> 2585)
  assert {k: len(v) for k, v in s.items()} == {"train": 2585, "collect": 374,
                                                "validation": 646, "test": 1421}
  uids = [{e.uid for e in v} for v in s.values()]
  assert sum(map(len, uids)) == len(set().union(*uids))  # the four splits are disjoint
  counts = np.bincount([e.label for e in s["test"]], minlength=4)
  assert counts.sum() == 1421 and (counts > 0).all()
  first = tasks.sources.read_file_split(
      {"dir": os.path.join(DATA, "tweet_emotion"), "format": "tweeteval", "files": {"t": "train"}},
      "t")[0][0]
  assert not first["text"].endswith(" ")  # the files' trailing space is stripped
  assert task.verbalizers == ("Anger", "Joy", "Optimism", "Sadness")


@needs_data
def test_ag_news_csv_without_header():
  task, s = _splits("ag_news", dir=os.path.join(DATA, "ag_news"),
                    files={"train": "test.csv[:50%]", "test": "test.csv[50%:]"})
  assert len(s["collect"]) + len(s["test"]) == 3800 and len(s["train"]) == 3420
  labels = [e.label for e in s["test"] + s["collect"]]
  assert set(labels) == {0, 1, 2, 3}  # 1..4 in the file, label_base=1
  ex = s["test"][0]
  assert "\\n" not in ex.fields["text"] and len(ex.fields["text"]) > 20


@needs_data
def test_math_files():
  task, s = _splits("gsm8k", dir=os.path.join(DATA, "gsm8k"))
  assert len(s["test"]) == 1319 and len(s["train"]) == round(0.45 * 7473)
  assert all(e.answer is not None and "####" not in e.solution for e in s["train"][:200])
  with open(os.path.join(DATA, "gsm8k", "test.jsonl")) as f:
    row = json.loads(f.readline())
  ex = task.to_example(row, "x")
  assert ex.answer == float(row["answer"].split("####")[1].replace(",", ""))
  assert "<<" not in ex.solution
  task, s = _splits("svamp", dir=os.path.join(DATA, "svamp"))
  # train: the MAWPS / ASDiv-A / SVAMP fold file less SVAMP.json's problems; collect and
  # test: SVAMP.json's first 700 and last 300, of the 700 the last 70 are validation
  assert (len(s["train"]), len(s["collect"]), len(s["validation"]), len(s["test"])) == (
      2961, 630, 70, 300)
  assert all(float(e.answer) == e.answer for e in s["test"])


@needs_data
def test_boolq_and_cosmos_files():
  task, s = _splits("boolq", dir=os.path.join(DATA, "boolq"),
                    files={"train": "dev.jsonl[:2000]", "validation": "dev.jsonl[2000:]"})
  assert len(s["test"]) == round(0.9 * 1270)
  assert {e.label for e in s["train"]} == {0, 1}
  assert task.options(s["train"][0]) == ("False", "True")
  task, s = _splits("cosmos_qa", dir=os.path.join(DATA, "cosmos_qa"),
                    files={"train": "valid.csv[:2000]", "validation": "valid.csv[2000:]"})
  ex = s["test"][0]
  assert len(task.options(ex)) == 4 and task.options(ex)[ex.label]
  assert len(s["test"]) == 854  # 985 rows, 131 repeat a (passage, question) of another


@needs_data
def test_the_nlu_config_keeps_cosmos_qa_enough_validation_rows(monkeypatch):
  """configs/nlu.py:task=cosmos_qa reads Cosmos QA's valid split alone: the task's own rules
  (validation = 1% of the train half) left 13 rows; its task.split_rules take the first
  10% of the test half instead, disjoint from the test split, which keeps the rest."""
  monkeypatch.setenv("QPO_DATA", DATA)
  config = repo_config("nlu.py:task=cosmos_qa")
  task, s = tasks.load_splits(config.task)
  assert task.splits["validation"] == base.SplitRule("validation", 0.0, 0.1)
  assert task.splits["test"] == base.SplitRule("validation", 0.1, 1.0)
  assert task.splits["train"] == tasks.get_task("cosmos_qa").splits["train"]
  _, whole = tasks.load_splits({**config.task.to_dict(),
                                "split_rules": {"validation": None, "test": None}})
  assert len(whole["validation"]) == 13  # the spec's rules on this layout
  assert len(s["validation"]) == 130 and len(s["test"]) == 1167
  assert len(s["validation"]) + len(s["test"]) == len(whole["test"])  # the same rows, split
  assert not {e.query for e in s["validation"]} & {e.query for e in s["test"]}
  assert [e.query for e in s["train"]] == [e.query for e in whole["train"]]


@pytest.mark.parametrize("text, rule", [
    ("validation", base.SplitRule("validation", 0.0, 1.0)),
    ("validation[:10%]", base.SplitRule("validation", 0.0, 0.1)),
    (" train[90%:95.5%] ", base.SplitRule("train", 0.9, 0.955)),
    ("test[10%:]", base.SplitRule("test", 0.1, 1.0))])
def test_a_split_rule_is_read_from_its_config_text(text, rule):
  assert base.parse_split_rule(text, "task.split_rules.test") == rule


@pytest.mark.parametrize("text", ["train[:10]", "train[20%:10%]", "train[0%:120%]",
                                  "train[a%:]", "train[:10%", "", "train validation"])
def test_a_bad_split_rule_names_its_field(text):
  with pytest.raises(ValueError, match=r"task.split_rules.collect="):
    base.parse_split_rule(text, "task.split_rules.collect")


def test_split_rules_replace_the_tasks_own_and_name_an_unknown_source():
  """A built-in task (no files): its one source split 'all' cut differently by the config;
  an unset entry keeps the task's rule; a source the task does not have is named."""
  cfg = {"name": "topics", "seed": 0, "data": {"kind": "builtin", "size": 400, "seed": 0}}
  own, s_own = tasks.load_splits(cfg)
  task, s = tasks.load_splits({**cfg, "split_rules": {"collect": "all[50%:60%]",
                                                      "validation": "all[60%:75%]",
                                                      "test": "", "train": None}})
  assert task.splits["validation"] == base.SplitRule("all", 0.6, 0.75)
  assert task.splits["collect"] == base.SplitRule("all", 0.5, 0.6)
  assert task.splits["train"] == own.splits["train"] and task.splits["test"] == own.splits["test"]
  assert len(s["validation"]) == 3 * len(s_own["validation"])
  assert [e.query for e in s["test"]] == [e.query for e in s_own["test"]]
  with pytest.raises(ValueError, match=r"task.split_rules.test='train\[:10%\]'.*'all'"):
    tasks.task_of({**cfg, "split_rules": {"test": "train[:10%]"}})


def test_general_csv_and_jsonl_with_column_names(tmp_path):
  (tmp_path / "train.csv").write_text("review,stars\ngreat film,1\nawful,0\nfine,1\n")
  (tmp_path / "test.jsonl").write_text('{"body": "boring", "y": 0}\n{"body": "superb", "y": 1}\n')
  spec = {"dir": str(tmp_path), "columns": {"text": "review", "label": "stars"}, "format": "csv",
          "files": {"train": "train.csv"}}
  task = tasks.get_task("imdb")
  rows = sources.load_split(task, spec, "train")
  assert [(e.fields["text"], e.label) for e in rows] == [("great film", 1), ("awful", 0),
                                                         ("fine", 1)]
  spec = {"dir": str(tmp_path), "columns": {"text": "body", "label": "y"}, "format": "jsonl",
          "files": {"test": "test.jsonl"}}
  assert [e.label for e in sources.load_split(task, spec, "test")] == [0, 1]


def test_bad_data_is_named(tmp_path):
  task = tasks.get_task("imdb")
  (tmp_path / "t.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": "x", "label": 7}\n')
  spec = {"dir": str(tmp_path), "format": "jsonl", "files": {"train": "t.jsonl"}}
  with pytest.raises(sources.DataError, match=r"t.jsonl, record 1.*outside"):
    sources.load_split(task, spec, "train")
  (tmp_path / "b.jsonl").write_text('{"text": "ok", "label": 1}\n{oops\n')
  with pytest.raises(sources.DataError, match=r"b.jsonl line 2"):
    sources.load_split(task, {**spec, "files": {"train": "b.jsonl"}}, "train")
  with pytest.raises(sources.DataError, match=r"missing.jsonl"):
    sources.load_split(task, {**spec, "files": {"train": "missing.jsonl"}}, "train")
  with pytest.raises(sources.DataError, match="data.dir"):
    sources.load_split(task, {**spec, "dir": str(tmp_path / "nope")}, "train")
  with pytest.raises(ValueError, match="task.name='nope'"):
    tasks.get_task("nope")
  with pytest.raises(ValueError, match="no tensorflow-datasets builder"):
    tasks.data_spec(tasks.get_task("tweet_emotion"), {"kind": "tfds"})


@pytest.mark.parametrize("name,n_labels", [("ag_news", 4), ("imdb", 2), ("boolq", 2),
                                           ("cosmos_qa", 4)])
def test_tfds_mock(name, n_labels):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    task, s = _splits(name, kind="tfds")
  assert sum(len(v) for v in s.values()) > 0
  ex = (s["test"] or s["train"])[0]
  assert 0 <= ex.label < len(task.options(ex)) == n_labels


def _hellaswag_rows(split, **kwargs):
  del kwargs
  rng = np.random.default_rng(len(split))
  return [{"context": f"ctx {split} {i}", "endings": np.array([f"e{j}" for j in range(4)]),
           "label": np.array(int(rng.integers(4)), np.int32), "activity_label": "a"}
          for i in range(30)]


def test_tfds_mock_hellaswag():
  tfds = pytest.importorskip("tensorflow_datasets")

  def source(builder, split, **kwargs):  # realistic rows: 4 endings, label in range
    del builder
    return _hellaswag_rows(str(split), **kwargs)

  with tfds.testing.mock_data(as_data_source_fn=source):
    task, s = _splits("hellaswag", kind="tfds")
  assert len(s["train"]) == round(0.81 * 30) and len(s["test"]) == 30
  ex = s["test"][0]
  assert task.options(ex) == ("e0", "e1", "e2", "e3")
  assert task.render(ex, "Pick.").endswith("Sentence: " + ex.fields["context"] + "\nAnswer:")


@needs_data
def test_the_nlu_config_reads_its_tfds_tasks_from_tensorflow_datasets(monkeypatch):
  """configs/nlu.py:task=hellaswag / imdb: the recipe's task section loads the splits from
  tensorflow-datasets (mock rows here), and its prompts from InstructEval's collection."""
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setenv("QPO_DATA", DATA)

  def source(builder, split, **kwargs):
    if "hellaswag" in str(builder):
      return _hellaswag_rows(str(split), **kwargs)
    return [{"text": f"{split} review {i}".encode(), "label": np.array(i % 2, np.int64)}
            for i in range(40)]

  for name in ("hellaswag", "imdb"):
    config = repo_config(f"nlu.py:task={name}")
    with tfds.testing.mock_data(as_data_source_fn=source):
      task, s = tasks.load_splits(config.task)
    assert task.name == name and s["train"] and s["test"]
    sources_ = prompts.source_prompts(config.offline, task)
    assert len(sources_) == 31 and {src for src, _ in sources_} >= {"manual", "rlprompt"}


def test_tfds_mock_gsm8k():
  tfds = pytest.importorskip("tensorflow_datasets")

  def source(builder, split, **kwargs):  # the builder's layout: answer = solution + "#### n"
    del builder, kwargs
    return [{"question": f"{split}: what is {i} + 2?", "answer": f"{i} + 2 = <<{i}+2={i + 2}>>"
             f"{i + 2}\n#### {i + 2:,}", "annotation": "", "short_answer": str(i + 2)}
            for i in range(998, 1018)]

  with tfds.testing.mock_data(as_data_source_fn=source):
    task, s = _splits("gsm8k", kind="tfds")
  assert len(s["test"]) == 20 and len(s["train"]) == 9
  ex = s["test"][0]
  assert ex.answer == int(ex.query.split()[3]) + 2 and "<<" not in ex.solution


def test_tfds_mock_bad_rows_are_named():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=3):  # random mock: 24 endings, label 58
    with pytest.raises(sources.DataError, match=r"tfds hellaswag/train, record 0.*label 58"):
      _splits("hellaswag", kind="tfds")


@pytest.mark.parametrize("name", ["topics", "arithmetic"])
def test_builtin_tasks(name):
  task, s = _splits(name)
  _, again = _splits(name)
  assert [e.query for e in s["test"]] == [e.query for e in again["test"]]  # seeded
  # the generator repeats some texts; they are dropped before splitting (800 rows)
  assert {k: len(v) for k, v in s.items()} == {
      "topics": {"train": 368, "collect": 146, "validation": 37, "test": 184},
      "arithmetic": {"train": 400, "collect": 159, "validation": 40, "test": 200}}[name]
  assert len({e.query for e in s["train"]}) > 300  # varied, not a handful of templates
  assert task.source_prompts and all(task.source_prompts.values())
  if task.kind == base.MATH:
    for e in s["train"][:50]:  # the worked solution ends with the gold answer
      assert base.extract_answer(e.solution) == e.answer
  else:
    assert set(np.bincount([e.label for e in s["train"]])) and len(set(
        e.label for e in s["train"])) == 4


_EVERY_TASK_WITH_DATA = {
    "tweet_emotion": {},  # the files ship in the package
    "ag_news": dict(dir=os.path.join(DATA, "ag_news"),
                    files={"train": "test.csv[:50%]", "test": "test.csv[50%:]"}),
    "gsm8k": dict(dir=os.path.join(DATA, "gsm8k")),
    "svamp": dict(dir=os.path.join(DATA, "svamp")),
    "boolq": dict(dir=os.path.join(DATA, "boolq"),
                  files={"train": "dev.jsonl[:2000]", "validation": "dev.jsonl[2000:]"}),
    "cosmos_qa": dict(dir=os.path.join(DATA, "cosmos_qa"),
                      files={"train": "valid.csv[:2000]", "validation": "valid.csv[2000:]"}),
    "topics": {}, "arithmetic": {},
}


@pytest.mark.parametrize("name", sorted(_EVERY_TASK_WITH_DATA))
def test_no_text_is_in_two_places(name):
  """Texts are deduplicated before splitting: no test query is trained on or collected."""
  data = _EVERY_TASK_WITH_DATA[name]
  if data.get("dir") and not os.path.isdir(data["dir"]):
    pytest.skip("../shared/data not present")
  _, s = _splits(name, **data)
  texts = [e.query for split in ("train", "collect", "test") for e in s[split]]
  assert len(texts) == len(set(texts)) and all(s.values())
  assert len(tasks.unique_texts(s["train"] + s["train"][:3])) == len(s["train"])


def test_imdb_and_hellaswag_tfds_mock_splits_are_disjoint():
  """The tasks without files here, on tfds mock data (hellaswag: the same context in two
  source splits must stay in one)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=40):
    _, imdb = _splits("imdb", kind="tfds")

  def source(builder, split, **kwargs):
    del builder
    rows = _hellaswag_rows(str(split), **kwargs)
    return rows + [dict(rows[0], context="a context in both splits")]

  with tfds.testing.mock_data(as_data_source_fn=source):
    _, hella = _splits("hellaswag", kind="tfds")
  for s in (imdb, hella):  # (imdb's mock repeats the same texts in train and test)
    texts = [e.query for split in ("train", "collect", "test") for e in s[split]]
    assert len(texts) == len(set(texts)) and s["test"]
  assert sum(e.query == "a context in both splits" for v in hella.values() for e in v) == 1


def test_render_layout_and_demos():
  task = tasks.get_task("tweet_emotion")
  q = base.Example("q", {"text": "so happy today"}, label=1)
  d = base.Example("d", {"text": "this is awful"}, label=0)
  assert task.render(q, "Classify.", [d]) == (
      "Classify.\n\nTweet: this is awful\nEmotion: Anger\n\nTweet: so happy today\nEmotion:")
  assert task.render(q, "") == "Tweet: so happy today\nEmotion:"
  math = tasks.get_task("gsm8k")
  m = base.Example("m", {"question": "What is 2+3?"}, answer=5.0)
  assert math.render(m, "Think.").startswith("What is 2+3?\nThink.")
  rows = [base.Example(str(i), {"text": " ".join(["w"] * 150)}, label=i % 4) for i in range(40)]
  sets = base.demo_sets(rows, k=5, n=6, seed=1)
  assert len(sets) == 5 and all(len(s) == 6 and len({e.uid for e in s}) == 6 for s in sets)
  assert all(len(e.fields["text"].split()) == 100 for e in sets[0])  # cut to 100 words
  assert sets == base.demo_sets(rows, k=5, n=6, seed=1)
  assert base.demos_id(sets[0]) != base.demos_id(sets[1])


def test_balanced_sampling():
  rows = [base.Example(str(i), {"text": f"t{i}"}, label=0 if i < 90 else 1 + i % 3)
          for i in range(120)]
  picked = base.sample_queries(rows, 40, seed=0)
  assert sorted(np.bincount([e.label for e in picked])) == [10, 10, 10, 10]
  assert len({e.uid for e in picked}) == 40


@pytest.mark.parametrize("text,value", [
    ("so 3 + 4 = 7. Final Answer: 7", 7.0), ("Final answer: $1,250.50", 1250.5),
    ("The answer is 12 apples, then 15.", 15.0), ("Final Answer: -3\nCheck: 5", -3.0),
    ("no numbers here", None), ("It is 7.", 7.0)])
def test_extract_answer(text, value):
  assert base.extract_answer(text) == value


def test_numbers_equal():
  assert base.numbers_equal(3.0, 3.0000000001) and not base.numbers_equal(3.0, 3.01)
  assert not base.numbers_equal(None, 3.0)
