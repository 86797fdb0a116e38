"""qpo_jax entry point: flags, then one library call.

  python main.py --config configs/quickstart.py --workdir /tmp/qpo_quickstart   # the whole run
  python main.py --config configs/quickstart.py --workdir /tmp/q --mode=evaluate_prompts
  python main.py --config configs/quickstart.py --config.target.dtype=bfloat16 ...
  python main.py ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from qpo_jax import distributed
from qpo_jax import modes
from qpo_jax import utils

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and resume state.")
_MODE = flags.DEFINE_enum("mode", "loop", sorted(modes.MODES),
                          "What to run; the default is the whole QPO run (D_0, loops, table).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Several processes: 'host:port' of process 0 (with "
    "--num_processes and --process_id). Not needed on a TPU pod slice, Slurm or Open MPI.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
_JOIN_TIMEOUT = flags.DEFINE_integer("join_timeout_s", 300, "Several processes: how long to "
                                     "wait for the coordinator before failing.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Print the stack of an error in what was "
                               "given (a value, a path, a busy workdir) before its one line.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         timeout_s=_JOIN_TIMEOUT.value)
  utils.quiet_library_info()
  utils.exit_on_signal(lambda: utils.exit_on_write_failure(lambda: utils.exit_on_user_error(
      lambda: modes.run(_MODE.value, _CONFIG.value, _WORKDIR.value), _TRACEBACK.value)),
      f"--mode={_MODE.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=utils.parse_flags)
