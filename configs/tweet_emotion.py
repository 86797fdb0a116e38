"""TweetEval emotion at a larger size: the quickstart's recipe on all 1,421 test tweets.

SmolLM2-135M-Instruct as target and policy, the packaged TweetEval emotion files and
our 23 source prompts, as in configs/quickstart.py; everything the quickstart's
docstring says about how each value was chosen holds here (nothing was re-tuned at this
size). What is larger: the report scores every test tweet (1,421, their natural class
mix: 39% anger, 9% optimism) with every source prompt.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/tweet_emotion.py --workdir /tmp/qpo_tweet_emotion
Runtime: about 63 minutes on 2 CPU cores (D_0 6.9, two rounds 4.8 + 5.5, the exploring
collection 6.0, the report 40.0: 34,100 grid pairs); peak memory 4.39 GiB at 20a7746,
lower since (ad6e627, 7e76256).
Expected (measured 2026-12-06 with the code of 20a7746, after the recipe was fixed and
its quickstart run; nothing was chosen on it; experiments/results/tweet_emotion_full.md),
zero-shot, all 1,421 tweets (the quickstart's 200 are among them):
  best source prompt, chosen on train           0.563  ('Answer the question.')
  reward model best-of-N, frozen / fine-tuned   0.542 / 0.614
  classifier then lookup, frozen / fine-tuned   0.529 / 0.612
  QPO loop 1                                    0.512
  QPO loop 2                                    0.549  (55% new texts, 1% label-forcing)
  per-query oracle over source prompts          0.957  (0.918 without label-forcing ones)
  QPO loop 2 minus: loop 1 +0.037 [+0.013, +0.061], best train prompt -0.014 [-0.034,
  +0.006], reward model +0.007 [-0.021, +0.035], classifier +0.020 [-0.013, +0.053],
  fine-tuned reward model -0.065 [-0.091, -0.039], fine-tuned classifier -0.063 [-0.095,
  -0.031] (paired bootstrap 95%). The one-loop recipe's run (QPO 0.647 by label routing)
  is in the same file.
"""

from qpo_jax.configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.eval.num_queries = 1421  # all of TweetEval emotion's test split (after deduplication)
  return c
