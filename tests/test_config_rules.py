"""Every number in the config schema has a range rule, and breaking one names the field."""

import os
import re

import ml_collections
import pytest

from qpo_jax import config_rules, loop
from qpo_jax.utils import load_config

from tests.helpers import ROOT, repo_config
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and not f.startswith("__"))


def _base():
  return repo_config("base.py")


def _numeric_fields(node, prefix=""):
  """Fields whose declared type is a number (placeholders too: their type is declared)."""
  out = set()
  for k in node.keys():
    if isinstance(node[k], ml_collections.ConfigDict):
      out |= _numeric_fields(node[k], f"{prefix}{k}.")
    elif node.get_type(k) in (int, float):
      out.add(f"{prefix}{k}")
  return out


def test_every_numeric_field_of_the_schema_has_a_rule():
  """A new number in configs/base.py fails here until it gets a rule."""
  numeric = _numeric_fields(_base())
  assert "task.data.label_base" in numeric and "offline.threshold" in numeric  # placeholders
  assert numeric == set(config_rules.RULES), (sorted(numeric - set(config_rules.RULES)),
                                              sorted(set(config_rules.RULES) - numeric))
  assert set(config_rules.RULES.values()) <= set(config_rules.KINDS)


def test_the_neutral_fields_are_fields_of_the_schema():
  """base.py's NEUTRAL names fields by their current names (a moved field moves there too)."""
  assert config_rules.NEUTRAL <= config_rules.fields(_base().to_dict())


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_keeps_the_rules(name):
  config_rules.check(load_config(os.path.join(ROOT, "configs", name)))


BAD = {"positive": (0, -1.0), "positive_int": (0, 2.5, -3), "count": (-1, 0.5),
       "non_negative": (-0.1,), "seed": (-1, 2**32), "fraction": (0, 1.5),
       "unit": (-0.1, 1.1), "mesh_axis": (0, -2), "port": (-1, 70000), "round": (-1,),
       "any": ("x",)}


@pytest.mark.parametrize("name,kind", sorted(config_rules.RULES.items()))
def test_a_value_outside_its_rule_is_named(name, kind):
  for value in BAD[kind] + ("3",):
    config = _base()
    section = config
    *path, leaf = name.split(".")
    for part in path:
      section = section[part]
    with section.ignore_type():
      section[leaf] = value
    stored = section[leaf]  # as the config holds it (0 on a float field is 0.0)
    with pytest.raises(ValueError, match="^" + re.escape(f"{name}={stored!r} must be ")):
      loop.validate(config)


@pytest.mark.parametrize("name", ["nlu.py:task=boolq", "paper.py:gsm8k,zero_shot,gpt-4o"])
def test_a_config_of_public_files_names_qpo_data_when_it_is_unset(name, monkeypatch, tmp_path):
  """configs/paper.py and nlu.py find task files and prompt collections under $QPO_DATA."""
  monkeypatch.delenv("QPO_DATA", raising=False)
  with pytest.raises(ValueError, match=r"\$QPO_DATA is not set.*docs/tasks_and_data.md"):
    repo_config(name)
  monkeypatch.setenv("QPO_DATA", str(tmp_path))
  config = repo_config(name)
  assert str(tmp_path) in (config.task.data.dir + config.offline.prompts_dir
                           + config.offline.prompts_file)


def test_a_moved_field_says_where_it_went():
  """base.py's MOVED: each new name is a field, no old name is one, and an old name on the
  command line is answered with the new one."""
  from qpo_jax import fingerprint, utils

  have = config_rules.fields(_base().to_dict())
  assert set(config_rules.MOVED.values()) <= have and not set(config_rules.MOVED) & have
  assert fingerprint.RENAMED == config_rules.MOVED
  config = repo_config("tiny.py")
  assert utils.unknown_field(config, "data.threshold") == (
      "data.threshold is now offline.threshold (--config.offline.threshold=...)")
  assert "target.local.chat" in utils.unknown_field(config, "target.chat")
  assert "did you mean 'name'" in utils.unknown_field(config, "target.nam")


def test_typed_settings_read_subsections_and_name_a_missing_field():
  """config_rules.typed converts each field and reads a dataclass field from its subsection."""
  from qpo_jax.policy.settings import Decoding, SampleSettings

  sample = repo_config("quickstart.py").sample
  settings = SampleSettings.of(sample)
  assert settings.collect == Decoding(temperature=1.0, top_k=50, top_p=0.95)
  assert isinstance(settings.target_return, float) and isinstance(settings.test.top_k, int)
  broken = sample.to_dict()
  del broken["test"]["top_k"]
  with pytest.raises(ValueError, match=r"sample\.test\.top_k is missing"):
    SampleSettings.of(broken)
