"""What `main.py --mode` runs; each mode is a plain function(config, workdir) notebooks call too."""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from absl import logging
import ml_collections

from qpo_jax import decoding
from qpo_jax.models.registry import load_model
from qpo_jax.utils import atomic_write_text


def generate_answers(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Answers `config.generate.questions` with the target LLM; prints and saves them."""
  start = time.time()
  lm = load_model(config.target)
  if lm.tokenizer is None:
    raise ValueError(f"target {config.target.name!r} has no tokenizer; set target.tokenizer_path")
  logging.info("loaded %s (%.1fM parameters) in %.1fs", config.target.name,
               lm.cfg.num_params() / 1e6, time.time() - start)
  gen = config.generate
  answers = decoding.generate_text(lm, list(gen.questions), max_new_tokens=gen.max_new_tokens,
                                   seed=config.seed, chat=gen.chat, batch_size=gen.batch_size)
  records = [{"question": q, "answer": a} for q, a in zip(gen.questions, answers)]
  for r in records:
    print(f"Q: {r['question']}\nA: {r['answer']}\n", flush=True)
  os.makedirs(workdir, exist_ok=True)
  atomic_write_text(os.path.join(workdir, "answers.json"), json.dumps(records, indent=2))
  logging.info("wrote %s/answers.json (%.1fs in all)", workdir, time.time() - start)
  return records


MODES: dict[str, Callable[[ml_collections.ConfigDict, str], object]] = {
    "generate": generate_answers,
}


def run(mode: str, config: ml_collections.ConfigDict, workdir: str):
  if mode not in MODES:
    raise ValueError(f"--mode={mode!r} is not one of {sorted(MODES)}")
  return MODES[mode](config, workdir)
