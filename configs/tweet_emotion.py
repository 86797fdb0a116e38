"""TweetEval emotion at a larger size: the quickstart's recipe on all 1,421 test tweets.

SmolLM2-135M-Instruct as target and policy, the packaged TweetEval emotion files and
our 23 source prompts, as in configs/quickstart.py; everything the quickstart's
docstring says about how each value was chosen holds here (nothing was re-tuned at this
size). What is larger: the report scores every test tweet (1,421, their natural class
mix: 39% anger, 9% optimism) with every source prompt.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/tweet_emotion.py --workdir /tmp/qpo_tweet_emotion
Runtime: about 45 minutes on the 2-core dev CPU (f32 matmul peak 340 GFLOP/s that day),
dominated by target scoring: 9,200 D_0 pairs + 34,100 test pairs. Measured 2026-11-29
with D_0 and round 1 taken from the quickstart's workdir (the same work: same 400
queries, seed and training config, which the stage fingerprints check; its evaluation
cache already held the quickstart's 4,800 test pairs): D_0 6.9 min + training 6.9 min
(the quickstart's) + evaluation 28.1 min (29,300 new scorings at 22 pairs/s, 1,421 QPO
prompts, the reward model); peak memory 5.1 GB (training).
Expected (measured 2026-11-29 with the code of 900207d, the run above), zero-shot, all 1,421 tweets:
  no instruction                                0.481
  best source prompt, chosen on train           0.563  ('Answer the question.')
  reward model best-of-N (Prompt-OIRL-style)    0.539
  QPO loop 1                                    0.647  (+0.084, 95% CI [+0.053, +0.115])
  best source prompt, chosen on test            0.563
  per-query oracle over source prompts          0.957
QPO - reward model: +0.108, 95% CI [+0.077, +0.139]. QPO writes 11 distinct prompts
(all but one verbatim source prompts; 5 tweets get the best train prompt). By gold class
(QPO / best train prompt / reward model): anger 0.676 / 0.837 / 0.701 (558 tweets), joy
0.453 / 0.346 / 0.321 (358), optimism 0.528 / 0.138 / 0.504 (123), sadness 0.827 / 0.503 /
0.518 (382): QPO gives up some anger for large gains on the other three emotions.
(With the earlier recipe, whose expert filter ranked each query's prompts by reward
rather than advantage, QPO scored 0.521 here, 4.2 points below the best train prompt.)
"""

import os

from qpo_jax.utils import config_module


def get_config():
  c = config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "quickstart.py")).get_config()
  c.data.num_queries = 400
  c.eval.num_queries = 1421  # all of TweetEval emotion's test split (after deduplication)
  return c
