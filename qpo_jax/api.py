"""What notebooks and scripts call: the same work as `main.py --mode=...`, as functions.

`run` and `train_and_evaluate` go through `modes.run`, so they check the config before any
model loads, hold the workdir's lock, show progress bars as `config.progress` says and keep
compiled programs in the workdir, exactly as the command line does. The readers below
(queries, a run's target and cache, its datasets, training metrics and policy, the proxy)
check the config too and build what they return as those stages build it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator, Sequence

import ml_collections

from qpo_jax import evaluation, loop, modes, rounds
from qpo_jax import optimize as optimize_lib
from qpo_jax.context import Run
from qpo_jax.eval_cache import EvalCache
from qpo_jax.evaluation import Outcome
from qpo_jax.policy import trainer
from qpo_jax.policy.sampling import PromptSampler
from qpo_jax.store import dataset
from qpo_jax.store.records import Record
from qpo_jax.targets import server as server_lib
from qpo_jax.tasks import Example, Task
from qpo_jax.utils import configs_dir, load_config as _load_config_file
from qpo_jax.workdir import Workdir

def packaged_configs() -> list[str]:
  """Names of the configs shipped with qpo_jax ('quickstart', 'tiny', 'nlu', ...)."""
  try:
    names = os.listdir(configs_dir())
  except FileNotFoundError:
    return []
  return sorted(n[:-3] for n in names if n.endswith(".py") and n not in ("__init__.py",
                                                                          "base.py"))


def config_path(spec: str) -> str:
  """A config spec with a packaged name made a file path ('nlu:task=boolq' ->
  '<configs>/nlu.py:task=boolq'); a spec naming an existing file is returned as it is."""
  path, sep, arg = spec.partition(":")
  if os.path.isfile(path) or path.endswith(".py") or path not in packaged_configs():
    return spec
  return os.path.join(configs_dir(), f"{path}.py") + sep + arg


def resolve_config_args(argv: Sequence[str]) -> list[str]:
  """argv with `--config NAME` / `--config=NAME` of a packaged config made its path."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i] = "--config=" + config_path(a[len("--config="):])
    elif a == "--config" and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A config as `--config` reads it: a packaged name ('quickstart', 'nlu:task=boolq') or a
  file ('configs/paper.py:task=gsm8k,setting=zero_shot,target=gpt-4o'); locked, so a typo
  in a field name fails."""
  config = _load_config_file(config_path(spec))
  config.lock()
  return config


def run(mode: str, config: ml_collections.ConfigDict, workdir: str) -> Any:
  """`main.py --mode=<mode>`: any mode of modes.MODES, with the command line's checks."""
  return modes.run(mode, config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The whole QPO run (D_0, the loops, the report); returns results.json's content. A rerun
  continues where a killed one stopped."""
  return modes.run("loop", config, workdir)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A trained round's policy, loaded once; `prompts` writes prompts for queries."""

  sampler: PromptSampler

  @property
  def round(self) -> int:
    return self.sampler.round

  def prompts(self, queries: Sequence[str], *, samples: int = 0, seed: int = 0,
              target_return: float | None = None) -> list[list[str]]:
    """The greedy prompt of each query (`samples=0`), or that many from the collection
    sampler; conditioned on R* = `target_return` (default: the config's)."""
    return self.sampler(list(queries), collect=samples > 0, seed=seed,
                        num_samples=samples or None, target_return=target_return)


def load_policy(config: ml_collections.ConfigDict, workdir: str, round: int = 0) -> Policy:  # pylint: disable=redefined-builtin
  """Round `round` of a run's policy (0: the last finished), checked against the config."""
  return Policy(rounds.prompt_sampler(Run(config, workdir), round))


def queries(config: ml_collections.ConfigDict, n: int, split: str = "test") -> list[Example]:
  """`n` class-balanced queries of `split`, seeded by `config.seed` as evaluate_prompts and
  sample_prompts draw them (texts cut to task.max_words)."""
  loop.validate(config, policy=False)
  return modes.sampled_queries(Run(config), split, n)


@dataclasses.dataclass(frozen=True)
class Target:
  """A run's target behind its result cache: each (query, prompt) is asked once, whichever
  stage or notebook asks, and counted in `usage()`. Queries are `Example`s or, for tasks
  with one text field, plain strings (no gold answer: `answers` only)."""

  task: Task
  backend: Any
  cache: EvalCache
  max_new_tokens: int

  def _examples(self, items: Sequence[Example | str]) -> list[Example]:
    field = self.task.field_names[0][0]
    if any(isinstance(x, str) for x in items) and len(self.task.field_names) != 1:
      raise ValueError(f"task {self.task.name!r} has fields {[f for f, _ in self.task.field_names]}"
                       ": pass Examples, not strings")
    return [x if isinstance(x, Example) else Example(uid=f"text:{i}", fields={field: x})
            for i, x in enumerate(items)]

  def outcomes(self, items: Sequence[Example], prompt: str) -> list[Outcome]:
    """Each query's zero-shot `Outcome` with `prompt` (prediction, NLLs, correctness)."""
    if any(isinstance(x, str) for x in items):
      raise ValueError("a plain string has no gold answer to score: pass Examples "
                       "(qpo_jax.queries) or ask for answers()")
    return evaluation.evaluate_pairs(self.task, self.backend,
                                     [(q, prompt) for q in self._examples(items)],
                                     cache=self.cache, max_new_tokens=self.max_new_tokens)

  def accuracy(self, items: Sequence[Example], prompt: str) -> float:
    return evaluation.accuracy(self.outcomes(items, prompt))

  def answers(self, items: Sequence[Example | str], prompt: str) -> list[str]:
    """The target's answer with `prompt`: its likeliest option, or its reply."""
    return optimize_lib.answers(self.task, self.backend,
                                [(q, prompt) for q in self._examples(items)], self.cache,
                                self.max_new_tokens)

  def usage(self) -> dict[str, dict[str, int]]:
    """Calls and tokens per target identity, over the cache's whole life."""
    return self.cache.usage()


def load_target(config: ml_collections.ConfigDict, workdir: str) -> Target:
  """The run's target (config.target on config.mesh) with `<workdir>/eval_cache.sqlite`."""
  loop.validate(config, policy=False)
  run = Run(config, workdir)
  return Target(run.task, run.target, run.cache, int(config.eval.max_new_tokens))


def read_dataset(workdir: str, t: int = 0) -> tuple[list[Record], dict[str, Any]]:
  """D_t's records and manifest (0: D_0), checked against the manifest's sha256s."""
  return dataset.read_dataset(Workdir(workdir).data(t))


def finished_rounds(workdir: str) -> list[int]:
  """The policy rounds whose training finished, ascending."""
  return Workdir(workdir).finished_rounds()


def training_metrics(workdir: str, round: int) -> list[dict[str, float]]:  # pylint: disable=redefined-builtin
  """Round `round`'s logged training metrics (step, loss, ce, mse, ...), in order."""
  return trainer.metrics_history(Workdir(workdir).round(round))


@contextlib.contextmanager
def serving_policy(config: ml_collections.ConfigDict, workdir: str) -> Iterator[str]:
  """The prompt-optimising proxy of `--mode=serve_policy` (round `config.round`, the run's
  target, config.serve's host, port, bounds and key) in a thread; yields its base URL
  (`http://host:port/v1`) and stops it on exit."""
  loop.validate(config)
  server = modes.http_server(config, modes.proxy(Run(config, workdir)))
  server_lib.serve_in_thread(server)
  try:
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}/v1"
  finally:
    server.shutdown()
    server.server_close()
