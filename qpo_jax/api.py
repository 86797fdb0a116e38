"""What notebooks and scripts call: the same work as `main.py --mode=...`, as functions.

Each entry goes through `modes.run`, so it checks the config before any model loads,
holds the workdir's lock, shows progress bars as `config.progress` says and keeps
compiled programs in the workdir, exactly as the command line does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import ml_collections

from qpo_jax import modes
from qpo_jax.policy import rounds
from qpo_jax.utils import configs_dir, load_config as _load_config_file

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

  sampler: rounds.PromptSampler

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
  return Policy(rounds.prompt_sampler(config, workdir, round))
