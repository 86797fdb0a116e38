"""What every experiments/table_*.py script does: run the table's paper settings, then write it.

  --root      where the runs live (one workdir per setting; rerunning resumes them)
  --tasks     a subset of the table's tasks
  --override  extra config overrides for every run, e.g. policy.path=/ckpt/gpt2
  --dry_run   print the main.py commands and stop
  --only_table  skip the runs and write the table from what has finished

The runs are plain `main.py --config configs/paper.py:<setting>` processes, so
each one can also be started by hand (or on another machine that shares --root);
this script only assembles their results.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

import paper_tables as tables  # experiments/paper_tables.py

_ROOT = flags.DEFINE_string("root", "runs/paper", "directory of the runs, one per setting")
_TASKS = flags.DEFINE_list("tasks", [], "tasks to include (default: the table's own)")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "config override key=value for every run")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the commands only")
_ONLY_TABLE = flags.DEFINE_bool("only_table", False, "write the table from finished runs only")
_OUT = flags.DEFINE_string("out", "", "JSON output (default: <root>/tables/<table>.json, and .md)")


def run(name: str) -> None:
  """The absl entry point of the table script for `name` (a key of paper_tables.TABLES)."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    table = tables.TABLES[name]
    tasks = _TASKS.value or list(table.tasks)
    unknown = sorted(set(tasks) - set(table.tasks))
    if unknown:
      raise app.UsageError(f"--tasks: {unknown} are not in this table's tasks {list(table.tasks)}")
    settings = table.settings(tasks)
    tables.check_settings(settings)
    overrides = {**table.overrides, **tables.parse_overrides(_OVERRIDE.value)}
    if _DRY_RUN.value:
      for s in settings:
        print(" ".join(tables.command(s, _ROOT.value, overrides)))
      return
    if not _ONLY_TABLE.value:
      tables.run_settings(settings, _ROOT.value, overrides)
    out = _OUT.value or os.path.join(_ROOT.value, "tables", f"{name}.json")
    markdown, missing = tables.assemble(name, _ROOT.value, tasks, out)
    print(markdown)
    print(f"wrote {out} and {os.path.splitext(out)[0]}.md")
    if missing and not _ONLY_TABLE.value:
      raise SystemExit(f"{len(missing)} setting(s) did not finish; rerun to resume them")

  app.run(main)
