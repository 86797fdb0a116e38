"""The quickstart with exploring collection and two loops, scored on validation tweets.

The quickstart's recipe (configs/quickstart.py, every value chosen there) plus
`loop.explore` (qpo_jax/explore.py): loop 1's collection samples 4 prompts per collect
tweet from round 1's policy and asks the policy's pretrained LM for 6 rewrites of each of
D_0's 8 most accurate prompts; new, fluent candidates are ranked by a reward-model critic,
the best 32 are scored on their own tweets and on 64 shared D_0 tweets, and round 2
fine-tunes on D_1. The report adds the critic's best-of-4 pick over the last policy's
samples. It scores the validation split (tweets never in D_0, never collected, never
tested on): this is the experiment that measures whether exploring makes the policy
write; the test split has not been read with it.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/explore.py --workdir /tmp/qpo_explore
Runtime: 28 minutes on the 2-core dev CPU, measured 2026-12-05 with the code of 6c8ffa3
(D_0 8.2 min, round 1 5.7 min, loop 1's collection 3.3 min: 400 policy samples, 33
rewrites, 35 new texts, none junk, 32 kept, 2,052 target scorings; round 2 3.4 min; the
evaluation 7.5 min), peak memory 4.1 GB.
Expected (that run), 200 class-balanced validation tweets, zero-shot:
  best source prompt, chosen on train           0.410
  reward model best-of-N (frozen / fine-tuned)  0.480 / 0.530
  classifier then lookup (frozen / fine-tuned)  0.485 / 0.555
  QPO loop 1                                    0.515
  QPO loop 2                                    0.525  (new texts 5%, 91% label-forcing)
  QPO loop 2, best of 4 by the critic           0.560  (new texts 21%, 90% label-forcing)
  per-query oracle over source prompts          0.920  (0.830 without label-forcing ones)
QPO loop 2 - fine-tuned classifier lookup: -0.030, 95% CI [-0.105, +0.045]. The new
prompts it writes force a label (e.g. 'Select the emotion of the tweet that is both Joy
and Sadness, but not Anger.' -> Joy on 97% of tweets, the pool's first label-forcing
prompt for joy): exploring adds label injection, not better instructions. Without the
rewrites (policy samples only, top-k 50, top-p 0.95) loop 1's 400 samples held 4 new
texts, all source prompts with a leading punctuation mark, and loop 2 scored 0.470.
"""

import os

from qpo_jax.utils import config_module


def get_config():
  here = os.path.dirname(os.path.abspath(__file__))
  c = config_module(os.path.join(here, "quickstart.py")).get_config()
  c.loop.update(num_loops=2, collect_batches=1, explore=True, new_prompts=32,
                prompt_queries=64, rewrite_sources=8, rewrites=6)
  c.sample.update(num_samples=4)
  c.sample.collect.update(top_k=50, top_p=0.95)
  c.eval.update(split="validation", best_of_n=4)
  return c
