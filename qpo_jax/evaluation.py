"""Evaluating (query, prompt) pairs on a target, through the cache, for any task and setting.

A pair is rendered once per demonstration set (zero-shot: one empty set); each
rendered text is one target call. Calls already in the cache are not made
again; new ones go to the target ordered by instruction and demonstration
set, then by length, so a local target's batches share their common prefix
and pad little (scoring.py); results are written to the cache chunk by chunk,
so a killed run loses at most one chunk. Each pair gives an `Outcome`
(rewards.py): the choice made and its NLLs, the math answer and its response,
or the few-shot correctness under each demonstration set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging
import numpy as np

from qpo_jax.eval_cache import EvalCache, cache_key
from qpo_jax.rewards import Outcome
from qpo_jax.tasks.base import CHOICE, Example, Task, demos_id, extract_answer, numbers_equal
from qpo_jax.utils import progress_bar
from qpo_jax.targets import Target

ZERO_SHOT, FEW_SHOT = "zero_shot", "few_shot"
SETTINGS = (ZERO_SHOT, FEW_SHOT)


@dataclasses.dataclass(frozen=True)
class _Call:
  key: str
  text: str
  options: tuple[str, ...]
  group: tuple[str, str] = ("", "")  # (instruction, demo set): calls that share a prefix


def _calls(task: Task, target: Target, pairs, setting: str, demo_sets) -> list[list[_Call]]:
  if setting not in SETTINGS:
    raise ValueError(f"setting {setting!r} is not one of {SETTINGS}")
  if setting == FEW_SHOT and not demo_sets:
    raise ValueError("the few-shot setting needs demonstration sets")
  sets = demo_sets if setting == FEW_SHOT else [()]
  out = []
  for ex, prompt in pairs:
    row = []
    for demos in sets:
      text = task.render(ex, prompt, demos)
      options = task.options(ex) if task.kind == CHOICE else ()
      did = demos_id(demos)
      key = cache_key(target.identity, task.name, setting, ex.query, prompt, did, text, options)
      row.append(_Call(key, text, tuple(options), (prompt, did)))
    out.append(row)
  return out


def _run_missing(task: Task, target: Target, calls: Sequence[_Call], cache: EvalCache, chunk: int,
                 max_new_tokens: int) -> None:
  bar = progress_bar(total=len(calls), desc="target calls", unit="call", leave=False)
  for start in range(0, len(calls), chunk):
    part = calls[start:start + chunk]
    if task.kind == CHOICE:
      nll, prompt_tokens = target.score_options([c.text for c in part],
                                                [list(c.options) for c in part])
      results = {c.key: {"nll": [float(x) for x in row]} for c, row in zip(part, nll)}
      generated = 0
    else:
      gens = target.generate([c.text for c in part], max_new_tokens)
      results = {c.key: {"response": g.text, "nll": float(g.nll)} for c, g in zip(part, gens)}
      prompt_tokens = sum(g.prompt_tokens for g in gens)
      generated = sum(g.generated_tokens for g in gens)
    cache.put_many(results, target.identity, len(part), int(prompt_tokens), int(generated))
    bar.update(len(part))
    logging.debug("evaluated %d/%d new target calls", start + len(part), len(calls))
  bar.close()


def _outcome(task: Task, ex: Example, raw: dict[str, Any]) -> Outcome:
  if task.kind == CHOICE:
    nll = np.asarray(raw["nll"], np.float64)
    pred = int(np.argmin(nll))
    return Outcome(correct=float(pred == ex.label), pred=pred,
                   option_nll=tuple(float(x) for x in raw["nll"]), gold_nll=float(nll[ex.label]))
  answer = extract_answer(raw["response"])
  return Outcome(correct=float(numbers_equal(answer, ex.answer)), answer=answer,
                 response=raw["response"], response_nll=float(raw["nll"]))


def evaluate_pairs(task: Task, target: Target, pairs: Sequence[tuple[Example, str]], *,
                   setting: str = ZERO_SHOT, demo_sets: Sequence[Sequence[Example]] = (),
                   cache: EvalCache | None = None, chunk: int = 256,
                   max_new_tokens: int = 256) -> list[Outcome]:
  """The `Outcome` of each (example, prompt) pair, in order."""
  cache = cache if cache is not None else EvalCache(None)
  calls = _calls(task, target, pairs, setting, demo_sets)
  flat = {c.key: c for row in calls for c in row}
  have = cache.get_many(list(flat))
  missing = [c for k, c in flat.items() if k not in have]
  if missing:
    logging.info("%d of %d target calls are new (%d cached)", len(missing), len(flat), len(have))
    missing.sort(key=lambda c: (c.group, len(c.text)))
    _run_missing(task, target, missing, cache, chunk, max_new_tokens)
    have.update(cache.get_many([c.key for c in missing]))
  outcomes = []
  for (ex, _), row in zip(pairs, calls):
    per_set = [_outcome(task, ex, have[c.key]) for c in row]
    if setting == ZERO_SHOT:
      outcomes.append(per_set[0])
    else:
      outcomes.append(Outcome(per_set=tuple(int(o.correct) for o in per_set)))
  return outcomes


def raw_results(task: Task, target: Target, pairs: Sequence[tuple[Example, str]], *,
                cache: EvalCache | None = None, chunk: int = 256,
                max_new_tokens: int = 256) -> list[dict[str, Any]]:
  """The target's zero-shot result per pair (option NLLs, or response), through the cache.

  For queries without a gold answer (a user's own); `evaluate_pairs` scores them.
  """
  cache = cache if cache is not None else EvalCache(None)
  calls = [row[0] for row in _calls(task, target, pairs, ZERO_SHOT, ())]
  have = cache.get_many(list({c.key for c in calls}))
  missing = list({c.key: c for c in calls if c.key not in have}.values())
  if missing:
    missing.sort(key=lambda c: (c.group, len(c.text)))
    _run_missing(task, target, missing, cache, chunk, max_new_tokens)
    have.update(cache.get_many([c.key for c in missing]))
  return [have[c.key] for c in calls]


def accuracy(outcomes: Sequence[Outcome]) -> float:
  """Mean correctness (zero-shot) or mean per-query few-shot accuracy."""
  if not outcomes:
    return float("nan")
  return float(np.mean([o.accuracy for o in outcomes]))
