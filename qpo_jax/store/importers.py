"""Importers of published offline logs and prompt collections into `Record`s.

* QPO authors' JSON (a list of {prompt_method, query, label, prompt, <model>: {...}}):
  few-shot files carry `few_shot_accuracy` (per query) and `few_shot_avg_acc`
  (per prompt); zero-shot files carry a per-query correctness, the prompt's
  average accuracy and optionally the gold NLL. Rewards are the spec's.
* Prompt-OIRL correctness logs: one file per prompt alias, lines "(i, True)".
  They hold no NLL, so R = 10*correct + 10*avg_acc (the NLL term is 0).
* InstructEval-style prompt collections: <root>/<source>[/<model>]/<task>.yaml.

`fetch_published` downloads a published file (pinned to a commit, checked by its sha256)
where no local copy exists, e.g. in Colab: the authors' logs carry no license, so they
cannot ship with the package.

Every field is checked against the task: texts are non-empty strings, labels
whole numbers that index the task's options (2, 2.0 or the digit string "2";
not 1.5, "1.5", "2.0" or "two"), accuracies in 0..1, NLLs finite
and >= 0. A bad row is skipped and reported with its file and index; if more
than `max_bad_fraction` (default 1%) of a file's rows are bad, the import fails,
since a systematic fault would otherwise become the normaliser's min or max.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import shutil
import urllib.request
from typing import Any, Callable, Mapping, Sequence

import yaml

from qpo_jax.store.records import Record
from qpo_jax.store.tfrecord import file_sha256
from qpo_jax.tasks.sources import read_json_list

_EOT = "<|endoftext|>"


@dataclasses.dataclass
class ImportSummary:
  source: str
  imported: int = 0
  skipped: int = 0  # bad rows
  excluded: int = 0  # good rows of queries outside the run's split
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: list[str] = dataclasses.field(default_factory=list)  # first few skipped rows

  def skip(self, index: int, reason: str) -> None:
    self.skipped += 1
    self.reasons[reason] += 1
    if len(self.examples) < 10:
      self.examples.append(f"row {index}: {reason}")

  def check(self, total: int, max_bad_fraction: float) -> None:
    """Fails when more than `max_bad_fraction` of `total` rows were skipped as bad."""
    if total and self.skipped > max_bad_fraction * total:
      raise ValueError(f"{self.source}: {self.skipped} of {total} rows are bad (more than "
                       f"{max_bad_fraction:.0%}): " + "; ".join(self.examples)
                       + ("; ..." if self.skipped > len(self.examples) else ""))

  def __str__(self) -> str:
    why = "; ".join(f"{n} x {r}" for r, n in self.reasons.most_common())
    return (f"{self.source}: imported {self.imported}, skipped {self.skipped} bad"
            + (f" ({why}; first: {', '.join(self.examples[:3])})" if self.skipped else "")
            + (f", left out {self.excluded} of queries outside the run's split"
               if self.excluded else ""))


def _first(d: Mapping[str, Any], names: Sequence[str]):
  for n in names:
    if n in d and d[n] is not None:
      return d[n]
  return None


def _number(value: Any, what: str) -> float:
  if isinstance(value, bool) or value is None:
    raise ValueError(f"{what} is {value!r}, not a number")
  x = float(value)
  if math.isnan(x) or math.isinf(x):
    raise ValueError(f"{what} is {value!r}")
  return x


def _fraction(value: Any, what: str) -> float:
  x = _number(value, what)
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"{what} is {value!r}, not in 0..1")
  return x


def _text(value: Any, what: str, empty_ok: bool = False) -> str:
  if not isinstance(value, str) or not (empty_ok or value.strip()):
    raise ValueError(f"{what} is {value!r}, not a{'' if empty_ok else ' non-empty'} string")
  return value


def _label(value: Any, verbalizers: Sequence[str]) -> int:
  """A JSON number that is whole (2, 2.0) or a string of decimal digits ("2",
  as CSV-born files write them); 1.5, "1.5", "2.0", "two", true and null are rejected."""
  if isinstance(value, str):
    if not (value.strip().isascii() and value.strip().isdigit()):
      raise ValueError(f"label is {value!r}, not a whole number (a string label must be "
                       "decimal digits)")
    value = int(value)
  x = _number(value, "label")
  if not x.is_integer():
    raise ValueError(f"label is {value!r}, not a whole number")
  if verbalizers and not 0 <= x < len(verbalizers):
    raise ValueError(f"label is {value!r}, not one of the task's {len(verbalizers)} options")
  return int(x)


def _qpo_row(row: Any, model: str, task: str, target: str, verbalizers) -> Record:
  if not isinstance(row, Mapping):
    raise ValueError("not an object")
  for field in ("query", "prompt", "label"):
    if field not in row:
      raise ValueError(f"missing field {field!r}")
  query, prompt = _text(row["query"], "query"), _text(row["prompt"], "prompt", empty_ok=True)
  stats = row.get(model)
  if not isinstance(stats, Mapping):
    stats = {k[len(model) + 1:]: v for k, v in row.items() if k.startswith(model + ".")}
  if not stats:
    raise ValueError(f"no outcomes under {model!r}")
  label = _label(row["label"], verbalizers)
  gold = verbalizers[label] if verbalizers else str(label)
  prompt = prompt[:-len(_EOT)] if prompt.endswith(_EOT) else prompt
  source = str(row.get("prompt_method", "")).removeprefix("instructions/")
  common = dict(task=task, query=query.strip(), prompt=prompt, gold=gold, label=label,
                prompt_source=source, target=target, split="train")
  if "few_shot_accuracy" in stats:
    acc_q = _fraction(stats["few_shot_accuracy"], "few_shot_accuracy")
    avg = _fraction(_first(stats, ("few_shot_avg_acc",)), "few_shot_avg_acc")
    return Record(**common, setting="few_shot", acc_q=acc_q, avg_acc=avg,
                  reward=10.0 * (acc_q + avg))
  correct = _fraction(_first(stats, ("zero_shot_accuracy", "accuracy", "correct")), "accuracy")
  avg = _fraction(_first(stats, ("zero_shot_avg_acc", "avg_acc")), "avg_acc")
  nll_raw = _first(stats, ("zero_shot_nll", "nll", "loss"))
  nll = _number(nll_raw, "nll") if nll_raw is not None else 0.0
  if nll < 0:
    raise ValueError(f"nll is {nll_raw!r}, below 0")
  return Record(**common, setting="zero_shot", correct=correct, avg_acc=avg,
                gold_nll=nll if nll_raw is not None else float("nan"),
                reward=10.0 * correct + 10.0 * avg - nll)


def import_qpo_json(path: str, *, task: str, target: str | None = None, model: str | None = None,
                    verbalizers: Sequence[str] = (), max_bad_fraction: float = 0.01
                    ) -> tuple[list[Record], ImportSummary]:
  """Records of an authors' offline file; `model` is the outcome key (found if unique)."""
  rows = read_json_list(path)
  if model is None:
    known = {"prompt_method", "query", "label", "prompt"}
    found = collections.Counter(k.split(".")[0] for r in rows if isinstance(r, Mapping)
                                for k in r if k not in known)
    if len(found) != 1:
      raise ValueError(f"{path}: cannot tell the model key among {sorted(found)}; pass model=")
    model = next(iter(found))
  summary, out = ImportSummary(path), []
  for i, row in enumerate(rows):
    try:
      out.append(_qpo_row(row, model, task, target or model, tuple(verbalizers)))
    except (ValueError, TypeError) as e:
      summary.skip(i, str(e))
  summary.imported = len(out)
  summary.check(len(rows), max_bad_fraction)
  return out, summary


# The QPO authors' TweetEval-emotion log (Llama-2-7B-chat, few-shot), at the commit the
# project's data manifest pins.
AUTHORS_TWEET_EMOTION_LOG = (
    "https://raw.githubusercontent.com/KongYilun/QPO/8dc335e934ba2970b7cc9a2cd12653f01ec18216/"
    "data/tweet_emotion/tweet_emotion_llama7b_ocml_round1_few_shot_expert.json",
    "2993285d9cd131d5dc897635e229bcfe3922e44bb3545329100524656d234bfc")


def fetch_published(url: str, path: str, sha256: str, timeout: float = 60.0) -> str:
  """`path`, downloaded from `url` unless it already holds the bytes of `sha256`.

  The download goes to a temp file beside `path` and is renamed over it only once its
  sha256 matches, so an interrupted or altered download never poses as the file.
  """
  if os.path.isfile(path) and file_sha256(path) == sha256:
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.download"
  try:
    try:
      with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
        shutil.copyfileobj(response, fh)
    except OSError as e:
      raise OSError(f"cannot download {url} to {path}: {e}") from e
    got = file_sha256(tmp)
    if got != sha256:
      raise ValueError(f"{url}: sha256 {got} is not the expected {sha256}; {path} not written")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


_OIRL_LINE = re.compile(r"^\(\s*(\d+)\s*,\s*(True|False)\s*\)\s*$")


def _oirl_files(log_dir: str, task: str, alias: str, split: str) -> list[tuple[str, int]]:
  """(file, index offset) pairs holding `alias` for `split`, per the Prompt-OIRL layout.

  GSM8K: training prompts have train logs (`_corr_`, train.jsonl order) and test
  logs (`_test_corr_`, the first 1000 of test.jsonl); the gpt4_* held-out prompts
  only test logs, named `_corr_`. SVAMP: one index space of 19,690 queries (the
  five CV folds' train.csv concatenated); train = first 15,000, test = the rest;
  gpt4_* logs cover the test part with indices restarting at 0.
  """
  held_out = alias.startswith("gpt4_")
  if task == "svamp":
    return [(os.path.join(log_dir, f"llama_svamp_corr_{alias}.txt"), 15000 if held_out else 0)]
  if held_out:
    return [(os.path.join(log_dir, f"llama_{task}_corr_{alias}.txt"), 0)] if split == "test" else []
  infix = "_test" if split == "test" else ""
  return [(os.path.join(log_dir, f"llama_{task}{infix}_corr_{alias}.txt"), 0)]


def import_prompt_oirl(log_dir: str, *, task: str, prompts: Sequence[str],
                       aliases: Sequence[str], queries: Sequence[str] | None = None,
                       keep: Callable[[str], bool] | None = None,
                       split: str = "train", target: str = "llama-2-7b-chat",
                       svamp_train_size: int = 15000, max_bad_fraction: float = 0.01
                       ) -> tuple[list[Record], ImportSummary]:
  """Prompt-OIRL correctness logs of `split` for the given prompts (see `_oirl_files`).

  `queries[i]` is the text of query i in the log's index space (gsm8k: the
  split's jsonl in file order); without it the query is recorded as "#i".
  Rows whose query text `keep` rejects are left out (counted in the summary),
  and each prompt's avg_acc is over the rows kept.
  """
  if task not in ("gsm8k", "svamp"):
    raise ValueError(f"Prompt-OIRL logs exist for gsm8k and svamp, not {task!r}")
  summary, out = ImportSummary(log_dir), []
  for prompt, alias in zip(prompts, aliases):
    rows = []
    for path, offset in _oirl_files(log_dir, task, alias, split):
      if not os.path.exists(path):
        continue
      with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
          if not line.strip():
            continue
          m = _OIRL_LINE.match(line)
          i = int(m[1]) + offset if m else -1
          if not m:
            summary.skip(n, f"{os.path.basename(path)}: unparsable line")
          elif queries is not None and i >= len(queries):
            summary.skip(n, f"{os.path.basename(path)}: query index {i} out of range")
          elif task == "svamp" and (i < svamp_train_size) != (split == "train"):
            continue
          elif keep is not None and not keep(queries[i] if queries is not None else f"#{i}"):
            summary.excluded += 1
          else:
            rows.append((i, m[2] == "True"))
    if not rows:
      continue
    avg = sum(c for _, c in rows) / len(rows)
    for i, c in rows:
      out.append(Record(task=task, query=queries[i] if queries is not None else f"#{i}",
                        query_id=f"oirl:{i}", prompt=prompt, prompt_source=alias,
                        target=target, setting="zero_shot", split=split, correct=float(c),
                        avg_acc=avg, reward=10.0 * c + 10.0 * avg))
  summary.imported = len(out)
  if not out:
    raise FileNotFoundError(f"no Prompt-OIRL logs for task {task!r} ({split}) in {log_dir}")
  summary.check(len(out) + summary.skipped + summary.excluded, max_bad_fraction)
  return out, summary


def load_prompt_collection(root: str, task: str, sources: Sequence[str] | None = None,
                           model: str | None = None) -> dict[str, list[str]]:
  """{source: prompts} from <root>/<source>/<task>.yaml (per-model sources need `model`)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"prompt collection root {root} is not a directory")
  out: dict[str, list[str]] = {}
  for source in sources or sorted(os.listdir(root)):
    path = os.path.join(root, source, f"{task}.yaml")
    if not os.path.exists(path) and model:
      path = os.path.join(root, source, model, f"{task}.yaml")
    if not os.path.exists(path):
      if sources:
        raise FileNotFoundError(f"prompt collection {path} does not exist")
      continue
    with open(path, encoding="utf-8") as f:
      try:
        items = yaml.safe_load(f)
      except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
      raise ValueError(f"{path}: expected a YAML list of strings")
    out[source] = items
  if not out:
    raise FileNotFoundError(f"no prompt collections for task {task!r} under {root}")
  return out
