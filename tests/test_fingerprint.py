"""A workdir is reused only as it was made: same config fields per stage, complete datasets."""

import os
import shutil

import pytest

from qpo_jax import fingerprint, loop, modes
from qpo_jax.context import Run
from qpo_jax.stages import Stage

pytestmark = pytest.mark.integration  # whole runs of the tiny config

from tests.helpers import tiny_config


def _tiny():
  return tiny_config()


def _listing(root):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.integration
def test_stage_fields_leave_out_what_cannot_change_a_result():
  c = _tiny()
  d0, r1, r2, c2 = (fingerprint.stage_fields(c, stage) for stage in (
      Stage("d0"), Stage("round", 1), Stage("round", 2), Stage("collect", 2)))
  assert "task.name" in d0 and "target.name" in d0 and "offline.num_queries" in d0
  assert "offline.threshold" not in d0 and "offline.threshold" in r1  # filtering is at training
  assert "train.epochs" in r1 and "sample.target_return" not in r1
  assert "sample.target_return" in r2 and "loop.collect_queries" in r2
  for fields in (d0, r1, r2, c2):
    assert not set(fields) & fingerprint.NEUTRAL
  assert "loop.num_loops" not in c2  # more loops extend a run
  for retry in ("concurrency", "max_retries", "timeout_s", "backoff_s"):  # HTTP retries, all
    assert f"target.http.{retry}" not in d0 and f"target.http.{retry}" in fingerprint.NEUTRAL
  # they move the order of floating-point sums, and the trained policy's prompts with it
  assert "policy.remat" in r1 and "sample.batch_size" in r2


@pytest.mark.integration
def test_a_field_recorded_before_it_was_found_neutral_does_not_count(tmp_path):
  """Workdirs recorded target.backoff_s while it counted; they stay usable."""
  path, fields = str(tmp_path / "d0.config.json"), fingerprint.stage_fields(_tiny(), Stage("d0"))
  fingerprint.claim(path, {**fields, "target.backoff_s": 1.0}, "D_0", "data/loop_0")
  assert fingerprint.check(path, fields, "D_0", "data/loop_0")
  with pytest.raises(ValueError, match=r"task.seed: 0 -> 5"):
    fingerprint.check(path, {**fields, "task.seed": 5}, "D_0", "data/loop_0")


@pytest.mark.integration
def test_split_rules_are_part_of_the_data_an_unset_entry_is_not(tmp_path):
  """task.split_rules changes which queries D_0 and every later stage see: a set entry is a
  change, named; '' and None both leave the task's rule and record the same."""
  c = _tiny()
  path, fields = str(tmp_path / "d0.config.json"), fingerprint.stage_fields(c, Stage("d0"))
  assert fields["task.split_rules"] is None
  fingerprint.claim(path, fields, "D_0", "data/loop_0")
  c.task.split_rules.update(validation="", test=None)
  assert fingerprint.check(path, fingerprint.stage_fields(c, Stage("d0")), "D_0", "data/loop_0")
  c.task.split_rules.train = "all[:40%]"
  with pytest.raises(ValueError, match=r"task.split_rules: None -> \{'train': 'all\[:40%\]'\}"):
    fingerprint.check(path, fingerprint.stage_fields(c, Stage("d0")), "D_0", "data/loop_0")
  # a stage recorded before the field existed: unset it matches, set it is a change
  older = str(tmp_path / "older.config.json")
  fingerprint.claim(older, {k: v for k, v in fields.items() if k != "task.split_rules"},
                    "D_0", "data/loop_0")
  assert fingerprint.check(older, fields, "D_0", "data/loop_0")
  with pytest.raises(ValueError, match=r"task.split_rules: '<unset>' -> \{'train'"):
    fingerprint.check(older, fingerprint.stage_fields(c, Stage("d0")), "D_0", "data/loop_0")


@pytest.mark.integration
def test_a_stage_recorded_under_the_flat_target_names_still_matches(tmp_path):
  """Stages recorded target.chat, target.scoring, ... before `target` had its local and
  http parts; they are compared under the new names, and a change is named by them."""
  path, fields = str(tmp_path / "d0.config.json"), fingerprint.stage_fields(_tiny(), Stage("d0"))
  old_name = {new: old for old, new in fingerprint.RENAMED.items()}
  recorded = {old_name.get(k, k): v for k, v in fields.items()}
  assert "target.chat" in recorded and "target.http.scoring" not in recorded
  fingerprint.claim(path, recorded, "D_0", "data/loop_0")
  assert fingerprint.check(path, fields, "D_0", "data/loop_0")
  with pytest.raises(ValueError, match=r"target.local.chat: True -> False"):
    fingerprint.check(path, {**fields, "target.local.chat": False}, "D_0", "data/loop_0")


@pytest.mark.integration
def test_two_spellings_of_one_path_are_the_same_field(tmp_path):
  """A data directory recorded as `<root>/x/../data` matches `<root>/data` and `~`-forms;
  another directory is a change."""
  (tmp_path / "data").mkdir()
  (tmp_path / "x").mkdir()
  path, fields = str(tmp_path / "d0.config.json"), fingerprint.stage_fields(_tiny(), Stage("d0"))
  fingerprint.claim(path, {**fields, "task.data.dir": str(tmp_path / "x" / ".." / "data")},
                    "D_0", "data/loop_0")
  assert fingerprint.check(path, {**fields, "task.data.dir": str(tmp_path / "data")}, "D_0",
                           "data/loop_0")
  with pytest.raises(ValueError, match=r"task.data.dir: "):
    fingerprint.check(path, {**fields, "task.data.dir": str(tmp_path / "x")}, "D_0",
                      "data/loop_0")


@pytest.fixture()
def copied_run(tiny_run, tmp_path):
  work = str(tmp_path / "run")
  shutil.copytree(tiny_run[0], work)
  shutil.rmtree(os.path.join(work, "eval"))
  return work


@pytest.mark.integration
def test_changed_task_stops_before_any_work(copied_run):
  config = _tiny()
  config.task.name = "arithmetic"
  before = _listing(copied_run)
  with pytest.raises(ValueError) as e:
    loop.run_loop(config, copied_run)
  message = str(e.value)
  assert "D_0 in this workdir was made with other settings" in message
  assert "task.name: 'topics' -> 'arithmetic'" in message
  assert "Use a new --workdir, or delete" in message and "data/loop_0" in message
  assert _listing(copied_run) == before  # nothing written, nothing evaluated


@pytest.mark.integration
def test_changed_training_stops_the_round_and_every_mode(copied_run):
  config = _tiny()
  config.train.epochs = 7
  for mode in ("train_policy", "evaluate", "sample_prompts", "collect"):
    with pytest.raises(ValueError, match=r"policy round 1 .*\n  train\.epochs: 3 -> 7"):
      modes.run(mode, config, copied_run)
  config = _tiny()
  config.sample.target_return = 50.0  # round 1 does not see it; round 2 and collection do
  with pytest.raises(ValueError, match=r"loop 1's collection \(D_1\).*\n  "
                                       r"sample\.target_return: 100\.0 -> 50\.0"):
    modes.run("evaluate", config, copied_run)


@pytest.mark.integration
def test_neutral_changes_and_more_loops_reuse_the_run(copied_run, tiny_run):
  config = _tiny()
  config.train.log_every, config.progress, config.target.local.batch_size = 3, True, 4
  config.offline.records_per_shard = 7
  got = loop.run_loop(config, copied_run)
  assert got["methods"] == tiny_run[1]["methods"]


@pytest.mark.integration
def test_deleting_the_stage_as_told_redoes_it(copied_run):
  config = _tiny()
  config.offline.threshold = 1.0  # a round-level field: D_0 stays, round 1 onwards is stale
  with pytest.raises(ValueError, match="policy round 1"):
    Run(config, copied_run).check_workdir()
  shutil.rmtree(os.path.join(copied_run, "policy"))
  for name in os.listdir(os.path.join(copied_run, "data")):
    if not name.startswith("loop_0"):
      path = os.path.join(copied_run, "data", name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  Run(config, copied_run).check_workdir()  # nothing stale is left


@pytest.mark.integration
def test_dataset_without_manifest_names_the_directory_to_delete(copied_run):
  os.remove(os.path.join(copied_run, "data", "loop_1", "manifest.json"))
  with pytest.raises(FileExistsError, match=r"data/loop_1 has no manifest.json.*delete the "
                                            r"directory .*data/loop_1 to rebuild it"):
    modes.run("loop", _tiny(), copied_run)
