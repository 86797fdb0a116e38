"""Test setup: 8 simulated CPU devices and one compile cache (both set before JAX starts),
and shared fixtures."""

import os
import shutil
import tempfile

EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " " + EIGHT_DEVICES).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# where configs/paper.py and nlu.py find public task files (tests/helpers.SHARED_DATA)
os.environ.setdefault("QPO_DATA", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "data"))

# One persistent compile cache for the session, used by this process and every process it
# starts (main.py runs, notebooks, multihost; modes.run keeps programs there instead of in
# each workdir): the same small programs then compile once, not once per test. JAX keys
# entries by this path too, so all share one path. A maximum size turns on JAX's file lock,
# so processes that compile the same program at once never read half an entry; the lock's
# price is a scan of the directory per entry written, so only programs that took 0.2 s to
# compile are kept, as modes.run does (all of them: thousands of entries, slower overall).
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="qpo_tests_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import gc  # noqa: E402

import pytest  # noqa: E402


TIERS = ("integration", "multiprocess", "real_model", "repro")


def pytest_sessionfinish():
  if _SESSION_CACHE:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """A test with none of the slower tiers' markers is a unit test (`pytest -m unit`)."""
  for item in items:
    if not any(item.get_closest_marker(tier) for tier in TIERS):
      item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops JAX's compiled programs after each test file.

  Each XLA:CPU executable holds a few memory mappings, and JAX's caches keep
  every one alive; over the whole suite one process passed Linux's default
  65530 mappings per process (vm.max_map_count) and XLA crashed with SIGSEGV
  while compiling. Clearing per file keeps the count in the low thousands.
  """
  yield
  import jax  # pylint: disable=g-import-not-at-top

  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def smollm2():
  """The real embedded SmolLM2-135M-Instruct, loaded once."""
  from qpo_jax.checkpoints.registry import load_model

  return load_model({"name": "smollm2-135m-instruct"})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(workdir, results) of one uninterrupted QPO run on configs/tiny.py (one device:
  helpers.tiny_config), shared by tests."""
  from qpo_jax import loop
  from tests.helpers import tiny_config

  work = str(tmp_path_factory.mktemp("tiny_run"))
  return work, loop.run_loop(tiny_config(), work)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
  """SmolLM2's tokenizer alone (read from the GGUF metadata; no weights)."""
  from qpo_jax.checkpoints.gguf_import import gguf_tokenizer
  from qpo_jax.checkpoints.registry import smollm2_gguf_path

  return gguf_tokenizer(smollm2_gguf_path())


def one_device_env() -> dict[str, str]:
  """The environment for a child process that runs as a user would: one CPU device.

  (8 simulated devices would make a data-parallel mesh hold 8 copies of SmolLM2.)
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(EIGHT_DEVICES, "").strip()
  return env


def untrained_proxy(api_key: str, max_tokens: int):
  """(sampler, target, task, server) of a proxy over the tiny config's untrained policy,
  serving on loopback (request handling needs no trained run); shut the server down."""
  from qpo_jax.context import Run
  from qpo_jax.policy.sampling import PromptSampler
  from qpo_jax.policy.serve import PolicyServer
  from qpo_jax.policy.settings import SampleSettings
  from qpo_jax.targets import build_target
  from qpo_jax.targets.server import Limits, make_server, serve_in_thread
  from qpo_jax.tasks import get_task
  from qpo_jax.utils import load_config

  config = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                                    "tiny.py"))
  cfg, params, tok = Run(config).pretrained_policy()
  sampler = PromptSampler(cfg, params, tok, SampleSettings.of(config.sample),
                                 config.train.query_len, config.train.prompt_len, round=0)
  target, task = build_target(config.target), get_task("topics")
  server = make_server(PolicyServer(sampler, task, target, "qpo-topics"), api_key=api_key,
                       limits=Limits(max_tokens=max_tokens))
  serve_in_thread(server)
  return sampler, target, task, server
