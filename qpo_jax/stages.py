"""A run's stages, one table: what each makes and where, the config sections it is made
from, where it records them and its cost.

A run is D_0, then per loop t a policy round (trained on D_{t-1}) and a collection
(D_t = D_{t-1} + the round's evaluated prompts), then the report. The loop runs
`of_run(T)` in order; resume checks (`Run.check_workdir`), stage fingerprints
(fingerprint.py) and the report's cost table read the same `Stage`s, so a new stage or a
moved artifact is one edit here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from qpo_jax.utils import read_json
from qpo_jax.workdir import Workdir

KINDS = ("d0", "round", "collect")
_D0_SECTIONS = ("seed", "task", "target", "offline")


@dataclasses.dataclass(frozen=True)
class Stage:
  kind: str  # one of KINDS
  t: int = 0  # the loop (0 for D_0)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"stage {self.kind!r} is not one of {KINDS}")
    if (self.kind == "d0") != (self.t == 0) or self.t < 0:
      raise ValueError(f"stage {self.kind!r} cannot be loop {self.t}")

  @property
  def name(self) -> str:
    """Its key in the cost table and results.json: d0, round_<t>, collect_<t>."""
    return "d0" if self.kind == "d0" else f"{self.kind}_{self.t}"

  @property
  def title(self) -> str:
    """What the stage makes, for messages about its artifact."""
    return {"d0": "D_0", "round": f"policy round {self.t}",
            "collect": f"loop {self.t}'s collection (D_{self.t})"}[self.kind]

  @property
  def work(self) -> str:
    """What the stage does, for the line a signal that stops it prints."""
    return {"d0": "D_0", "round": f"policy round {self.t}'s training",
            "collect": f"loop {self.t}'s collection"}[self.kind]

  def artifact(self, wd: Workdir) -> str:
    """The directory the stage makes (it is finished once its marker is there)."""
    return wd.round(self.t) if self.kind == "round" else wd.data(self.t)

  def artifacts(self, wd: Workdir) -> str:
    """Everything the stage writes, for messages that say what to delete."""
    if self.kind == "collect":
      return f"{wd.data(self.t)} (and {wd.collect_plan(self.t)})"
    return self.artifact(wd)

  def record(self, wd: Workdir) -> str:
    """The config fields the stage was made with (fingerprint.py)."""
    return self.artifact(wd) + ".config.json"

  @property
  def sections(self) -> tuple[str, ...]:
    """The config sections the stage's result depends on (fingerprint.py drops the
    neutral fields, and for D_0 the expert filter, which applies when a round reads it)."""
    if self.kind == "d0":
      return _D0_SECTIONS
    later = ("sample", "loop") if self.kind == "collect" or self.t > 1 else ()
    return _D0_SECTIONS + ("policy", "train") + later

  def cost(self, wd: Workdir) -> dict[str, Any] | None:
    """The `cost` the finished stage wrote beside its artifact (usage, seconds, memory)."""
    if self.kind == "round":
      return read_json(wd.final(self.t), {}).get("cost")
    return read_json(wd.manifest(self.t), {}).get("meta", {}).get("cost")


def of_run(num_loops: int) -> list[Stage]:
  """The stages of a run of `num_loops` loops, in the order they run."""
  return [Stage("d0")] + [Stage(kind, t) for t in range(1, num_loops + 1)
                          for kind in ("round", "collect")]
