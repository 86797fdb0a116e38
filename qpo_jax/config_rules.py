"""The range of every number in a config, checked before any mode loads a model or writes.

configs/base.py's `RULES` names a rule (a kind below) for each of its numeric fields
(a test walks the schema and fails on a numeric field without one, so a new field
cannot be left unchecked); `check` applies them and raises naming the field, its value and what it
must be. Fields that may be unset (None) are checked only when set.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Any, Callable, Mapping

import ml_collections

from qpo_jax.utils import config_module, configs_dir


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
  return _number(v) and float(v).is_integer()


# name -> (test, what the value must be)
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: _number(v) and v > 0, "a positive number"),
    "positive_int": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "count": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "non_negative": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "seed": (lambda v: _whole(v) and 0 <= v < 2**32, "a whole number in 0 .. 2**32 - 1"),
    "fraction": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "unit": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "mesh_axis": (lambda v: _whole(v) and (v == -1 or v > 0), "a positive whole number or -1"),
    "port": (lambda v: _whole(v) and 0 <= v <= 65535, "a port number (0: any free one)"),
    "round": (lambda v: _whole(v) and v >= 0, "a round number (0: the last finished)"),
    "any": (_number, "a number"),
}

_BASE = config_module(os.path.join(configs_dir(), "base.py"))
RULES: dict[str, str] = _BASE.RULES  # beside the fields they check, in configs/base.py
NEUTRAL: frozenset[str] = _BASE.NEUTRAL  # fields that cannot change a result (fingerprint.py)
MOVED: dict[str, str] = _BASE.MOVED  # old field name -> new


def leaves(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Every field of a config as 'section.field' -> value (nested sections flattened)."""
  out: dict[str, Any] = {}
  for k, v in node.items():
    if isinstance(v, Mapping):
      out.update(leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# fields whose value is a mapping (or a list) of the user's keys, compared as one field
_VALUES = ("task.data.files", "task.data.splits", "task.data.columns", "task.split_rules")


def fields(config: Mapping[str, Any]) -> set[str]:
  """The config's field names, 'section.field' (a `_VALUES` field is one name)."""
  return {next((v for v in _VALUES if k == v or k.startswith(v + ".")), k)
          for k in leaves(config)}


@functools.cache
def _base_fields() -> frozenset[str]:
  return frozenset(fields(_BASE.get_config().to_dict()))


def schema_problem(config: Mapping[str, Any]) -> str | None:
  """What makes `config`'s fields differ from configs/base.py's, or None.

  A section assigned whole (`c.target = dict(name=...)`) replaces every field of it,
  silently dropping the ones not given; `c.target.update(name=...)` keeps them.
  """
  have = fields(config)
  missing, extra = sorted(_base_fields() - have), sorted(have - _base_fields())
  if not missing and not extra:
    return None
  sections = sorted({k.rsplit(".", 1)[0] for k in missing + extra if "." in k})
  return ("the config's fields differ from configs/base.py's"
          + (f"; missing: {', '.join(missing)}" if missing else "")
          + (f"; unknown: {', '.join(extra)}" if extra else "")
          + (f". Was a section replaced whole (c.{sections[0]} = dict(...))? Set its fields "
             f"with c.{sections[0]}.update(...) instead" if sections else ""))


def typed(cls, section: Mapping[str, Any], name: str):
  """The dataclass `cls` from config section `name`: fields typed float, int, bool or str
  are converted, a field typed as another dataclass is read from its subsection."""
  values = {}
  for field, kind in typing.get_type_hints(cls).items():
    if field not in section:
      raise ValueError(f"{name}.{field} is missing (configs/base.py lists every field)")
    values[field] = (typed(kind, section[field], f"{name}.{field}")
                     if dataclasses.is_dataclass(kind) else kind(section[field]))
  return cls(**values)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on fields that differ from base.py's, else naming the first field
  whose value breaks its rule."""
  values = leaves(config.to_dict())
  if problem := schema_problem(config.to_dict()):
    raise ValueError(problem)
  for name, kind in RULES.items():
    if name not in values:
      raise ValueError(f"the config has no field {name} (every config has the same fields; "
                       "see configs/base.py)")
    value = values[name]
    test, what = KINDS[kind]
    if value is not None and not test(value):
      raise ValueError(f"{name}={value!r} must be {what} (--config.{name}=...)")
