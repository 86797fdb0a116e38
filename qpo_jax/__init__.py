"""qpo_jax: query-dependent prompt optimisation (QPO) by multi-loop offline RL, in JAX/Flax.

  import qpo_jax
  config = qpo_jax.load_config("quickstart")             # a packaged config, or a file path
  result = qpo_jax.train_and_evaluate(config, "/tmp/q")  # the whole run, as main.py does it
  qpo_jax.run("evaluate_prompts", config, "/tmp/q")       # any --mode
  policy = qpo_jax.load_policy(config, "/tmp/q")          # the last trained round
  policy.prompts(["I just got the job, best day ever!"])  # its prompt for each query

Everything here checks the config first, holds the workdir's lock and resumes, as the
command line (`qpo-jax` or `python main.py`) does; the modules below are the pieces.
"""

from qpo_jax.api import (Policy, load_config, load_policy, packaged_configs, run,
                         train_and_evaluate)

__all__ = ["Policy", "load_config", "load_policy", "packaged_configs", "run",
           "train_and_evaluate"]
