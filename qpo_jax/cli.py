"""The command line (`main.py` and the installed `qpo-jax`): flags, then one library call.

  qpo-jax --config quickstart --workdir /tmp/qpo_quickstart      # a packaged config by name
  python main.py --config configs/quickstart.py --workdir /tmp/q --mode=evaluate_prompts
  python main.py --config configs/quickstart.py --config.target.dtype=bfloat16 ...
  python main.py ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
"""

import os
import sys
import traceback
from typing import Any, Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from qpo_jax import api
from qpo_jax import distributed
from qpo_jax import modes
from qpo_jax import utils
from qpo_jax.targets import TargetError
from qpo_jax.workdir_lock import WorkdirBusy

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: a file (configs/quickstart.py[:arg]) or a packaged "
    f"config's name ({', '.join(api.packaged_configs())}).", lock_config=True)
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


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)


def exit_on_user_error(fn: Callable[[], Any], show_traceback: bool = False) -> Any:
  """Runs `fn`; an error in what the user gave (a value, a path, a busy workdir, a target
  that answers nonsense: `USER_ERRORS` and RuntimeErrors the package raises for them)
  ends the process with one line, `FATAL <message>`, not a traceback (`show_traceback`
  prints it first)."""
  try:
    return fn()
  except USER_ERRORS + (TargetError, WorkdirBusy) as e:
    if utils.write_failure(e) is not None:
      raise  # exit_on_write_failure says it
    if show_traceback:
      traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.write(f"FATAL {e}\n" + ("" if show_traceback else
                                       "(--traceback shows where it was raised)\n"))
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         timeout_s=_JOIN_TIMEOUT.value)
  utils.quiet_library_info()
  utils.exit_on_signal(lambda: utils.exit_on_write_failure(lambda: exit_on_user_error(
      lambda: modes.run(_MODE.value, _CONFIG.value, _WORKDIR.value), _TRACEBACK.value)),
      f"--mode={_MODE.value}")


def run() -> None:
  """The `qpo-jax` console script and main.py: packaged config names resolved, then absl."""
  sys.argv = api.resolve_config_args(sys.argv)
  app.run(main, flags_parser=utils.parse_flags)


if __name__ == "__main__":
  run()
