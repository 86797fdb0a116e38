"""Stage fingerprints: the config fields a workdir artifact was made from, checked on reuse.

A rerun skips every stage whose artifact exists in the workdir. That is only
right if the stage would be made the same way today, so each stage records,
when it starts, the config fields its result depends on (`<artifact>.config.json`
beside the artifact), and a run whose fields differ stops before any work,
naming the stage, each changed field (old -> new) and what to do. Fields that
cannot change a result are left out: progress bars, log and checkpoint
frequency, shard and chunk sizes, the target's batch size and padding buckets,
the mesh, HTTP retry settings, `loop.num_loops` (more loops extend a run;
they do not change its earlier stages) and `loop.final_collection` (whether the
last round's collection runs, not how).

What each stage depends on (`Stage.sections`, stages.py):
  d0         seed, task, target, data (without the training-time expert filter)
  round t    d0's fields + policy, train, the expert filter; for t > 1 also
             sample and loop (round t trains on what loops 1..t-1 collected)
  collect t  round t's fields + sample, loop
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections

from qpo_jax import config_rules
from qpo_jax.stages import Stage
from qpo_jax.tasks import MAPS, set_entries
from qpo_jax.utils import atomic_write_text, read_json

# configs/base.py lists them beside the fields; `train.round`, older configs' name of
# `round`, selected a stage rather than shaping it
NEUTRAL: frozenset[str] = config_rules.NEUTRAL | {"train.round"}
# Fields that moved (configs/base.py): a stage recorded under the old name is compared
# under the new one.
RENAMED = config_rules.MOVED
# the fields that name a file or directory
PATHS = ("dir", "data_dir", "path", "tokenizer_path", "prompts_dir", "prompts_file",
         "aliases_file")
# applied when a round draws its data
FILTER = ("offline.threshold", "offline.top_fraction", "offline.rank_by",
          "offline.rows_per_query", "offline.returns")
_UNSET = "<unset>"


# recorded as one value, so a change names the whole mapping (files / splits predate this
# and stay recorded per entry)
WHOLE = ("task.split_rules",)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(node, Mapping) and prefix[:-1] not in WHOLE:
    out = {}
    for k, v in node.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: node}


def _set_entries(d: dict[str, Any]) -> dict[str, Any]:
  """`task.data.files` / `splits` and `task.split_rules` as the entries a config sets
  (an entry None or "" is unset; None: none set), the form stages recorded when these
  fields were plain dicts, so older workdirs still resume."""
  task = d.get("task", {})
  data = task.get("data", {})
  for node, k in [(data, k) for k in MAPS] + [(task, "split_rules")]:
    if isinstance(node.get(k), Mapping):
      node[k] = set_entries(node[k]) or None
  return d


def _fields(config: ml_collections.ConfigDict, sections: tuple[str, ...]) -> dict[str, Any]:
  d = _set_entries(config.to_dict())
  flat: dict[str, Any] = {}
  for s in sections:
    if s in d:
      flat.update(_flat(d[s], f"{s}.") if isinstance(d[s], Mapping) else {s: d[s]})
  flat = {k: v for k, v in flat.items() if k not in NEUTRAL}
  return json.loads(json.dumps(flat, sort_keys=True, default=str))  # tuples -> lists


def stage_fields(config: ml_collections.ConfigDict, stage: Stage) -> dict[str, Any]:
  """The fields `stage` depends on (its sections, stages.py), flattened to 'a.b'."""
  fields = _fields(config, stage.sections)
  return {k: v for k, v in fields.items() if k not in FILTER} if stage.kind == "d0" else fields


def _same(name: str, old: Any, new: Any) -> bool:
  """Equal values; for a file or directory field, two spellings of the same path are equal
  (`../data/x` and `/work/data/x`, `~/x`), so moving the working directory or the
  way a config spells a path does not stop a run."""
  if old == new:
    return True
  if (name.rsplit(".", 1)[-1] in PATHS and isinstance(old, str) and isinstance(new, str)
      and old and new):
    return os.path.realpath(os.path.expanduser(old)) == os.path.realpath(os.path.expanduser(new))
  return False


def check(path: str, fields: Mapping[str, Any], stage: str, artifact: str) -> bool:
  """Raises if `path` records other fields than `fields`; False if it records none yet."""
  old = read_json(path)
  if old is None:
    return False
  old = {RENAMED.get(k, k): v for k, v in old.items()}
  # a field the record lacks joined the schema (configs/base.py) after the stage ran;
  # its default keeps the old behaviour, so only fields both know, or that left, count;
  # a recorded field that has since been found neutral (NEUTRAL) no longer counts
  changed = [f"{k}: {old.get(k, _UNSET)!r} -> {fields.get(k, _UNSET)!r}"
             for k in sorted(old)
             if k not in NEUTRAL and not _same(k, old[k], fields.get(k, _UNSET))]
  # a WHOLE field is None unless set: set now, it changes a stage recorded before it existed
  changed += [f"{k}: {_UNSET!r} -> {fields[k]!r}" for k in WHOLE
              if k not in old and fields.get(k) is not None]
  if changed:
    raise ValueError(
        f"{stage} in this workdir was made with other settings ({path}):\n  "
        + "\n  ".join(changed)
        + f"\nUse a new --workdir, or delete {artifact} and {path} (and every later stage) "
        "to redo it with these settings.")
  return True


def claim(path: str, fields: Mapping[str, Any], stage: str, artifact: str) -> None:
  """`check`, then records `fields` for a stage that has none recorded (about to start)."""
  if not check(path, fields, stage, artifact):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(path, json.dumps(dict(fields), indent=1, sort_keys=True))
