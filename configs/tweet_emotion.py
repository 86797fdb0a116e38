"""TweetEval emotion at a larger size: the quickstart's recipe on all 1,421 test tweets.

SmolLM2-135M-Instruct as target and policy, the packaged TweetEval emotion files and
our 23 source prompts, as in configs/quickstart.py; everything the quickstart's
docstring says about how each value was chosen holds here. What is larger: D_0 has
400 train queries (x 23 prompts), each loop collects 2 x 150 collect-split queries,
and the report scores every test tweet (1,421) with every source prompt.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/tweet_emotion.py --workdir /tmp/qpo_tweet_emotion
Runtime: dominated by target scoring, 9,200 D_0 pairs + 1,200 collected pairs + about
36,000 test pairs. At the 11 pairs/s measured on the 2-core dev CPU (matmul peak 190
GFLOP/s f32) that is about 70 minutes of scoring plus about 25 of policy training;
on a CPU with the 500 GFLOP/s this project's earlier machine measured, about 35 minutes.
Peak memory ~6 GB. Reruns resume.
Expected: not measured yet (see the README's TweetEval section); the quickstart's
measured table is the reference for what this run should show.
"""

import os

from qpo_jax.utils import config_module


def get_config():
  c = config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "quickstart.py")).get_config()
  c.data.num_queries = 400
  c.loop.collect_queries = 150
  c.eval.num_queries = 1421  # all of TweetEval emotion's test split (after deduplication)
  return c
