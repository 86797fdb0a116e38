"""docs/architecture.md holds: no qpo_jax module imports a layer above it; one Workdir layout."""

import ast
import json
import os
import re

import pytest

from qpo_jax import stages
from qpo_jax.stages import Stage
from qpo_jax.workdir import Workdir

from tests.helpers import ROOT


def _layers() -> dict[str, int]:
  """Module prefix -> layer number, read from the table in docs/architecture.md."""
  text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
  out = {}
  for number, cells in re.findall(r"^\| (\d) [^|]+\| ([^|]+) \|", text, flags=re.M):
    for name in re.findall(r"`([a-z_.0-9]+)`", cells):
      out["qpo_jax." + name] = int(number)
  return out


def _layer(module: str, layers: dict[str, int]) -> int:
  best = max((p for p in layers if module == p or module.startswith(p + ".")), key=len,
             default=None)
  assert best is not None, f"{module} is in no layer of docs/architecture.md"
  return layers[best]


def _modules():
  for dirpath, _, files in os.walk(os.path.join(ROOT, "qpo_jax")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        yield name, path


def _imports(path: str):
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qpo_jax"):
      for alias in node.names:
        yield f"{node.module}.{alias.name}"
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith("qpo_jax"))


def test_the_table_names_every_layer():
  assert sorted(set(_layers().values())) == list(range(7))


def test_no_module_imports_a_layer_above_it():
  layers = _layers()
  modules = dict(_modules())
  upward = []
  for name, path in modules.items():
    if name == "qpo_jax":
      continue
    mine = _layer(name, layers)
    for target in _imports(path):
      target = target if target in modules else target.rsplit(".", 1)[0]  # `from pkg import fn`
      if target != "qpo_jax" and _layer(target, layers) > mine:
        upward.append(f"{name} (layer {mine}) imports {target} (layer {_layer(target, layers)})")
  assert not upward, "\n".join(upward)


def _package(module: str) -> str:
  return ".".join(module.split(".")[:2])  # qpo_jax.policy.trainer -> qpo_jax.policy


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` (node -> the nodes it imports), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt, path + [nxt])):
        return found
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node, [node])):
      return found
  return None


def test_no_import_cycle_between_modules_or_packages():
  """Within a layer too: store/pipeline.py and training_rows.py, models/ and checkpoints/
  once imported each other."""
  modules = dict(_modules())
  by_module: dict[str, set[str]] = {}
  by_package: dict[str, set[str]] = {}
  for name, path in modules.items():
    for target in _imports(path):
      target = target if target in modules else target.rsplit(".", 1)[0]
      if target.startswith("qpo_jax.") and target != name:
        by_module.setdefault(name, set()).add(target)
        if _package(target) != _package(name):
          by_package.setdefault(_package(name), set()).add(_package(target))
  for graph in (by_module, by_package):
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_a_violation_would_be_caught():
  layers = _layers()
  assert _layer("qpo_jax.store.dataset", layers) == 2 < _layer("qpo_jax.loop", layers) == 5
  assert _layer("qpo_jax.models.config", layers) == 0 < _layer("qpo_jax.models.transformer", layers)


def test_workdir_finds_its_artifacts_by_name(tmp_path):
  """The listing helpers see finished and partial datasets, rounds with a `final` marker and
  every stage's config record, and nothing else with a similar name."""
  wd = Workdir(str(tmp_path))
  assert (wd.datasets(), wd.finished_rounds(), wd.last_recorded_loop()) == ([], [], 0)
  for t in (0, 2, 10):
    os.makedirs(wd.data(t))
  os.makedirs(wd.data(0) + ".partial")
  for t in (1, 2):
    os.makedirs(wd.round(t))
    open(Stage("round", t).record(wd), "w").close()
  open(wd.final(1), "w").close()
  for name in ("d0", "collect"):
    open(Stage(name, 3 if name == "collect" else 0).record(wd), "w").close()
  open(wd.collect_plan(4), "w").close()
  assert wd.datasets() == [0, 2, 10]
  assert wd.finished_rounds() == [1]
  assert wd.last_recorded_loop() == 3
  assert Stage("d0").record(wd) == wd.data(0) + ".config.json"
  assert Stage("round", 2).record(wd) == os.path.join(str(tmp_path), "policy",
                                                      "round_2.config.json")
  with pytest.raises(ValueError, match="stage 'report' is not one of"):
    Stage("report", 1)
  with pytest.raises(ValueError, match="stage 'round' cannot be loop 0"):
    Stage("round")


def test_the_stage_table_lists_a_run_in_order_with_its_records_and_costs(tmp_path):
  wd = Workdir(str(tmp_path))
  run = stages.of_run(2)
  assert [s.name for s in run] == ["d0", "round_1", "collect_1", "round_2", "collect_2"]
  assert [s.sections[-1] for s in run] == ["offline", "train", "loop", "loop", "loop"]
  assert [s.record(wd) for s in run] == [wd.data(0) + ".config.json",
                                         wd.round(1) + ".config.json", wd.data(1) + ".config.json",
                                         wd.round(2) + ".config.json", wd.data(2) + ".config.json"]
  os.makedirs(wd.data(1))
  os.makedirs(wd.round(1))
  with open(wd.manifest(1), "w") as f:
    json.dump({"meta": {"cost": {"seconds": 2.0}}}, f)
  with open(wd.final(1), "w") as f:
    json.dump({"cost": {"seconds": 3.0}}, f)
  assert [s.cost(wd) for s in run] == [None, {"seconds": 3.0}, {"seconds": 2.0}, None, None]
