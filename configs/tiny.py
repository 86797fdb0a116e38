"""Tiny: a randomly initialised 2-layer Llama with SmolLM2's tokenizer, for tests and CI.

Command: .venv/bin/python main.py --config configs/tiny.py --workdir /tmp/qpo_tiny
Runtime: a few seconds. Expected: the pipeline runs end to end; the answers
are random text (the weights are random).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.target = dict(name="random", preset="tiny-llama", tokenizer="smollm2", seed=0,
                  dtype="float32", param_dtype="float32")
  c.generate = dict(questions=["What is the capital of France?", "Hi"], max_new_tokens=8,
                    chat=True, batch_size=2)
  return c
