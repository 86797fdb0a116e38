"""Policy rounds of a run: train round t on D_{t-1}; round t's policy as a prompt sampler.

Round 1 starts from the pretrained LM (`config.policy`) with `config.train`;
round t > 1 fine-tunes round t-1's final policy with `train.finetune_lr` and
`train.finetune_epochs` (spec: lr 1e-4, 20 epochs). The round trains on the
dataset's expert records (`offline.threshold` on the raw reward and/or each
query's best `offline.top_fraction`, ranked by `offline.rank_by`; then a random
`offline.rows_per_query` of each query's); rewards are normalised by the dataset's
stored min/max (D_0's) when `train.normalize` is on, and centred on each query's mean
with `offline.returns="query_centred"`. Every stage checks and records the config fields it depends on
(`Run.claim`, fingerprint.py), so a workdir is never reused with settings it
was not made with.
"""

from __future__ import annotations

import os
import time

from absl import logging
import numpy as np

from qpo_jax import distributed, sharding
from qpo_jax.context import Run
from qpo_jax.policy import trainer, training_rows
from qpo_jax.policy.sampling import PromptSampler
from qpo_jax.policy.settings import SampleSettings, TrainSettings
from qpo_jax.stages import Stage
from qpo_jax.store import dataset
from qpo_jax.workdir import Workdir


def train_policy_round(run: Run, t: int, stop_after: int | None = None) -> None:
  """Trains (or resumes) round t unless it has finished; the run holds the trained
  parameters for the next stage (`run.round_params(t)`).

  Round 1 starts from the pretrained policy, round t > 1 from round t-1's parameters
  (the run's, if it holds them). `stop_after` ends this call after that many steps
  (tests; a rerun resumes).
  """
  started = time.time()
  if t < 1:
    raise ValueError(f"policy rounds start at 1, got {t}")
  config, wd = run.config, run.wd
  data = wd.data(t - 1)
  dataset.read_manifest(data)  # fails first if D_{t-1} is not there
  run.claim(Stage("round", t))
  if t in wd.finished_rounds():
    return  # read when a stage asks for it
  tc = TrainSettings.of(config.train).for_round(t)
  if t == 1:
    cfg, params, tok = run.pretrained_policy()
  else:  # the init is never read: never two copies of the policy (+0.5 GB)
    cfg, tok, _ = run.policy_spec()
    params = run.take_round(t - 1)
  rows, _ = training_rows.from_dataset(
      data, tok, query_len=tc.query_len, prompt_len=tc.prompt_len,
      normalize=tc.normalize, threshold=config.offline.threshold,
      top_fraction=config.offline.top_fraction, rank_by=config.offline.rank_by,
      returns=config.offline.returns, rows_per_query=config.offline.rows_per_query,
      seed=config.seed + t)
  if not len(rows):
    raise ValueError(f"no record of {data} passes the expert filter "
                     f"(offline.threshold={config.offline.threshold}, offline.top_fraction="
                     f"{config.offline.top_fraction}); lower offline.threshold")
  report_cut_queries(rows, t)
  params = sharding.shard_params(params, run.mesh)
  params = trainer.train_round(wd.round(t), cfg, params, rows, tc, mesh=run.mesh,
                               seed=config.seed + t, stop_after=stop_after, started=started)
  if t in wd.finished_rounds():  # not when `stop_after` ended it early
    run.hold_round(t, params)


def report_cut_queries(rows: training_rows.TrainingRows, t: int, tolerated: float = 0.05
                        ) -> None:
  """Warns when `train.query_len` cuts more than `tolerated` of the round's queries: the
  policy sees only their first tokens (a passage task's question may be what is lost).
  Every process holds the same counts; the writer says it once."""
  cut = rows.cut_queries()
  if cut > tolerated and distributed.is_writer():
    fits = int(np.ceil(np.percentile(rows.query_tokens, 99)))
    logging.warning("round %d: train.query_len=%d cuts %.1f%% of its %d training rows' queries "
                    "(the policy sees their first %d tokens); %d tokens hold 99%% of them",
                    t, rows.query_len, 100 * cut, len(rows), rows.query_len, fits)


def last_finished(workdir: str) -> int:
  """The last round whose training finished; an error naming the directory if none has."""
  finished = Workdir(workdir).finished_rounds()
  if not finished:
    raise FileNotFoundError(f"no trained policy in {os.path.join(workdir, 'policy')}; run "
                            "the loop or --mode=train_policy first")
  return finished[-1]


def prompt_sampler(run: Run, t: int) -> PromptSampler:
  """Round t's policy (0: the last finished), checked against the config's fingerprint;
  its parameters are the run's (held, or read from disk)."""
  wd = run.wd
  finished = wd.finished_rounds()
  t = t or last_finished(run.workdir)
  if t not in finished:
    raise FileNotFoundError(f"policy round {t} has not finished training in {wd.round(t)}; "
                            f"finished rounds: {finished or 'none'}")
  run.claim(Stage("round", t), record=False)
  cfg, tok, _ = run.policy_spec()
  return PromptSampler(cfg, run.round_params(t), tok, SampleSettings.of(run.config.sample),
                       run.config.train.query_len, run.config.train.prompt_len, t)
