"""--mode=optimize: the policy's prompts (and the target's answers) for a user's own queries."""

import json
import os
import shutil

import pytest

from qpo_jax import optimize
from qpo_jax import rounds
from qpo_jax.context import Run
from qpo_jax.tasks import get_task

from tests.helpers import tiny_config
QUERIES = ["The election results are in tonight", "Fresh pasta with basil tonight",
           "Heavy rain is expected all weekend", "The new phone has a faster chip",
           "Our team won the final match", "A sunny and warm afternoon"]


@pytest.fixture
def work(tiny_run, tmp_path):
  """A copy of the shared tiny run's workdir (two trained rounds)."""
  dst = str(tmp_path / "work")
  shutil.copytree(tiny_run[0], dst)
  return dst


def _config(tmp_path, **optimize_fields):
  config = tiny_config()
  config.optimize.update(output=str(tmp_path / "out.jsonl"), batch_size=2, **optimize_fields)
  return config


def _jsonl(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def _rows(path):
  with open(path) as f:
    return [json.loads(ln) for ln in f]


def test_reads_jsonl_csv_and_text_and_names_bad_rows(tmp_path):
  task = get_task("topics")
  path = _jsonl(tmp_path / "q.jsonl", [json.dumps({"query": QUERIES[0]}), "{broken",
                                       json.dumps({"text": "no query field"}),
                                       json.dumps({"query": 7}), "", json.dumps(["a list"]),
                                       json.dumps({"query": QUERIES[1]})])
  rows, bad = optimize.read_queries(task, path, "query")
  assert [r.line for r in rows] == [1, 7] and rows[1].example.query == QUERIES[1]
  assert [b.split(": ")[0] for b in bad] == [f"{path}:2", f"{path}:3", f"{path}:4", f"{path}:6"]
  assert "not JSON" in bad[0] and "field 'query' is missing" in bad[1]
  csv_path = tmp_path / "q.csv"
  csv_path.write_text('id,query\n1,"A, with comma"\n2,\n3,Plain\n')
  rows, bad = optimize.read_queries(task, str(csv_path), "query")
  assert [r.example.query for r in rows] == ["A, with comma", "Plain"] and [r.line for r in rows] == [2, 4]
  assert bad == [f"{csv_path}:3: field 'query' is missing, empty or not text (has ['id', 'query'])"]
  txt = tmp_path / "q.txt"
  txt.write_text("first query\n\nsecond query\n")
  rows, bad = optimize.read_queries(task, str(txt), "ignored")
  assert [(r.line, r.example.query) for r in rows] == [(1, "first query"), (3, "second query")]
  with pytest.raises(ValueError, match="has several fields"):
    optimize.read_queries(get_task("boolq"), str(txt), "query")


@pytest.mark.integration
def test_greedy_prompts_and_answers_resume_after_a_cut(work, tmp_path):
  lines = [json.dumps({"query": q}) for q in QUERIES[:3]] + ["not json"] + \
      [json.dumps({"query": q}) for q in QUERIES[3:]]
  config = _config(tmp_path, input=_jsonl(tmp_path / "q.jsonl", lines), answer=True)
  summary = optimize.optimize(Run(config, work))
  assert summary["rows"] == 6 and summary["skipped"] == 1 and summary["round"] == 2
  full = _rows(config.optimize.output)
  assert [r["line"] for r in full] == [1, 2, 3, 5, 6, 7]
  expected = rounds.prompt_sampler(Run(config, work), 2)(QUERIES, collect=False, seed=config.seed)
  assert [r["prompt"] for r in full] == [p[0] for p in expected]
  options = get_task("topics").verbalizers
  assert all(r["answer"] in options for r in full)
  # a kill mid-write: the file ends after two rows and half a third
  text = open(config.optimize.output).read().splitlines(keepends=True)
  with open(config.optimize.output, "w") as f:
    f.write("".join(text[:2]) + text[2][:10])
  again = optimize.optimize(Run(config, work))
  assert again["written_now"] == 4 and _rows(config.optimize.output) == full


@pytest.mark.integration
def test_sampled_prompts_do_not_depend_on_where_a_run_was_cut(work, tmp_path):
  path = _jsonl(tmp_path / "q.jsonl", [json.dumps({"query": q}) for q in QUERIES])
  config = _config(tmp_path, input=path, num_samples=3)
  config.round = 1
  config.optimize.batch_size = 6
  optimize.optimize(Run(config, work))
  whole = _rows(config.optimize.output)
  assert all(len(r["prompts"]) == 3 and r["prompt"] == r["prompts"][0] for r in whole)
  os.remove(config.optimize.output)
  config.optimize.batch_size = 4
  with open(config.optimize.output, "w") as f:  # as if killed after the first 2 rows
    f.write("".join(json.dumps(r) + "\n" for r in whole[:2]))
  optimize.optimize(Run(config, work))
  assert _rows(config.optimize.output) == whole


def test_never_changes_a_file_it_did_not_write(tmp_path):
  path = _jsonl(tmp_path / "q.jsonl", [json.dumps({"query": q}) for q in QUERIES[:2]])
  config = _config(tmp_path, input=path)
  foreign = tmp_path / "out.jsonl"
  foreign.write_text('{"id": 1, "note": "mine"}\n{"id": 2, "no')  # a user's file, cut short
  before = foreign.read_bytes()
  with pytest.raises(ValueError, match=f"{foreign}:1: not a row that --mode=optimize wrote"):
    optimize.optimize(Run(config, str(tmp_path / "w")))
  assert foreign.read_bytes() == before
  foreign.write_text(json.dumps({"line": 1, "fields": {"text": "another query"}, "prompt": "p"})
                     + "\n")
  with pytest.raises(ValueError, match=r"was written for another version of .* \(line 1 differs\)"):
    optimize.optimize(Run(config, str(tmp_path / "w")))


def test_needs_input_and_a_trained_policy(tmp_path):
  config = _config(tmp_path)
  with pytest.raises(ValueError, match="needs --config.optimize.input"):
    optimize.optimize(Run(config, str(tmp_path / "w")))
  config.optimize.input = _jsonl(tmp_path / "q.jsonl", [json.dumps({"query": "x"})])
  with pytest.raises(FileNotFoundError, match="no trained policy in"):
    optimize.optimize(Run(config, str(tmp_path / "w")))


def test_a_single_foreign_line_without_newline_is_refused_not_dropped(tmp_path):
  path = _jsonl(tmp_path / "q.jsonl", [json.dumps({"query": q}) for q in QUERIES[:2]])
  config = _config(tmp_path, input=path)
  for text in ('{"id": 1, "note": "mine"}', "my notes", '{"line" 3}'):
    foreign = tmp_path / "out.jsonl"
    foreign.write_text(text)
    with pytest.raises(ValueError, match=f"{foreign}:1: not a row that --mode=optimize wrote"):
      optimize.optimize(Run(config, str(tmp_path / "w")))
    assert foreign.read_text() == text


def test_lines_that_are_not_utf8_are_named_and_skipped(tmp_path):
  task = get_task("topics")
  good = [json.dumps({"query": q}).encode() for q in QUERIES[:2]]
  path = tmp_path / "q.jsonl"
  path.write_bytes(good[0] + b"\n" + b'{"query": "caf\xe9"}\n' + good[1] + b"\n")
  rows, bad = optimize.read_queries(task, str(path), "query")
  assert [r.line for r in rows] == [1, 3]
  assert bad == [f"{path}:2: not UTF-8 text (byte 15 of the line is 0xe9)"]
  csv_path = tmp_path / "q.csv"
  csv_path.write_bytes(b'id,query\n1,"A, with\ncomma"\n2,caf\xe9\n3,Plain\n4,x,extra\n')
  rows, bad = optimize.read_queries(task, str(csv_path), "query")
  assert [(r.line, r.example.query) for r in rows] == [(3, "A, with\ncomma"), (5, "Plain")]
  assert bad == [f"{csv_path}:4: not UTF-8 text (byte 6 of the line is 0xe9)",
                 f"{csv_path}:6: 1 more cells than the header's 2 columns"]
  binary = tmp_path / "b.txt"
  binary.write_bytes(bytes(range(256)) * 4)  # a binary file: every line named, none read
  rows, bad = optimize.read_queries(task, str(binary), "query")
  assert rows == [] and len(bad) == 5  # 4 x 256 bytes hold 5 lines (4 newlines)
  assert bad[0] == f"{binary}:1: the line is not text (control character 0x00)"
  assert all("not UTF-8 text" in b or "is not text (control character" in b for b in bad)
