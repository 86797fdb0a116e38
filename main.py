"""qpo_jax entry point (as the installed `qpo-jax` command): flags, then one library call.

  python main.py --config configs/quickstart.py --workdir /tmp/qpo_quickstart   # the whole run
  python main.py --config configs/quickstart.py --workdir /tmp/q --mode=evaluate_prompts
  python main.py --config quickstart --workdir /tmp/q   # a packaged config, by name
"""

from qpo_jax import cli

if __name__ == "__main__":
  cli.run()
