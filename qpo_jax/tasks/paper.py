"""The paper's eight tasks: templates, options, converters, splits and data defaults.

Templates and verbalizers follow the QPO/InstructEval default prompts; splits
follow the spec's table (train / collect / test as fractions of the source
splits after a seeded shuffle), plus a validation split (`_splits`). File defaults name the published formats
(the files under ../shared/data for the tasks that have them); tfds defaults
name the tensorflow-datasets builder.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import yaml

from qpo_jax.tasks.base import (CHOICE, MATH, Example, SplitRule, Task, format_number,
                                parse_number)


DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def package_data(name: str) -> str:
  """A data directory shipped inside the package (qpo_jax/data/<name>)."""
  return os.path.join(DATA_DIR, name)


def packaged_prompts(task_name: str) -> dict[str, tuple[str, ...]]:
  """{source: prompts} of the collection shipped for a task (qpo_jax/data/prompts/<task>.yaml)."""
  path = os.path.join(DATA_DIR, "prompts", f"{task_name}.yaml")
  with open(path, encoding="utf-8") as f:
    found = yaml.safe_load(f)
  if not isinstance(found, dict) or not all(
      isinstance(v, list) and all(isinstance(p, str) for p in v) for v in found.values()):
    raise ValueError(f"{path}: expected a mapping of source name -> list of prompt strings")
  return {source: tuple(prompts) for source, prompts in found.items()}


def _label(row: Mapping[str, Any], n: int) -> int:
  value = row["label"]
  label = int(value)
  if not 0 <= label < n:
    raise ValueError(f"label {value!r} is outside 0..{n - 1}")
  return label


def _clean(text: Any) -> str:
  """One line of plain text: HTML breaks and escaped newlines become spaces."""
  text = str(text).replace("<br />", " ").replace("\\n", " ")
  return re.sub(r"\s+", " ", text).strip()


def _text_task(name: str, field: str, answer_name: str, verbalizers: tuple[str, ...],
               splits: Mapping[str, SplitRule], manual: str, file_defaults, tfds_defaults,
               text_of=lambda row: row["text"]) -> Task:
  def to_example(row, uid):
    return Example(uid, {"text": _clean(text_of(row))}, label=_label(row, len(verbalizers)))
  return Task(name=name, kind=CHOICE, field_names=(("text", field),), answer_name=answer_name,
              verbalizers=verbalizers, splits=splits, to_example=to_example, manual_prompt=manual,
              file_defaults=file_defaults, tfds_defaults=tfds_defaults)


def _news_text(row) -> str:
  if "text" in row:
    return row["text"]
  return f"{_clean(row['title'])} {_clean(row['description'])}"


def _bool_label(row) -> int:
  value = row["answer"] if "answer" in row else row["label"]
  if isinstance(value, str):
    if value.strip().lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"answer {value!r} is not a boolean")
    return int(value.strip().lower() in ("true", "1"))
  return int(bool(value))


def _boolq_example(row, uid):
  return Example(uid, {"passage": _clean(row["passage"]), "question": _clean(row["question"])},
                 label=_bool_label(row))


def _cosmos_example(row, uid):
  options = tuple(_clean(row[f"answer{i}"]) for i in range(4))
  return Example(uid, {"context": _clean(row["context"]), "question": _clean(row["question"])},
                 label=_label(row, 4), options=options)


def _hellaswag_example(row, uid):
  context = row.get("ctx", row.get("context"))
  if context is None:
    raise KeyError("ctx")
  endings = tuple(_clean(e) for e in row["endings"])
  if len(endings) < 2:
    raise ValueError(f"{len(endings)} endings; multiple choice needs at least 2")
  return Example(uid, {"context": _clean(context)}, label=_label(row, len(endings)),
                 options=endings)


_CALC = re.compile(r"<<[^>]*>>")


def _gsm8k_example(row, uid):
  answer = str(row["answer"])
  if "####" in answer:
    solution, final = answer.rsplit("####", 1)
  elif "short_answer" in row:
    solution, final = row.get("annotation", ""), row["short_answer"]
  else:
    raise ValueError("answer has no '#### <number>' line")
  return Example(uid, {"question": _clean(row["question"])},
                 answer=parse_number(final, "gsm8k"), solution=_CALC.sub("", str(solution)).strip())


_NUMBER_SLOT = re.compile(r"\bnumber(\d+)\b")


def _unmask(text: str, numbers: list[str]) -> str:
  """SVAMP's CSV layout: 'numberK' placeholders filled from the Numbers column, and the
  tokenised spacing (' .', ' ,') undone."""
  def fill(m):
    k = int(m[1])
    if k >= len(numbers):
      raise ValueError(f"number{k} has no value among Numbers={' '.join(numbers)!r}")
    return format_number(parse_number(numbers[k], "svamp Numbers"))
  return re.sub(r" ([.,?!;:])", r"\1", _NUMBER_SLOT.sub(fill, _clean(text)))


def _svamp_example(row, uid):
  """SVAMP.json objects (Body, Question, Equation, Answer), the CSV files of the SVAMP repo
  (MAWPS + ASDiv-A and the CV folds: Question with numberK slots, Numbers), or plain rows."""
  if "Numbers" in row:
    numbers = str(row["Numbers"]).split()
    question = _unmask(row["Question"], numbers)
    equation = _unmask(row.get("Equation", ""), numbers)
  elif "Body" in row:
    question = f"{_clean(row['Body'])} {_clean(row['Question'])}"
    equation = str(row.get("Equation", "")).strip()
  else:
    question, equation = _clean(row["question"]), str(row.get("Equation", "")).strip()
  answer = row["Answer"] if "Answer" in row else row["answer"]
  return Example(uid, {"question": question}, answer=parse_number(answer, "svamp"),
                 solution=f"{equation} = {format_number(parse_number(answer, 'svamp'))}"
                 if equation else "")


def svamp_fold_queries(directory: str) -> list[Example]:
  """The five CV folds' train.csv of the SVAMP repo in fold order: the 19,690-query index
  space of Prompt-OIRL's SVAMP logs (MAWPS, ASDiv-A and SVAMP problems; folds overlap)."""
  from qpo_jax.tasks import sources  # pylint: disable=g-import-not-at-top

  out = []
  for k in range(5):
    rows, where = sources.read_file_split(
        {"dir": directory, "format": "csv", "files": {"f": f"cv_svamp_augmented/fold{k}/train.csv"}},
        "f")
    out += sources.to_examples(svamp(), rows, where, f"fold{k}")
  return out


def _math_task(name, splits, to_example, file_defaults, tfds_defaults) -> Task:
  return Task(name=name, kind=MATH, field_names=(("question", "Question"),), answer_name="",
              splits=splits, to_example=to_example,
              manual_prompt="Let's think step by step.",
              file_defaults=file_defaults, tfds_defaults=tfds_defaults)


def _choice_task(name, field_names, to_example, splits, manual, file_defaults, tfds_defaults,
                 verbalizers=()) -> Task:
  return Task(name=name, kind=CHOICE, field_names=field_names, answer_name="Answer",
              verbalizers=verbalizers, splits=splits, to_example=to_example,
              manual_prompt=manual, file_defaults=file_defaults, tfds_defaults=tfds_defaults)


def _splits(train, collect, test, validation) -> dict[str, SplitRule]:
  """The spec's train / collect / test rules, and a validation split (never in D_0, never
  collected, never tested on) for choosing settings: rows the spec's rules leave unused, or
  else the last tenth of the collect rows."""
  return {"train": SplitRule(*train), "collect": SplitRule(*collect), "test": SplitRule(*test),
          "validation": SplitRule(*validation)}


def ag_news() -> Task:
  return _text_task(
      "ag_news", "News", "Category", ("World", "Sports", "Business", "Sci/Tech"),
      _splits(("train", 0, .9), ("test", 0, .1), ("test", .1, 1), ("train", .9, 1)),
      "Classify the news article into World, Sports, Business or Sci/Tech.",
      dict(format="csv", header=False, columns=["label", "title", "description"], label_base=1,
           files={"train": "train.csv", "test": "test.csv"}),
      dict(name="ag_news_subset", splits={"train": "train", "test": "test"}),
      text_of=_news_text)


def imdb() -> Task:
  return _text_task(
      "imdb", "Review", "Sentiment", ("Negative", "Positive"),
      _splits(("train", 0, .855), ("train", .855, .905), ("test", 0, 1), ("train", .905, 1)),
      "Is the sentiment of the movie review Negative or Positive?",
      dict(format="csv", header=True, files={"train": "train.csv", "test": "test.csv"}),
      dict(name="imdb_reviews", splits={"train": "train", "test": "test"}))


def tweet_emotion() -> Task:
  """TweetEval emotion; its files and our own source prompts ship in the package (NOTICE)."""
  task = _text_task(
      "tweet_emotion", "Tweet", "Emotion", ("Anger", "Joy", "Optimism", "Sadness"),
      _splits(("train", 0, .8), ("validation", 0, 1), ("test", 0, 1), ("train", .8, 1)),
      "Classify the emotion of the tweet as Anger, Joy, Optimism or Sadness.",
      dict(format="tweeteval", dir=package_data("tweet_emotion"),
           files={"train": "train", "validation": "val", "test": "test"}),
      {})
  return dataclasses.replace(task, source_prompts=packaged_prompts("tweet_emotion"))


def boolq() -> Task:
  return _choice_task(
      "boolq", (("passage", "Passage"), ("question", "Question")), _boolq_example,
      _splits(("train", 0, .81), ("train", .81, .91), ("validation", 0, .9), ("train", .91, 1)),
      "Read the passage and answer the question with True or False.",
      dict(format="jsonl", files={"train": "train.jsonl", "validation": "dev.jsonl"}),
      dict(name="bool_q", splits={"train": "train", "validation": "validation"}),
      verbalizers=("False", "True"))


def cosmos_qa() -> Task:
  return _choice_task(
      "cosmos_qa", (("context", "Passage"), ("question", "Question")), _cosmos_example,
      _splits(("train", 0, .9), ("train", .9, .99), ("validation", 0, 1), ("train", .99, 1)),
      "Read the passage and choose the most plausible answer to the question.",
      dict(format="csv", header=True, files={"train": "train.csv", "validation": "valid.csv"}),
      dict(name="cosmos_qa", splits={"train": "train", "validation": "validation"}))


def hellaswag() -> Task:
  return _choice_task(
      "hellaswag", (("context", "Sentence"),), _hellaswag_example,
      _splits(("train", 0, .81), ("train", .81, .91), ("validation", 0, 1), ("train", .91, 1)),
      "Choose the most likely continuation of the sentence.",
      dict(format="jsonl",
           files={"train": "hellaswag_train.jsonl", "validation": "hellaswag_val.jsonl"}),
      dict(name="hellaswag", splits={"train": "train", "validation": "validation"}))


def gsm8k() -> Task:
  return _math_task(
      "gsm8k", _splits(("train", 0, .45), ("train", .45, .95), ("test", 0, 1), ("train", .95, 1)), _gsm8k_example,
      dict(format="jsonl", files={"train": "train.jsonl", "test": "test.jsonl"}),
      dict(name="gsm8k", splits={"train": "train", "test": "test"}))


def svamp() -> Task:
  """SVAMP. D_0 is built on MAWPS + ASDiv-A (the SVAMP repo's mawps-asdiv-a_svamp/train.csv,
  3,138 problems: the benchmark's training data, none of them a SVAMP problem); collection uses
  90% of the first 700 of the 1,000 SVAMP challenge problems, validation the other 10%, and the
  test the last 300. (The spec's 1.8% / 98% of 700 left 13 train queries, too few to train a
  policy on.)"""
  return _math_task(
      "svamp", _splits(("train", 0, 1), ("validation", 0, .9), ("test", 0, 1),
                       ("validation", .9, 1)), _svamp_example,
      dict(format="auto", files={"train": "mawps-asdiv-a_svamp/train.csv",
                                 "validation": "SVAMP.json[:700]", "test": "SVAMP.json[700:]"}),
      {})
