"""Tiny: a randomly initialised 2-layer Llama with SmolLM2's tokenizer, for tests and CI.

Command: .venv/bin/python main.py --config configs/tiny.py --workdir /tmp/qpo_tiny
Runtime: a few seconds. Expected: the pipeline runs end to end; the answers
are random text (the weights are random).
"""

from qpo_jax.configs import base


def get_config():
  c = base.get_config()
  c.target.update(name="random", preset="tiny-llama", tokenizer="smollm2")
  c.target.local.update(batch_size=8, length_multiple=32)
  c.task.update(name="topics")
  c.task.data.update(kind="builtin", size=80)
  c.eval_prompts.update(num_queries=8, num_demo_sets=3, num_demos=4, max_new_tokens=128)
  c.offline.update(num_queries=8, num_demo_sets=3, num_demos=4)
  c.policy.update(name="random", preset="tiny-llama", tokenizer="smollm2")
  c.train.update(epochs=3, decay_every_epochs=1, batch_size=8, query_len=16, prompt_len=18,
                 finetune_epochs=2, log_every=10, checkpoint_every=200)
  c.progress = False
  c.sample.update(batch_size=8)
  c.loop.update(num_loops=2, collect_batches=1, collect_queries=8)
  c.eval.update(num_queries=8, num_demo_sets=3, num_demos=4, max_new_tokens=128)
  c.generate.update(questions=("What is the capital of France?", "Hi"), max_new_tokens=8,
                    batch_size=2)
  return c
