"""qpo_jax entry point: flags, then one library call.

  python main.py --config configs/quickstart.py --workdir /tmp/qpo_quickstart   # the whole run
  python main.py --config configs/quickstart.py --workdir /tmp/q --mode=evaluate_prompts
  python main.py --config configs/quickstart.py --config.target.dtype=bfloat16 ...
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from qpo_jax import modes
from qpo_jax import utils

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and resume state.")
_MODE = flags.DEFINE_enum("mode", "loop", sorted(modes.MODES),
                          "What to run; the default is the whole QPO run (D_0, loops, table).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  utils.exit_on_write_failure(lambda: modes.run(_MODE.value, _CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=utils.parse_flags)
