"""Every config parses; real-size models pass eval_shape sharded; main.py runs and fails clearly."""

import glob
import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import pytest

from qpo_jax import sharding
from qpo_jax.models.config import PRESETS, preset
from qpo_jax.checkpoints.registry import LOADERS
from qpo_jax.models.transformer import Transformer, init_cache, param_shapes
from qpo_jax.utils import compile_cache, config_module

from tests.helpers import ROOT, SHARED_DATA as SHARED, repo_config, run_main
BASE = os.path.join(ROOT, "configs", "base.py")
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if p != BASE and not p.endswith("__init__.py"))


def _all_configs():
  """(id, config) for every config file, and every setting of the parametrised paper config."""
  out = []
  for path in CONFIGS:
    module = config_module(path)
    args = module.settings() if hasattr(module, "settings") else [None]
    out += [(f"{os.path.basename(path)}:{a}" if a else os.path.basename(path),
             module.get_config(a) if a else module.get_config()) for a in args]
  return out


ALL = _all_configs()


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_file_documents_command_and_expected(path):
  doc = config_module(path).__doc__
  assert "Command" in doc and "Expected" in doc and "Runtime" in doc


@pytest.mark.parametrize("name,config", ALL, ids=[n for n, _ in ALL])
def test_config_parses_and_names_known_modules(name, config):
  from qpo_jax import loop
  from qpo_jax.tasks import TASKS

  del name
  if config.target.backend == "local":
    assert config.target.name in LOADERS
  assert config.policy.name in LOADERS and config.task.name in TASKS
  assert config.loop.num_loops >= 1
  sharding.make_mesh(config.mesh)
  if config.policy.name == "hf" and not config.policy.path:  # paper configs: the user's checkpoint
    with pytest.raises(ValueError, match="model 'hf': set `path` to the checkpoint directory"):
      loop.validate(config)  # fails at start, before any work
  elif config.task.data.kind != "files" or os.path.isdir(config.task.data.dir or "."):
    loop.validate(config)
  # ml_collections cannot override list fields from the command line (tuples it can).
  lists = [k for k, v in flax.traverse_util.flatten_dict(config.to_dict(), sep=".").items()
           if isinstance(v, list)]
  assert not lists, f"use tuples so --config.<field> can override: {lists}"


@pytest.mark.parametrize("name,config", ALL, ids=[n for n, _ in ALL])
def test_every_config_has_exactly_the_base_fields(name, config):
  """One schema: configs override base.py's fields and add none, so every override works."""
  from qpo_jax import config_rules

  assert config_rules.schema_problem(config.to_dict()) is None, name
  assert config.is_locked  # a typo in a notebook's `config.train.epoch = 3` fails too
  with pytest.raises(AttributeError):
    config.train.epoch = 3


def test_a_section_assigned_whole_is_refused_naming_what_it_dropped():
  from qpo_jax import loop

  config = repo_config("tiny.py")
  config.target = dict(name="random", preset="tiny-llama")  # drops tokenizer, seed, chat, ...
  with pytest.raises(ValueError, match=r"missing: .*target\.tokenizer.*c\.target = dict\(\.\.\.\)"
                     r".*c\.target\.update\(\.\.\.\)"):
    loop.validate(config)
  config = repo_config("tiny.py")
  config.target.update(name="random", preset="tiny-llama")
  loop.validate(config)


def test_task_data_maps_are_set_from_the_command_line_entry_by_entry():
  """files / splits: one entry per source split, the rest the task's defaults; columns whole."""
  from absl import flags
  from ml_collections import config_flags
  from qpo_jax.tasks import data_spec, task_of

  def parse(*args):
    argv = ["main.py", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config

  config = parse(f"--config={ROOT}/configs/quickstart.py",
                 "--config.task.data.files.test=my_test.txt",
                 "--config.task.data.columns={'text': 'review'}")
  spec = data_spec(task_of(config.task), config.task.data)
  assert spec["files"] == {"train": "train", "validation": "val", "test": "my_test.txt"}
  assert spec["columns"] == {"text": "review"}
  boolq = parse(f"--config={ROOT}/configs/nlu.py:task=boolq", "--config.task.data.kind=tfds",
                "--config.task.data.splits.validation=validation[:50]")
  spec = data_spec(task_of(boolq.task), boolq.task.data)
  assert spec["splits"] == {"train": "train", "validation": "validation[:50]"}
  config.task.data.files = {"tset": "x.txt"}  # a Python dict of any keys; the task's are checked
  with pytest.raises(ValueError, match=r"task.data.files names \['tset'\], which task "
                     r"'tweet_emotion' does not read; its source splits: \['test', 'train', "
                     r"'validation'\]"):
    data_spec(task_of(config.task), config.task.data)


def test_fingerprints_record_task_data_maps_as_before_they_had_entries():
  """Stages record the entries a config sets, as when files/splits were plain dicts (None
  when none is set), so workdirs made then still resume."""
  from qpo_jax import fingerprint
  from qpo_jax.stages import Stage

  config = repo_config("nlu.py:task=boolq")
  fields = fingerprint.stage_fields(config, Stage("d0"))
  assert fields["task.data.splits"] is None and "task.data.splits.train" not in fields
  assert {k: v for k, v in fields.items() if k.startswith("task.data.files")} == {
      "task.data.files.train": "dev.jsonl[:50%]", "task.data.files.validation": "dev.jsonl[50%:]"}


def test_paper_config_takes_named_arguments():
  paper = config_module(os.path.join(ROOT, "configs", "paper.py"))
  named = paper.get_config("task=gsm8k,setting=zero_shot,target=gpt-4o")
  assert named.to_dict() == paper.get_config("gsm8k,zero_shot,gpt-4o").to_dict()
  assert named.target.backend == "http" and named.task.name == "gsm8k"
  with pytest.raises(ValueError, match="missing: \\['target'\\]"):
    paper.get_config("task=gsm8k,setting=zero_shot")
  with pytest.raises(ValueError, match="not a paper setting"):
    paper.get_config("task=gsm8k,setting=few_shot,target=gpt-4o")


@pytest.mark.parametrize("name", ["gpt2-small", "smollm2-135m", "llama-2-7b", "llama-2-70b"])
def test_real_size_forward_and_decode_step_shapes(name):
  cfg = preset(name, dtype="bfloat16")
  shapes = param_shapes(cfg)
  n = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
  assert n == cfg.num_params()
  mesh = sharding.make_mesh(dict(fsdp=2, tensor=4))
  specs = sharding.param_shardings(shapes, mesh)  # every parameter gets a valid spec
  assert len(jax.tree_util.tree_leaves(specs)) == len(jax.tree_util.tree_leaves(shapes))
  model = Transformer(cfg)
  ids = jax.ShapeDtypeStruct((8, 128), jnp.int32)
  mask = jax.ShapeDtypeStruct((8, 128), bool)
  hidden, _ = jax.eval_shape(lambda p, i, m: model.apply({"params": p}, i, m), shapes, ids, mask)
  assert hidden.shape == (8, 128, cfg.d_model) and hidden.dtype == jnp.bfloat16
  cache = jax.eval_shape(lambda: init_cache(cfg, 8, 256))
  step = jax.ShapeDtypeStruct((8, 1), jnp.int32)
  _, new_cache = jax.eval_shape(
      lambda p, i, m, c: model.apply({"params": p}, i, m, cache=c), shapes, step,
      jax.ShapeDtypeStruct((8, 1), bool), cache)
  assert new_cache["k"].shape == (cfg.n_layers, 8, 256, cfg.n_kv_heads, cfg.head_dim)


def test_presets_are_consistent():
  assert PRESETS["llama-2-7b"].num_params() == pytest.approx(6.74e9, rel=0.01)
  assert PRESETS["gpt2-small"].num_params() == pytest.approx(124.4e6, rel=0.01)
  assert PRESETS["smollm2-135m"].num_params() == pytest.approx(134.5e6, rel=0.01)


@pytest.mark.multiprocess
def test_main_generate_on_tiny_config(tmp_path):
  r = run_main("--config=configs/tiny.py", "--mode=generate", workdir=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  records = json.loads((tmp_path / "answers.json").read_text())
  assert [x["question"] for x in records] == ["What is the capital of France?", "Hi"]
  assert "Q: Hi" in r.stdout


@pytest.mark.multiprocess
def test_main_rejects_bad_values_clearly(tmp_path):
  r = run_main("--config=configs/tiny.py", "--mode=generate", "--config.target.name=gpt5",
            workdir=tmp_path)
  assert r.returncode != 0 and "target.name='gpt5' is not one of" in r.stderr
  r = run_main("--config=configs/tiny.py", "--mode=fly", workdir=tmp_path)
  assert r.returncode != 0 and "--mode" in r.stderr
  r = run_main("--config=configs/tiny.py", "--config.target.preset=huge", workdir=tmp_path)
  assert r.returncode != 0 and "unknown model preset 'huge'" in r.stderr


@pytest.mark.multiprocess
def test_main_names_a_field_the_config_lacks(tmp_path):
  """Every config has target.path; a typo is one line naming the flag, the field and its siblings."""
  r = run_main("--config=configs/tiny.py", "--config.target.pathh=/x", "--mode=generate",
            workdir=tmp_path / "w")
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert last.startswith("FATAL Flags parsing error: --config.target.pathh: configs/tiny.py: "
                         "target has no field 'pathh' (did you mean 'path'?)"), last
  r = run_main("--config", "configs/quickstart.py", "--config.trian.epochs", "3", "--mode=generate",
            workdir=tmp_path / "w")
  assert "--config.trian.epochs: configs/quickstart.py: the config has no field 'trian' " \
         "(did you mean 'train'?)" in r.stderr
  r = run_main("--config=configs/tiny.py", "--config.task.data.columns.text=review",
            "--mode=generate", workdir=tmp_path / "w")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert ("--config.task.data.columns.text: configs/tiny.py: task.data.columns is one value, "
          "not a section: set it whole, e.g. --config.task.data.columns=\"{'text': ...}\"") \
      in r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_write_failures_become_one_line_naming_path_and_cause():
  import errno
  from qpo_jax.utils import write_failure
  assert write_failure(OSError(errno.ENOSPC, "No space", "/w/eval_cache.sqlite")) == \
      "cannot write /w/eval_cache.sqlite: no space left on the device"
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local file '
                     '"/w/policy/round_1/checkpoints/3/": Failed to write 2 bytes to file 8: '
                     "No space left on device [os_error_code='28']")
  try:
    try:
      raise orbax
    except ValueError as inner:
      raise RuntimeError("checkpoint save failed") from inner
  except RuntimeError as outer:
    assert write_failure(outer) == ("cannot write /w/policy/round_1/checkpoints/3/: "
                                    "no space left on the device")
  assert write_failure(OSError(errno.EROFS, "ro", "/w/x")) == "cannot write /w/x: read-only file system"
  assert write_failure(ValueError("train.batch_size=-8 must be positive")) is None
  assert write_failure(OSError(errno.ENOENT, "missing", "/w")) is None  # not a write failure


@pytest.mark.multiprocess
def test_main_unwritable_workdir_ends_with_one_line(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  r = run_main("--config=configs/tiny.py", "--mode=evaluate_prompts", workdir=tmp_path / "file" / "w")
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 1
  assert last.startswith(f"FATAL cannot create {tmp_path / 'file' / 'w'}: a part of the path is "
                         "a file, not a directory."), last


@pytest.fixture
def full_disk(tmp_path):
  """A 40 KB tmpfs (needs root; skipped elsewhere)."""
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.multiprocess
def test_main_full_disk_ends_with_one_line_and_resumes(full_disk, tmp_path):
  r = run_main("--config=configs/tiny.py", "--mode=evaluate_prompts", workdir=full_disk / "w")
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 1
  assert last.startswith(f"FATAL cannot write {full_disk / 'w' / 'eval_cache.sqlite'}: no space "
                         "left on the device."), last
  kept = full_disk / "w" / "eval_cache.sqlite"
  work = tmp_path / "w"  # "free space": move the workdir to a roomier disk and rerun
  work.mkdir()
  (work / "eval_cache.sqlite").write_bytes(kept.read_bytes())
  r = run_main("--config=configs/tiny.py", "--mode=evaluate_prompts", workdir=work)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads((work / "prompt_eval.json").read_text())["num_queries"] == 8


def test_compiled_programs_persist_and_the_setting_is_restored(tmp_path):
  hits = []
  listener = lambda event, **_: hits.append(event)  # noqa: E731
  f = lambda x: jnp.tanh(x @ x.T).sum()  # noqa: E731
  before = jax.config.jax_compilation_cache_dir
  jax.monitoring.register_event_listener(listener)
  try:
    with compile_cache(str(tmp_path / "xla_cache"), min_compile_secs=0):
      first = float(jax.jit(f)(jnp.ones((48, 48))))
      assert os.listdir(tmp_path / "xla_cache")
      jax.clear_caches()  # as a new process would start: nothing compiled in memory
      hits.clear()
      assert float(jax.jit(f)(jnp.ones((48, 48)))) == first
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert "/jax/compilation_cache/cache_hits" in hits  # every program came from the disk
  assert "/jax/compilation_cache/cache_misses" not in hits
  assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.multiprocess
def test_main_evaluate_prompts_and_cache_resume(tmp_path):
  own = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}  # not the suite's cache
  run = lambda env: run_main("--config=configs/tiny.py", "--mode=evaluate_prompts",  # noqa: E731
                             workdir=tmp_path / "w", env=env)
  r = run(own)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads((tmp_path / "w" / "prompt_eval.json").read_text())
  assert result["task"] == "topics" and result["num_queries"] == 8
  assert len(result["prompts"]) == 11 and result["usage"]["calls"] == 11 * 8
  best = max(p["accuracy"] for p in result["prompts"])
  assert result["best"]["accuracy"] == best <= result["oracle"]
  kept = lambda d: {p: os.path.getmtime(p) for p in glob.glob(str(d / "*"))}  # noqa: E731
  programs = kept(tmp_path / "w" / "xla_cache")
  assert programs  # the first run kept its compiled programs in the workdir
  r = run(own)
  again = json.loads((tmp_path / "w" / "prompt_eval.json").read_text())
  assert again["usage"]["calls"] == 11 * 8 and again["prompts"] == result["prompts"]
  # the rerun loaded them: a miss would have compiled and rewritten its entry
  assert kept(tmp_path / "w" / "xla_cache") == programs
  # a cache the user gave JAX (one for many workdirs) holds them instead of the workdir
  r = run({**own, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "shared"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert kept(tmp_path / "shared") and kept(tmp_path / "w" / "xla_cache") == programs


@pytest.mark.multiprocess
def test_main_rejects_bad_task_and_data(tmp_path):
  r = run_main("--config=configs/tiny.py", "--mode=evaluate_prompts", "--config.task.name=mnist",
            workdir=tmp_path)
  assert r.returncode != 0 and "task.name='mnist'" in r.stderr
  r = run_main("--config=configs/tiny.py", "--mode=evaluate_prompts", "--config.task.name=gsm8k",
            "--config.task.data.kind=files", "--config.task.data.dir=/no/such/dir",
            workdir=tmp_path / "w")
  assert r.returncode != 0 and "task.data.dir='/no/such/dir' is not a directory" in r.stderr
  assert not os.path.exists(tmp_path / "w")  # failed before writing a byte


@pytest.mark.multiprocess
def test_main_build_and_inspect_data(tmp_path):
  r = run_main("--config=configs/tiny.py", "--mode=build_d0", workdir=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  manifest = json.loads((tmp_path / "data" / "loop_0" / "manifest.json").read_text())
  assert manifest["count"] == 8 * 11 and manifest["normalizer"]["max"] > manifest["normalizer"]["min"]
  r = run_main("--config=configs/tiny.py", "--mode=inspect_data", workdir=tmp_path)
  assert r.returncode == 0 and "| manual | 32 |" in r.stdout
  assert (tmp_path / "data" / "loop_0_rewards.png").stat().st_size > 1000




@pytest.mark.multiprocess
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data not present")
def test_main_imports_published_qpo_logs(tmp_path):
  path = os.path.join(SHARED, "qpo_offline", "tweet_emotion",
                      "tweet_emotion_llama7b_ocml_round1_few_shot_expert.json")
  r = run_main("--config=configs/tiny.py", "--mode=build_d0", "--config.offline.source=qpo_json",
            f"--config.offline.path={path}", "--config.task.name=tweet_emotion",
            "--config.task.data.kind=files", "--config.train.prompt_len=64",
            f"--config.task.data.dir={os.path.join(SHARED, 'tweet_emotion')}", workdir=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "imported 8587, skipped 0" in r.stdout
  manifest = json.loads((tmp_path / "data" / "loop_0" / "manifest.json").read_text())
  assert (manifest["count"], manifest["queries"], manifest["prompts"]) == (8587, 260, 151)


def _policy_preset(spec):
  """Architecture of a config's policy without loading weights."""
  if spec.name == "smollm2-135m-instruct":
    return preset("smollm2-135m")
  return preset(spec.preset)


@pytest.mark.integration
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_train_step_eval_shape(path):
  from qpo_jax.policy import train_step
  from qpo_jax.policy.model import init_policy
  from qpo_jax.policy.settings import TrainSettings

  config = config_module(path).get_config()
  cfg = _policy_preset(config.policy)
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  params = jax.eval_shape(lambda: init_policy(cfg, jax.random.key(0)))
  tc = TrainSettings.of(config.train)
  step = train_step.make_train_step(cfg, tc, 10, params, mesh)
  b, lq, lp = tc.batch_size, tc.query_len, tc.prompt_len
  batch = {"returns": jax.ShapeDtypeStruct((b,), jnp.float32),
           "query": jax.ShapeDtypeStruct((b, lq), jnp.int32),
           "query_mask": jax.ShapeDtypeStruct((b, lq), bool),
           "prompt": jax.ShapeDtypeStruct((b, lp), jnp.int32),
           "prompt_mask": jax.ShapeDtypeStruct((b, lp), bool)}
  _, metrics = jax.eval_shape(step.update, step.shapes, batch, jax.random.key(0))
  assert metrics["ce"].shape == ()


@pytest.mark.multiprocess
def test_main_train_and_sample_policy(tmp_path):
  assert run_main("--config=configs/tiny.py", "--mode=build_d0", workdir=tmp_path).returncode == 0
  r = run_main("--config=configs/tiny.py", "--mode=train_policy", workdir=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  round_dir = tmp_path / "policy" / "round_1"
  lines = (round_dir / "metrics.jsonl").read_text().splitlines()
  assert (round_dir / "final").exists() and len(lines) >= 1
  r = run_main("--config=configs/tiny.py", "--mode=train_policy", workdir=tmp_path)  # finished: skip
  assert r.returncode == 0 and (round_dir / "metrics.jsonl").read_text().splitlines() == lines
  r = run_main("--config=configs/tiny.py", "--mode=sample_prompts", workdir=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(json.loads((round_dir / "prompts.json").read_text())) == 8
  r = run_main("--config=configs/tiny.py", "--mode=train_policy", "--config.round=2",
               workdir=tmp_path)  # round 2 trains on D_1, which no collection made yet
  assert r.returncode != 0 and "FATAL" in r.stderr and "data/loop_1" in r.stderr, r.stderr


@pytest.mark.multiprocess
def test_user_errors_are_one_line_and_library_info_is_quiet(tmp_path):
  r = run_main("--config=configs/tiny.py", "--config.train.batch_size=-8", workdir=tmp_path / "w")
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert lines[-2] == ("FATAL train.batch_size=-8 must be a positive whole number "
                       "(--config.train.batch_size=...)")
  assert lines[-1] == "(--traceback shows where it was raised)"
  r = run_main("--config=configs/tiny.py", "--config.train.batch_size=-8", "--traceback",
            workdir=tmp_path / "w")
  assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("FATAL ")
  r = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/tiny.py"],
                     capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "FATAL Flags parsing error: flag --workdir=None" in r.stderr
  r = run_main("--config=configs/tiny.py", "--config.loop.num_loops=1", workdir=tmp_path / "run")
  assert r.returncode == 0, r.stderr[-2000:]
  info = [ln for ln in r.stderr.splitlines() if ln.startswith("I")]
  assert not [ln for ln in info if "orbax" in ln or "checkpoint_manager.py" in ln], info[:5]
  assert any("evaluation.py" in ln for ln in info)  # the package's own INFO stays
