"""qpo_jax: query-dependent prompt optimisation (QPO) by multi-loop offline RL, in JAX/Flax.

  import qpo_jax
  config = qpo_jax.load_config("quickstart")             # a packaged config, or a file path
  result = qpo_jax.train_and_evaluate(config, "/tmp/q")  # the whole run, as main.py does it
  qpo_jax.run("evaluate_prompts", config, "/tmp/q")       # any --mode
  policy = qpo_jax.load_policy(config, "/tmp/q")          # the last trained round
  policy.prompts(["I just got the job, best day ever!"])  # its prompt for each query
  target = qpo_jax.load_target(config, "/tmp/q")          # the run's target and cache
  target.accuracy(qpo_jax.queries(config, 16), "Emotion?")  # a prompt on 16 test queries

Everything here checks the config first, holds the workdir's lock and resumes, as the
command line (`qpo-jax` or `python main.py`) does; the modules below are the pieces.
"""

from qpo_jax.api import (Policy, Target, finished_rounds, load_config, load_policy,
                         load_target, packaged_configs, queries, read_dataset, run,
                         serving_policy, train_and_evaluate, training_metrics)
from qpo_jax.tasks import Example

__all__ = ["Example", "Policy", "Target", "finished_rounds", "load_config", "load_policy",
           "load_target", "packaged_configs", "queries", "read_dataset", "run",
           "serving_policy", "train_and_evaluate", "training_metrics"]
