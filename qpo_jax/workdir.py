"""The one place that names a run directory's artifacts (docs/architecture.md shows the tree).

Every stage, mode and report asks a `Workdir` for its paths instead of joining
strings, so the layout can only change here.
"""

from __future__ import annotations

import dataclasses
import os
import re

MANIFEST = "manifest.json"  # a dataset directory's index, written last (store/dataset.py)


@dataclasses.dataclass(frozen=True)
class RoundDir:
  """Paths inside one policy round's directory (policy/trainer.py writes them)."""

  root: str

  def _in(self, *parts: str) -> str:
    return os.path.join(os.path.abspath(self.root), *parts)

  @property
  def final(self) -> str:
    """The marker of a finished round: steps, last metrics, cost."""
    return self._in("final")

  @property
  def metrics(self) -> str:
    """One JSON line per logged step."""
    return self._in("metrics.jsonl")

  @property
  def tensorboard(self) -> str:
    return self._in("tb")

  @property
  def params(self) -> str:
    """The finished round's parameters (orbax)."""
    return self._in("params")

  @property
  def params_sums(self) -> str:
    """sha256 of every file under `params`."""
    return self._in("params.sha256.json")

  @property
  def checkpoints(self) -> str:
    """Resumable training states (orbax CheckpointManager, one folder per step)."""
    return self._in("checkpoints")

  def step_sums(self, step: int) -> str:
    """sha256 of every file of checkpoint `step`."""
    return self._in("checkpoint_sums", f"{step}.json")

  def damaged(self, step: int, stamp: int) -> str:
    """Where a checkpoint that failed its checks is moved."""
    return self._in("damaged", f"{step}-{stamp}")


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Paths of a run directory; nothing is created by asking."""

  root: str

  def data(self, t: int) -> str:
    """D_t: TFRecord shards and manifest.json (t = 0: D_0)."""
    return os.path.join(self.root, "data", f"loop_{t}")

  def manifest(self, t: int) -> str:
    """D_t's manifest (counts, normaliser, sha256 per shard, the stage's cost in `meta`)."""
    return os.path.join(self.data(t), MANIFEST)

  def collect_plan(self, t: int) -> str:
    """Loop t's collect queries and the prompts sampled for them."""
    return self.data(t) + ".collect.json"

  def round(self, t: int) -> str:
    """Policy round t: orbax checkpoints, params, metrics, the `final` marker."""
    return os.path.join(self.root, "policy", f"round_{t}")

  def round_files(self, t: int) -> RoundDir:
    """The paths inside round t's directory."""
    return RoundDir(self.round(t))

  def final(self, t: int) -> str:
    """Round t's `final` marker: training finished (steps, last metrics, cost)."""
    return self.round_files(t).final

  def sampled_prompts(self, t: int) -> str:
    """--mode=sample_prompts' output for round t."""
    return os.path.join(self.round(t), "prompts.json")

  def finished_rounds(self) -> list[int]:
    """Rounds whose training finished, ascending."""
    return [t for t in self._indices("policy", r"round_(\d+)") if os.path.exists(self.final(t))]

  def datasets(self) -> list[int]:
    """Loops t that have a data/loop_<t> directory (finished or not), ascending."""
    return self._indices("data", r"loop_(\d+)")

  def last_recorded_loop(self) -> int:
    """The highest loop any stage's config record names (0: none past D_0)."""
    return max(self._indices("data", r"loop_(\d+)\.config\.json") +
               self._indices("policy", r"round_(\d+)\.config\.json"), default=0)

  def _indices(self, sub: str, pattern: str) -> list[int]:
    base = os.path.join(self.root, sub)
    names = os.listdir(base) if os.path.isdir(base) else []
    return sorted(int(m.group(1)) for m in map(lambda n: re.fullmatch(pattern, n), names) if m)

  @property
  def lock(self) -> str:
    """Held (flock) by the process running a mode on this workdir; names its PID and host."""
    return os.path.join(self.root, ".lock")

  @property
  def compile_cache(self) -> str:
    """Compiled XLA programs (JAX's persistent cache): a resumed run loads, not recompiles."""
    return os.path.join(self.root, "xla_cache")

  @property
  def cache(self) -> str:
    """Every target result, with call and token counts."""
    return os.path.join(self.root, "eval_cache.sqlite")

  def eval(self, name: str) -> str:
    """The final report's files: results.json, results.md, results.png."""
    return os.path.join(self.root, "eval", name)

  def export(self, t: int) -> str:
    """--mode=export_policy's default output for round t."""
    return os.path.join(self.root, "export", f"round_{t}")

  @property
  def optimized(self) -> str:
    """--mode=optimize's default output."""
    return os.path.join(self.root, "optimized.jsonl")

  @property
  def answers(self) -> str:
    """--mode=generate's answers."""
    return os.path.join(self.root, "answers.json")

  @property
  def prompt_eval(self) -> str:
    """--mode=evaluate_prompts' accuracies."""
    return os.path.join(self.root, "prompt_eval.json")
