"""Offline store: TFRecord round trip, independent readers, corruption, importers, resume;
the policy's training rows and batches read from it."""

import dataclasses
import json
import re
import math
import os

import numpy as np
import pytest

from qpo_jax import evaluation, rewards, rounds, sharding
from qpo_jax.eval_cache import EvalCache
from qpo_jax.checkpoints.registry import load_model
from qpo_jax import d0
from qpo_jax.policy import batches, training_rows
from qpo_jax.store import dataset, importers, records, summary, tfrecord
from qpo_jax.store.records import Record
from qpo_jax.targets import LocalTarget
from qpo_jax.tokens import token_counts
from qpo_jax.tasks import get_task

from tests.helpers import SHARED_DATA as DATA
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data not present")
QPO_FILE = os.path.join(DATA, "qpo_offline", "tweet_emotion",
                        "tweet_emotion_llama7b_ocml_round1_few_shot_expert.json")


def _records(n=7):
  out = []
  for i in range(n):
    out.append(Record(task="tweet_emotion", query=f"tweet {i} ünïcode 🙂\nline", prompt=f"p{i % 3}",
                      reward=1.5 * i - 2, split="train", query_id=f"train:{i}", gold="Joy",
                      label=1, prompt_source="manual", target="local:x", setting="zero_shot",
                      correct=float(i % 2), pred=i % 4, option_nll=(0.5, 1.25, 3.0, 0.0),
                      gold_nll=1.25, answer="", response="", acc_q=math.nan, avg_acc=0.5,
                      loop=i % 2))
  return out


def test_round_trip_every_field(tmp_path):
  recs = _records() + [Record(task="gsm8k", query="q", prompt="", reward=-0.25, setting="zero_shot",
                              answer="12", response="so 12", response_nll=0.75, correct=1.0)]
  manifest = dataset.write_dataset(str(tmp_path / "ds"), recs, records_per_shard=3)
  assert [s["count"] for s in manifest["shards"]] == [3, 3, 2]
  back, m2 = dataset.read_dataset(str(tmp_path / "ds"))
  assert m2 == manifest and len(back) == len(recs)
  assert all(records.same(a, b) for a, b in zip(recs, back))
  assert back[0].query == recs[0].query and back[0].option_nll == (0.5, 1.25, 3.0, 0.0)
  assert not records.same(recs[0], recs[1])


def test_independent_reader_tfrecord_package(tmp_path):
  reader = pytest.importorskip("tfrecord.reader")
  recs = _records(4)
  dataset.write_dataset(str(tmp_path / "ds"), recs)
  path = str(tmp_path / "ds" / dataset.shard_name(0, 1))
  rows = list(reader.tfrecord_loader(path, None, {"query": "byte", "reward": "float",
                                                  "label": "int", "option_nll": "float"}))
  assert len(rows) == 4
  for r, row in zip(recs, rows):
    assert bytes(row["query"]).decode() == r.query and int(row["label"][0]) == r.label
    assert row["reward"][0] == pytest.approx(r.reward)
    np.testing.assert_allclose(row["option_nll"], r.option_nll)


def test_tensorflow_reader_if_installed(tmp_path):
  tf = pytest.importorskip("tensorflow")
  recs = _records(3)
  dataset.write_dataset(str(tmp_path / "ds"), recs)
  raw = list(tf.data.TFRecordDataset(str(tmp_path / "ds" / dataset.shard_name(0, 1))))
  assert len(raw) == 3 and records.same(records.from_example(raw[0].numpy()), recs[0])


def test_flipped_byte_and_truncation_are_detected(tmp_path):
  d = str(tmp_path / "ds")
  dataset.write_dataset(d, _records(5))
  path = os.path.join(d, dataset.shard_name(0, 1))
  blob = bytearray(open(path, "rb").read())
  first_len = int.from_bytes(blob[:8], "little")
  blob[16 + first_len + 16 + 40] ^= 0x01  # inside record 1's data
  open(path, "wb").write(bytes(blob))
  with pytest.raises(tfrecord.CorruptRecordError, match=r"data-00000-of-00001.tfrecord: record 1 "
                     r"at byte \d+: data CRC mismatch"):
    dataset.read_dataset(d)
  blob[16 + first_len + 16 + 40] ^= 0x01
  open(path, "wb").write(bytes(blob[:-7]))  # truncated last record
  with pytest.raises(tfrecord.CorruptRecordError, match=r"record 4 at byte \d+ is truncated"):
    dataset.read_dataset(d)
  with pytest.raises(dataset.IncompleteDatasetError, match="no manifest.json"):
    dataset.read_dataset(str(tmp_path))
  with pytest.raises(FileExistsError):
    dataset.write_dataset(d, _records(2))


def test_crc_matches_the_tfrecord_spec():
  # masked CRC-32C of the empty string, as TensorFlow writes it for a 0-length record
  framed = tfrecord.frame(b"")
  assert framed[:8] == b"\0" * 8 and framed[12:] == (0xA282EAD8).to_bytes(4, "little")


@needs_data
def test_import_qpo_tweet_emotion():
  task = get_task("tweet_emotion")
  recs, summary = importers.import_qpo_json(QPO_FILE, task="tweet_emotion",
                                            verbalizers=task.verbalizers)
  assert (summary.imported, summary.skipped) == (8587, 0)
  assert len({r.query for r in recs}) == 260 and len({r.prompt for r in recs}) == 151
  assert all(r.setting == "few_shot" and r.target == "llama7b" for r in recs)
  assert not any(r.prompt.endswith("<|endoftext|>") for r in recs)
  for r in recs:
    assert r.reward == pytest.approx(10 * (r.acc_q + r.avg_acc))
    assert 0.7 <= r.acc_q <= 1.0 and 0 <= r.avg_acc <= 1
  values = [r.reward for r in recs]
  assert 10 * 0.7 <= min(values) and max(values) <= 20
  assert {r.prompt_source for r in recs} >= {"manual", "ape", "lp_rewrite", "no_instruction"}


@needs_data
def test_fetch_published_checks_the_sha256_and_writes_only_a_whole_file(tmp_path):
  url, sha256 = importers.AUTHORS_TWEET_EMOTION_LOG
  assert url.endswith("/" + os.path.basename(QPO_FILE))
  source = "file://" + os.path.abspath(QPO_FILE)
  dest = str(tmp_path / "dl" / "log.json")
  assert importers.fetch_published(source, dest, sha256) == dest  # the pinned file's bytes
  assert tfrecord.file_sha256(dest) == sha256
  os.unlink(dest)
  with pytest.raises(ValueError, match="sha256 .* is not the expected .* not written"):
    importers.fetch_published(source, dest, "0" * 64)
  assert os.listdir(tmp_path / "dl") == []  # neither the file nor a temp file
  with pytest.raises(OSError, match="cannot download file:///nonexistent"):
    importers.fetch_published("file:///nonexistent/log.json", dest, sha256)
  (tmp_path / "dl" / "log.json").write_bytes(open(QPO_FILE, "rb").read())
  assert importers.fetch_published("file:///nonexistent/log.json", dest, sha256) == dest  # there


def test_import_reports_malformed_rows(tmp_path):
  path = tmp_path / "x.json"
  good = {"prompt_method": "instructions/manual", "query": "q", "label": 1, "prompt": "p",
          "m": {"few_shot_accuracy": 0.9, "few_shot_avg_acc": 0.5}}
  bad = [({**good, "label": None}, "label is None"), ({"query": "q"}, "missing field 'prompt'"),
         ({**good, "m": {"few_shot_accuracy": "x", "few_shot_avg_acc": 1}}, "could not convert"),
         ({**good, "label": 7}, "label is 7, not one of the task's 4 options"),
         ({**good, "label": 1.5}, "label is 1.5, not a whole number"),
         ({**good, "m": {"few_shot_accuracy": 37, "few_shot_avg_acc": 0.5}},
          "few_shot_accuracy is 37, not in 0..1"),
         ({**good, "query": 12345}, "query is 12345, not a non-empty string"),
         ({**good, "query": "  "}, "query is '  ', not a non-empty string"),
         ({**good, "m": {"zero_shot_accuracy": 1, "zero_shot_avg_acc": 0.5, "nll": -3}},
          "nll is -3, below 0")]
  zero_shot = {**good, "m": {"zero_shot_accuracy": 1, "zero_shot_avg_acc": 0.5, "nll": 2.0}}
  path.write_text(json.dumps([good] + [row for row, _ in bad] + [zero_shot]))
  kw = dict(task="t", model="m", verbalizers=("a", "b", "c", "d"))
  with pytest.raises(ValueError, match=r"x.json: 9 of 11 rows are bad \(more than 1%\): row 1: "):
    importers.import_qpo_json(str(path), **kw)
  recs, summary = importers.import_qpo_json(str(path), max_bad_fraction=1.0, **kw)
  assert (summary.imported, summary.skipped) == (2, 9)
  for i, (_, reason) in enumerate(bad):
    assert summary.examples[i].startswith(f"row {i + 1}: ") and reason in summary.examples[i]
  assert recs[1].setting == "zero_shot" and recs[1].reward == pytest.approx(10 + 5 - 2)
  path.write_text(json.dumps([good] * 199 + [bad[3][0]]))  # 0.5% bad: imported, reported
  recs, summary = importers.import_qpo_json(str(path), **kw)
  assert len(recs) == 199 and "row 199: label is 7" in str(summary)
  path.write_text("{broken")
  with pytest.raises(ValueError, match=r"x.json: not valid JSON"):
    importers.import_qpo_json(str(path), task="t", model="m")


@needs_data
def test_import_prompt_oirl_and_instructeval():
  with open(os.path.join(DATA, "prompt_oirl", "prompts_16.json")) as f:
    prompts = json.load(f)
  with open(os.path.join(DATA, "prompt_oirl", "prompt_aliases_16.json")) as f:
    aliases = json.load(f)
  logs = os.path.join(DATA, "prompt_oirl", "llama2_chat_logs", "gsm8k")
  train, s = importers.import_prompt_oirl(logs, task="gsm8k", prompts=prompts, aliases=aliases)
  assert s.imported == 6 * 7473 and s.skipped == 0 and len({r.prompt for r in train}) == 6
  test, _ = importers.import_prompt_oirl(logs, task="gsm8k", prompts=prompts, aliases=aliases,
                                         split="test")
  assert len(test) == 16 * 1000
  cot = [r for r in train if r.prompt_source == "CoT"]
  assert cot[0].avg_acc == pytest.approx(np.mean([r.correct for r in cot]))
  root = os.path.join(DATA, "prompts", "instructeval", "instructions")
  coll = importers.load_prompt_collection(root, "tweet_emotion", model="llama7b")
  assert coll["no_instruction"] == [""] and len(coll["manual"]) == 5
  assert len(coll["low_perplexity_prompts"]) == 5
  with pytest.raises(FileNotFoundError, match="imdb.yaml"):
    importers.load_prompt_collection(root, "imdb", ["nope"])


def test_merge_dedupe_and_normalise(tmp_path):
  old = _records(4)
  new = [Record(task="tweet_emotion", query=f"tweet {i} ünïcode 🙂\nline", prompt=f"p{i % 3}",
                query_id=f"train:{i}", target="local:x", reward=r, loop=1)
         for i, r in [(0, 9.0), (5, 3.0), (6, -10.0)]]
  merged = dataset.merge(old, new)
  assert len(merged) == 6  # (0, p0) repeats an old pair; low rewards stay (filtered at training)
  assert merged[0].loop == 0 and merged[-1].reward == -10.0
  norm = rewards.Normalizer.fit(r.reward for r in merged)
  m = dataset.write_dataset(str(tmp_path / "d1"), merged, normalizer=norm)
  assert rewards.Normalizer.from_dict(m["normalizer"]) == norm
  values = [r.reward for r in dataset.normalized(merged, norm)]
  assert min(values) == 0.0 and max(values) == 100.0


class _Dies:
  """A target that fails after `budget` calls, as a killed process would stop."""

  def __init__(self, inner, budget):
    self.inner, self.identity, self.budget, self.calls = inner, inner.identity, budget, 0

  def score_options(self, texts, options):
    if self.calls + len(texts) > self.budget:
      raise KeyboardInterrupt("killed")
    self.calls += len(texts)
    return self.inner.score_options(texts, options)


@pytest.fixture(scope="module")
def tiny_target():
  lm = load_model({"name": "random", "preset": "tiny-llama", "tokenizer": "smollm2", "seed": 4})
  return LocalTarget(lm, chat=False, batch_size=8)


@pytest.mark.integration
def test_build_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_target):
  task = get_task("topics")
  queries = [task.to_example(r, f"all:{i}") for i, r in enumerate(task.builtin_rows(6, 0))]
  prompts = [(src, p) for src, ps in task.source_prompts.items() for p in ps]  # 11 prompts
  kw = dict(settings=["zero_shot"], prompts_per_chunk=3)
  full = _Dies(tiny_target, 10**9)
  ref = d0.build(str(tmp_path / "a" / "loop_0"), task, full, queries, prompts,
                 cache=EvalCache(str(tmp_path / "a" / "c.sqlite")), **kw)
  out, cache = str(tmp_path / "b" / "loop_0"), str(tmp_path / "b" / "c.sqlite")
  dying = _Dies(tiny_target, 40)  # dies inside the third chunk
  with pytest.raises(KeyboardInterrupt):
    d0.build(out, task, dying, queries, prompts, cache=EvalCache(cache), **kw)
  assert not os.path.exists(out) and len(os.listdir(out + ".partial")) == 4  # 2 chunks + stamps
  first = d0._chunk_path(out + ".partial", "zero_shot", 0)
  whole = list(tfrecord.read_records(first))
  tfrecord.write_records(first, whole[:-6])  # cut at a record boundary: the CRCs still hold
  resumed = _Dies(tiny_target, 10**9)
  got = d0.build(out, task, resumed, queries, prompts, cache=EvalCache(cache),
                 **kw)
  assert dying.calls + resumed.calls == full.calls == 66  # nothing evaluated twice
  assert not os.path.exists(out + ".partial")
  a, _ = dataset.read_dataset(str(tmp_path / "a" / "loop_0"))
  b, _ = dataset.read_dataset(out)
  assert len(a) == len(b) == ref["count"] == got["count"] == 66  # every record is kept
  assert all(records.same(x, y) for x, y in zip(a, b))
  assert got["normalizer"] == ref["normalizer"] and got["meta"]["evaluated"] == 66
  again = _Dies(tiny_target, 0)  # complete: returns the manifest, no target calls
  assert d0.build(out, task, again, queries, prompts,
                  cache=EvalCache(cache), **kw)["count"] == got["count"]


@pytest.mark.integration
def test_sparse_design_gives_each_query_k_prompts(tmp_path, tiny_target):
  assigned = d0.query_assignment(10, 4, 3, seed=1)
  per_query = [sum(q in qs for qs in assigned) for q in range(10)]
  assert per_query == [3] * 10 and sorted(len(qs) for qs in assigned) == [7, 7, 8, 8]
  assert d0.query_assignment(5, 4, 0, seed=1) == [list(range(5))] * 4
  task = get_task("topics")
  queries = [task.to_example(r, f"all:{i}") for i, r in enumerate(task.builtin_rows(6, 0))]
  prompts = [(src, p) for src, ps in task.source_prompts.items() for p in ps]  # 11 prompts
  counter = _Dies(tiny_target, 10**9)
  m = d0.build(str(tmp_path / "loop_0"), task, counter, queries, prompts,
               settings=["zero_shot"], cache=EvalCache(None),
               prompts_per_query=3, seed=0)
  recs, _ = dataset.read_dataset(str(tmp_path / "loop_0"))
  assert m["count"] == len(recs) == counter.calls == 18 and m["meta"]["prompts_per_query"] == 3
  by_query = {}
  for r in recs:
    by_query.setdefault(r.query_id, set()).add(r.prompt)
  assert len(by_query) == 6 and all(len(ps) == 3 for ps in by_query.values())
  for p in {r.prompt for r in recs}:  # avg_acc: the prompt's accuracy over its own queries
    mine = [r for r in recs if r.prompt == p]
    assert all(r.avg_acc == pytest.approx(np.mean([x.correct for x in mine])) for r in mine)


@pytest.mark.integration
def test_build_records_carry_the_outcomes(tiny_target):
  task = get_task("topics")
  queries = [task.to_example(r, f"all:{i}") for i, r in enumerate(task.builtin_rows(3, 0))]
  recs = d0.evaluate_records(task, tiny_target, [(("m", "Topic?"), queries)],
                             setting="zero_shot", cache=EvalCache(None), split="train", loop=0)
  outs = evaluation.evaluate_pairs(task, tiny_target, [(q, "Topic?") for q in queries])
  avg = np.mean([o.correct for o in outs])
  for r, o, q in zip(recs, outs, queries):
    assert r.pred == o.pred and r.gold == task.verbalizers[q.label]
    assert r.reward == pytest.approx(10 * o.correct + 10 * avg - o.gold_nll)


def _batches(recs, tokenizer, *, query_len, prompt_len, normalizer=None, **kw):
  rows = training_rows.from_records(recs, tokenizer, query_len=query_len, prompt_len=prompt_len,
                                    normalizer=normalizer)
  return batches.Batches(rows, **kw)


def test_batches_resume_and_shard(smollm2_tokenizer):
  recs = _records(10)
  b = _batches(recs, smollm2_tokenizer, query_len=12, prompt_len=6, batch_size=4, seed=3)
  first = b.next()
  assert first["query"].shape == (4, 12) and first["prompt"].shape == (4, 6)
  lengths = first["prompt_mask"].sum(1)
  eos = smollm2_tokenizer.eos_token_id
  assert all(first["prompt"][i, lengths[i] - 1] == eos for i in range(4))
  seq = [b.next() for _ in range(5)]  # crosses epoch boundaries (2 steps per epoch)
  state_after_two = None
  b2 = _batches(recs, smollm2_tokenizer, query_len=12, prompt_len=6, batch_size=4, seed=3)
  b2.next(), b2.next()
  state_after_two = b2.state()
  b3 = _batches(recs, smollm2_tokenizer, query_len=12, prompt_len=6, batch_size=4, seed=3)
  b3.restore(state_after_two)
  for want in seq[1:]:
    got = b3.next()
    np.testing.assert_array_equal(got["returns"], want["returns"])
    np.testing.assert_array_equal(got["query"], want["query"])
  epoch0 = np.concatenate([first["returns"], seq[0]["returns"]])
  assert len(set(epoch0.tolist())) == 8  # no repeats within an epoch
  norm = rewards.Normalizer.fit(r.reward for r in recs)
  bn = _batches(recs, smollm2_tokenizer, query_len=12, prompt_len=6, batch_size=4, seed=3,
                normalizer=norm)
  assert 0 <= bn.next()["returns"].min() and bn.next()["returns"].max() <= 100
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  with pytest.raises(ValueError, match="does not split"):
    _batches(recs, smollm2_tokenizer, query_len=12, prompt_len=6, batch_size=4, seed=3,
             mesh=mesh)
  big = _records(16)
  sb = _batches(big, smollm2_tokenizer, query_len=12, prompt_len=6, batch_size=8, seed=3,
                mesh=mesh)
  batch = sb.next()
  assert len(batch["query"].sharding.device_set) == 8


@pytest.mark.integration
def test_inspect_report_and_plot(tmp_path):
  recs = _records(9)
  text = summary.describe(recs, None)
  assert "| manual | 9 |" in text and "reward histogram" in text and "best prompts" in text
  png = summary.plot(recs, str(tmp_path / "r.png"), "test")
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_length_grouped_batches_pad_little_and_resume(smollm2_tokenizer):
  """pad_multiple: batches group similar lengths and are padded to a multiple of their
  longest row; every row comes once per epoch and a restored iterator continues exactly."""
  rng = np.random.default_rng(0)
  recs = [Record(task="t", query=" ".join(["word"] * int(rng.integers(1, 40))),
                 prompt=" ".join(["p"] * int(rng.integers(0, 20))), reward=float(i),
                 query_id=f"q{i}") for i in range(64)]
  kw = dict(query_len=48, prompt_len=24, batch_size=8, seed=1, pad_multiple=8, window=4)
  b = _batches(recs, smollm2_tokenizer, **kw)
  fixed = _batches(recs, smollm2_tokenizer, **dict(kw, pad_multiple=0))
  seen, padded, full = [], 0, 0
  for _ in range(b.steps_per_epoch):
    batch = b.next()
    lq, lp = batch["query"].shape[1], batch["prompt"].shape[1]
    assert lq % 8 == 0 and lp % 8 == 0 and lq <= 48 and lp <= 24
    assert batch["query_mask"].sum(1).max() > lq - 8 and batch["prompt_mask"].sum(1).max() > lp - 8
    seen += batch["returns"].tolist()
    padded += lq + lp
    full += 48 + 24
    f = fixed.next()
    assert f["query"].shape == (8, 48) and f["prompt"].shape == (8, 24)
  assert sorted(seen) == [float(i) for i in range(64)]  # each row once per epoch
  assert padded < 0.75 * full
  later = [b.next() for _ in range(3)]  # epoch 1
  again = _batches(recs, smollm2_tokenizer, **kw)
  again.restore({"epoch": 1, "position": 0})
  for want in later:
    got = again.next()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_rows_count_the_queries_query_len_cuts_and_the_round_says_so(tmp_path, smollm2_tokenizer,
                                                                      caplog, monkeypatch):
  """A query longer than train.query_len is cut to its first tokens; the rows know how long
  each query was, read from a dataset or from records, and a round warns with the share
  (once: the writer process)."""
  recs = [dataclasses.replace(r, query=r.query + " and more words" * (2 * i))
          for i, r in enumerate(_records(8))]
  d = str(tmp_path / "ds")
  dataset.write_dataset(d, recs, records_per_shard=3)
  rows, _ = training_rows.from_dataset(d, smollm2_tokenizer, query_len=24, prompt_len=6)
  want = training_rows.from_records(recs, smollm2_tokenizer, query_len=24, prompt_len=6)
  whole = token_counts(smollm2_tokenizer, [r.query for r in recs])
  np.testing.assert_array_equal(rows.query_tokens, whole)
  np.testing.assert_array_equal(want.query_tokens, whole)
  np.testing.assert_array_equal(rows.query_lengths, np.minimum(whole, 24))
  assert set(want.load(np.arange(2))) == set(training_rows.TOKEN_FIELDS)
  cut = float(np.mean(whole > 24))
  assert 0.25 < cut < 1 and rows.cut_queries() == cut
  with caplog.at_level("WARNING"):
    rounds.report_cut_queries(rows, 2)
  said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  fits = int(np.ceil(np.percentile(whole, 99)))
  assert said == [f"round 2: train.query_len=24 cuts {100 * cut:.1f}% of its 8 training rows' "
                  f"queries (the policy sees their first 24 tokens); {fits} tokens hold 99% of "
                  "them"]
  caplog.clear()
  monkeypatch.setattr(rounds.distributed, "is_writer", lambda: False)  # another process
  with caplog.at_level("WARNING"):
    rounds.report_cut_queries(rows, 2)
  assert not [r for r in caplog.records if r.levelname == "WARNING"]
  monkeypatch.undo()
  whole_rows, _ = training_rows.from_dataset(d, smollm2_tokenizer, query_len=int(whole.max()),
                                             prompt_len=6)
  assert whole_rows.cut_queries() == 0
  with caplog.at_level("WARNING"):
    rounds.report_cut_queries(whole_rows, 1)
  assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_dataset_rows_equal_filtered_records_and_read_only_what_is_asked(tmp_path,
                                                                          smollm2_tokenizer,
                                                                          monkeypatch):
  """training_rows.from_dataset: the expert filter, normaliser and tokens of a whole read,
  with records read by random access only when a batch asks for them."""
  recs = [dataclasses.replace(r, query_id=f"train:{i % 4}") for i, r in enumerate(_records(23))]
  norm = rewards.Normalizer.fit(r.reward for r in recs)
  d = str(tmp_path / "ds")
  dataset.write_dataset(d, recs, records_per_shard=5, normalizer=norm)
  filt = dict(threshold=-1.0, top_fraction=0.5, rank_by="advantage")
  rows, manifest = training_rows.from_dataset(d, smollm2_tokenizer, query_len=12, prompt_len=6,
                                              normalize=True, **filt)
  want = training_rows.from_records(rewards.expert_filter(recs, **filt), smollm2_tokenizer,
                                    query_len=12, prompt_len=6, normalizer=norm)
  assert manifest["count"] == 23 and 0 < len(rows) == len(want) < 23
  np.testing.assert_array_equal(rows.returns, want.returns)
  np.testing.assert_array_equal(rows.query_lengths, want.query_lengths)
  np.testing.assert_array_equal(rows.prompt_lengths, want.prompt_lengths)
  np.testing.assert_array_equal(rows.query_tokens, want.query_tokens)
  pick = np.asarray([3, 0, len(want) - 1])
  for k, v in want.load(pick).items():
    np.testing.assert_array_equal(rows.load(pick)[k], v)

  index = dataset.RecordIndex(d)
  assert len(index) == 23
  assert [r.reward for r in index.read([22, 0, 7])] == [recs[22].reward, recs[0].reward,
                                                         recs[7].reward]
  # a process that did not read a record before reads only the rows it is asked for
  read = []
  real = dataset.RecordIndex.read
  monkeypatch.setattr(dataset.RecordIndex, "read",
                      lambda self, ix: read.append(list(ix)) or real(self, ix))
  tokens = training_rows._DatasetTokens(index, smollm2_tokenizer, 12, 6)
  tokens(np.asarray([9, 2]))
  tokens(np.asarray([2, 9, 4]))
  assert read == [[2, 9], [4]]


def test_dataset_rows_centre_returns_on_all_of_a_querys_records_then_sample(tmp_path,
                                                                           smollm2_tokenizer):
  """offline.returns="query_centred" centres the normalised returns on each query's mean
  over every record of the dataset (before the filter), and offline.rows_per_query keeps
  a seeded random few of each query's filtered rows."""
  recs = [dataclasses.replace(r, query_id=f"train:{i % 4}") for i, r in enumerate(_records(23))]
  norm = rewards.Normalizer.fit(r.reward for r in recs)
  d = str(tmp_path / "ds")
  dataset.write_dataset(d, recs, records_per_shard=5, normalizer=norm)
  plain, _ = training_rows.from_dataset(d, smollm2_tokenizer, query_len=12, prompt_len=6,
                                        normalize=True)
  centred, _ = training_rows.from_dataset(d, smollm2_tokenizer, query_len=12, prompt_len=6,
                                          normalize=True, returns="query_centred")
  want = rewards.query_centred([r.query_id for r in recs], norm([r.reward for r in recs]))
  np.testing.assert_allclose(centred.returns, want, rtol=1e-6)
  assert not np.allclose(centred.returns, plain.returns)
  best, _ = training_rows.from_dataset(d, smollm2_tokenizer, query_len=12, prompt_len=6,
                                       normalize=True, returns="query_centred", top_fraction=0.2)
  kept = rewards.top_per_query(recs, 0.2)
  np.testing.assert_allclose(best.returns, [want[recs.index(r)] for r in kept], rtol=1e-6)
  few, _ = training_rows.from_dataset(d, smollm2_tokenizer, query_len=12, prompt_len=6,
                                      normalize=True, returns="query_centred", rows_per_query=2,
                                      seed=3)
  drawn = rewards.per_query_sample(recs, 2, seed=3)
  assert len(few) == 8
  np.testing.assert_allclose(few.returns, [want[recs.index(r)] for r in drawn], rtol=1e-6)
  with pytest.raises(ValueError, match="offline.returns"):
    training_rows.from_dataset(d, smollm2_tokenizer, query_len=12, prompt_len=6, returns="mean")


def test_random_access_reads_check_records(tmp_path):
  d = str(tmp_path / "ds")
  dataset.write_dataset(d, _records(5))
  path = os.path.join(d, dataset.shard_name(0, 1))
  offsets = tfrecord.record_offsets(path)
  assert len(offsets) == 5 and offsets[0] == 0
  blob = bytearray(open(path, "rb").read())
  blob[offsets[3] + 20] ^= 0x01  # inside record 3's data
  open(path, "wb").write(bytes(blob))
  index = dataset.RecordIndex(d)  # the headers are intact
  assert index.read([1])[0].query == _records(5)[1].query
  with pytest.raises(tfrecord.CorruptRecordError, match=r"record 3 at byte \d+: data CRC"):
    index.read([3])
  with pytest.raises(tfrecord.CorruptRecordError, match="sha256 differs|record 3"):
    index.verify_shards([0])
  open(path, "wb").write(bytes(blob[:offsets[4] + 6]))
  with pytest.raises(tfrecord.CorruptRecordError, match=r"record 4 at byte \d+ is truncated"):
    dataset.RecordIndex(d)


@pytest.mark.parametrize("label,want", [(2, 2), (2.0, 2), ("2", 2), (" 3 ", 3)])
def test_import_label_forms_accepted(label, want):
  assert importers._label(label, ("a", "b", "c", "d")) == want


@pytest.mark.parametrize("label,reason", [
    (1.5, "not a whole number"), ("1.5", "a string label must be decimal digits"),
    ("2.0", "a string label must be decimal digits"), ("two", "decimal digits"),
    ("\u00b2", "decimal digits"), (True, "not a number"), (None, "not a number"),
    ("-1", "decimal digits"), ("9", "not one of the task's 4 options")])
def test_import_label_forms_rejected(label, reason):
  with pytest.raises(ValueError, match=re.escape(reason)):
    importers._label(label, ("a", "b", "c", "d"))
