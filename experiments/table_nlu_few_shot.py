"""Table: NLU tasks, few-shot (Llama-2-7B-chat target).

  python experiments/table_nlu_few_shot.py --root=runs/paper \
    --override=policy.path=/ckpt/gpt2 --override=target.path=/ckpt/Llama-2-7b-chat-hf

As the zero-shot table with 5 demo sets x 6 demos per pair during collection and 10 x 6
at test, so every (query, prompt) costs 5-10 target calls.
Runs (or resumes) every setting it needs with main.py under --root, then writes
<root>/tables/nlu_few_shot.json and .md (see experiments/paper_table.py for the flags;
--dry_run prints the commands).
Hardware: one GPU with >= 40 GB (A100/H100).
Runtime: estimated, not measured: 5-10x the zero-shot table's target calls, about 2-5 days on one
H100; import the authors' published few-shot logs instead of building D_0
(--override=offline.source=qpo_json --override=offline.path=...) to skip most of it.
"""

import paper_table

if __name__ == "__main__":
  paper_table.run("nlu_few_shot")
