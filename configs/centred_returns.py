"""Does a per-query-centred return make R* steer the policy? (issue 30, section 2)

The quickstart's round 1 with a different training set: every D_0 record of a query, not
its best one (no threshold, no top fraction), a random 4 of each query's 23 (so a round
costs about what the recipe's does), and returns centred on the query's mean
(`offline.returns="query_centred"`: 50 + normalised reward - the query's mean; a right
prompt on a tweet most prompts miss is near 100, a wrong prompt on one most get right
near 0). The recipe's rows all carry returns of 82-95 that restate which prompt a row
holds, and its greedy prompts at R* = 0 are 92-97% those at R* = 100; here the policy
sees failures with low returns, so R* = 100 has to mean "better than this query's
other prompts". The report's R* rows (`eval.returns`) measure whether it does.

Validation tweets only (`eval.split="validation"`, 200 queries; the test split is not
read). Reuses the quickstart's D_0 when its `data/loop_0` is copied into the workdir.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/centred_returns.py --workdir /tmp/qpo_centred
Runtime: about 17 minutes on 2 CPU cores with the quickstart's D_0 copied in (round 1 11,
400 steps; the report 5), 23 without it; peak memory 4.98 GiB (round 1).
Expected (200 validation tweets; measured at 164ad23, experiments/results/centred_returns.md):
QPO loop 1 0.300 at R* = 100 (best source prompt 0.410, reward model 0.480, classifier
0.485, the recipe's round 1 0.485); greedy prompts at R* = 0 / 25 / 50 / 75 equal to
those at 100 for 96 / 97 / 99 / 100% of tweets ('Possible emotions: ... Answer with one
word.' on 163 of 200). Another draw of the 4 rows (the same run before 164ad23 fixed the
draw's order) gave 0.290 and 59% equal at R* = 0: R* moved the prompts, to none better.
Every row (--config.offline.rows_per_query=0 --config.train.epochs=1; 38 min, 5.01 GiB):
0.290, one prompt for every tweet at every R*.
"""

from qpo_jax.configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.offline.update(threshold=None, top_fraction=None, rows_per_query=4,
                   returns="query_centred")
  c.train.update(epochs=2)
  c.loop.update(num_loops=1)
  c.eval.update(split="validation", finetuned_baselines=False,
                returns=(0.0, 25.0, 50.0, 75.0))
  return c
