"""Table: math reasoning, zero-shot (GSM8K, SVAMP; GPT-3.5-turbo, GPT-4o, Llama-2-7B-chat).

  python experiments/table_math.py --root=runs/paper \
    --override=policy.path=/ckpt/gpt2 --override=target.path=/ckpt/Llama-2-7b-chat-hf

The six Prompt-OIRL training prompts are the source prompts; 200 test queries per task;
answers are generated (up to 512 tokens) and checked numerically.
Runs (or resumes) every setting it needs with main.py under --root, then writes
<root>/tables/math.json and .md (see experiments/paper_table.py for the flags;
--dry_run prints the commands).
Hardware: any machine for the API targets (OPENAI_API_KEY in the environment; the policy trains on
one GPU, or slowly on CPU); one >= 40 GB GPU for the Llama-2-7B-chat column.
Runtime: estimated, not measured: dominated by generation. Importing Prompt-OIRL's logs as D_0
(--override=offline.source=prompt_oirl ...) leaves 3 x 1,000 collection and ~2,000 test
generations per column: about 1-2 h per API column at 8 concurrent requests, 2-4 h for
the local 7B column on one H100.
"""

import paper_table

if __name__ == "__main__":
  paper_table.run("math")
