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
                  dtype="float32", param_dtype="float32",
                  backend="local", chat=True, batch_size=8)
  c.task = dict(name="topics", seed=0, max_words=100,
                data=dict(kind="builtin", size=80, seed=0, dir="", name=""))
  c.eval_prompts = dict(split="test", num_queries=8, setting="zero_shot", num_demo_sets=3,
                        num_demos=4, max_new_tokens=128, prompts=())
  c.data = dict(source="build", path="", prompts_dir="", prompt_sources=(), lp_model="",
                prompts_file="", aliases_file="", target_name="", num_queries=8,
                settings=("zero_shot",), num_demo_sets=3, num_demos=4,
                threshold=ml_collections.config_dict.placeholder(float),
                top_fraction=ml_collections.config_dict.placeholder(float),
                prompts_per_query=0, nll_term="token",
                max_bad_fraction=0.01, prompts_per_chunk=4, records_per_shard=4096,
                max_new_tokens=128, inspect="")
  c.policy = dict(name="random", preset="tiny-llama", tokenizer="smollm2", seed=1,
                  dtype="float32", param_dtype="float32", lora_rank=0, lora_alpha=16.0)
  c.train = dict(round=1, learning_rate=1e-3, schedule="step", epochs=3,
                 decay_every_epochs=1, decay_rate=0.65, warmup_steps=0,
                 batch_size=8, grad_accum=1, grad_clip=0.25, pad_multiple=16, weight_decay=1e-4,
                 query_len=16, prompt_len=18, normalize=True,
                 freeze_backbone=False, finetune_lr=1e-4, finetune_epochs=2,
                 log_every=10, checkpoint_every=200, progress=False)
  c.sample = dict(target_return=100.0, num_samples=1, batch_size=8, test=dict(temperature=0.0),
                  collect=dict(temperature=1.0, top_k=2, top_p=0.9))
  c.loop = dict(num_loops=2, collect_batches=1, collect_queries=8)
  c.eval = dict(settings=("zero_shot",), num_queries=8, num_demo_sets=3,
                num_demos=4, max_new_tokens=128)
  c.serve = dict(host="127.0.0.1", port=8000, api_key_env="QPO_SERVE_KEY")
  c.generate = dict(questions=("What is the capital of France?", "Hi"), max_new_tokens=8,
                    chat=True, batch_size=2)
  return c
