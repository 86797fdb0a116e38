"""The one place that names a run directory's artifacts (docs/architecture.md shows the tree).

Every stage, mode and report asks a `Workdir` for its paths instead of joining
strings, so the layout can only change here.
"""

from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Paths of a run directory; nothing is created by asking."""

  root: str

  def data(self, t: int) -> str:
    """D_t: TFRecord shards and manifest.json (t = 0: D_0)."""
    return os.path.join(self.root, "data", f"loop_{t}")

  def collect_plan(self, t: int) -> str:
    """Loop t's collect queries and the prompts sampled for them."""
    return self.data(t) + ".collect.json"

  def round(self, t: int) -> str:
    """Policy round t: orbax checkpoints, params, metrics, the `final` marker."""
    return os.path.join(self.root, "policy", f"round_{t}")

  def final(self, t: int) -> str:
    """Round t's `final` marker: training finished (steps, last metrics, cost)."""
    return os.path.join(self.round(t), "final")

  def sampled_prompts(self, t: int) -> str:
    """--mode=sample_prompts' output for round t."""
    return os.path.join(self.round(t), "prompts.json")

  def finished_rounds(self) -> list[int]:
    """Rounds whose training finished, ascending."""
    base = os.path.join(self.root, "policy")
    names = os.listdir(base) if os.path.isdir(base) else []
    return sorted(int(n.split("_")[1]) for n in names if re.fullmatch(r"round_\d+", n)
                  and os.path.exists(self.final(int(n.split("_")[1]))))

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
