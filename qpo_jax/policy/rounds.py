"""Policy rounds in a workdir: train round t on D_{t-1}, sample prompts with round t's policy.

Round 1 starts from the pretrained LM (`config.policy`) with `config.train`;
round t > 1 fine-tunes round t-1's final policy with `train.finetune_lr` and
`train.finetune_epochs` (spec: lr 1e-4, 20 epochs). The round trains on the
dataset's expert records (`data.threshold` on the raw reward and/or each
query's best `data.top_fraction`, ranked by `data.rank_by`); rewards are
normalised by the dataset's stored min/max (D_0's) when `train.normalize` is
on. Every stage checks and records the config fields it depends on
(`claim_stage`, fingerprint.py), so a workdir is never reused with settings it
was not made with.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import jax
import ml_collections

from qpo_jax import distributed, fingerprint, sharding, stages
from qpo_jax.policy import sampling, trainer, training_rows
from qpo_jax.policy.model import pretrained_policy
from qpo_jax.policy.settings import SampleSettings, TrainSettings
from qpo_jax.store import dataset
from qpo_jax.stages import Stage
from qpo_jax.workdir import Workdir


def claim_stage(config: ml_collections.ConfigDict, workdir: str, stage: Stage,
                record: bool = True) -> None:
  """Checks a stage's recorded config fields against `config` (fingerprint.py) and, for a
  stage about to start (`record`), records them if none are."""
  wd = Workdir(workdir)
  (fingerprint.claim if record else fingerprint.check)(
      stage.record(wd), fingerprint.stage_fields(config, stage), stage.title, stage.artifacts(wd))


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Every stage already in the workdir against `config`, before any work starts."""
  wd = Workdir(workdir)
  for t in wd.datasets():
    dataset.check_complete(wd.data(t))
  for stage in stages.of_run(wd.last_recorded_loop()):
    claim_stage(config, workdir, stage, record=False)


def policy_init(config: ml_collections.ConfigDict):
  """(cfg, initial policy params, tokenizer) from the pretrained LM the config names."""
  cfg, params, tok = pretrained_policy(config.policy, jax.random.key(config.seed))
  if tok is None:
    raise ValueError(f"policy {config.policy.name!r} has no tokenizer; set policy.tokenizer_path")
  return cfg, params, tok


def train_policy_round(config: ml_collections.ConfigDict, workdir: str, t: int,
                       stop_after: int | None = None) -> Any:
  """Trains (or resumes, or loads) round t; returns its final parameters.

  `stop_after` ends this call after that many steps (tests; a rerun resumes).
  """
  started = time.time()
  if t < 1:
    raise ValueError(f"policy rounds start at 1, got {t}")
  data = Workdir(workdir).data(t - 1)
  dataset.read_manifest(data)  # fails first if D_{t-1} is not there
  claim_stage(config, workdir, Stage("round", t))
  cfg, params, tok = policy_init(config)
  tc = TrainSettings.of(config.train).for_round(t)
  rows, _ = training_rows.from_dataset(
      data, tok, query_len=tc.query_len, prompt_len=tc.prompt_len,
      normalize=tc.normalize, threshold=config.data.threshold,
      top_fraction=config.data.top_fraction, rank_by=config.data.rank_by)
  if not len(rows):
    raise ValueError(f"no record of {data} passes the expert filter "
                     f"(data.threshold={config.data.threshold}, data.top_fraction="
                     f"{config.data.top_fraction}); lower data.threshold")
  if t > 1:  # the init's arrays are dropped first: never two copies of the policy (+0.5 GB)
    like = trainer.abstract(params)
    del params
    params = trainer.load_final_params(Workdir(workdir).round(t - 1), like)
  mesh = sharding.make_mesh(config.mesh)
  params = sharding.shard_params(params, mesh)
  return trainer.train_round(Workdir(workdir).round(t), cfg, params, rows, tc, mesh=mesh,
                             seed=config.seed + t, stop_after=stop_after, started=started)


@dataclasses.dataclass(frozen=True)
class PromptSampler:
  """A trained round's policy, loaded once, and the config's sampling settings."""

  cfg: Any
  params: Any
  tokenizer: Any
  sample: SampleSettings
  query_len: int
  prompt_len: int
  round: int

  def __call__(self, queries: Sequence[str], *, collect: bool, seed: int,
               num_samples: int | None = None, first_index: int = 0,
               target_return: float | None = None) -> list[list[str]]:
    """Greedy prompts (test) or the collection sampler's `num_samples` per query, at R* =
    `target_return` (default: the config's `sample.target_return`).

    Over several processes each samples its share of the queries on its own
    devices and the prompts are gathered (a query's prompts depend only on its
    index, so they are those of one process).
    """
    sc = self.sample
    knobs = dataclasses.asdict(sc.collect if collect else sc.test)
    n = (num_samples or sc.num_samples) if collect else 1
    mine = distributed.share(len(queries))
    local = sampling.decode_prompts(
        self.cfg, self.params, self.tokenizer, list(queries)[mine.start:mine.stop],
        target_return=sc.target_return if target_return is None else target_return,
        query_len=self.query_len, prompt_len=self.prompt_len,
        seed=seed, num_samples=n, batch_size=sc.batch_size, first_index=first_index + mine.start,
        **knobs)
    return distributed.allgather(local)


def last_finished(workdir: str) -> int:
  """The last round whose training finished; an error naming the directory if none has."""
  finished = Workdir(workdir).finished_rounds()
  if not finished:
    raise FileNotFoundError(f"no trained policy in {os.path.join(workdir, 'policy')}; run "
                            "the loop or --mode=train_policy first")
  return finished[-1]


def prompt_sampler(config: ml_collections.ConfigDict, workdir: str, t: int) -> PromptSampler:
  """Round t's policy (0: the last finished), checked against the config's fingerprint."""
  wd = Workdir(workdir)
  finished = wd.finished_rounds()
  t = t or last_finished(workdir)
  if t not in finished:
    raise FileNotFoundError(f"policy round {t} has not finished training in {wd.round(t)}; "
                            f"finished rounds: {finished or 'none'}")
  claim_stage(config, workdir, Stage("round", t), record=False)
  cfg, params, tok = policy_init(config)
  like = trainer.abstract(params)  # the init's arrays go before the trained ones come
  del params
  params = trainer.load_final_params(wd.round(t), like)
  return PromptSampler(cfg, params, tok, SampleSettings.of(config.sample),
                       config.train.query_len, config.train.prompt_len, t)


def policy_prompts(config: ml_collections.ConfigDict, workdir: str, t: int, queries: Sequence[str],
                   *, collect: bool, seed: int) -> list[list[str]]:
  """Prompts of round t's policy: greedy for test, the collection sampler for collection."""
  return prompt_sampler(config, workdir, t)(queries, collect=collect, seed=seed)
