"""Table: NLU tasks, zero-shot (Llama-2-7B-chat target).

  python experiments/table_nlu_zero_shot.py --root=runs/paper \
    --override=policy.path=/ckpt/gpt2 --override=target.path=/ckpt/Llama-2-7b-chat-hf

QPO's greedy per-query prompts after 3 loops against no instruction, manual, each source
method, the best source prompt chosen on train and the reward-model best-of-N, on the six
NLU tasks (100 class-balanced test queries each).
Runs (or resumes) every setting it needs with main.py under --root, then writes
<root>/tables/nlu_zero_shot.json and .md (see experiments/paper_table.py for the flags;
--dry_run prints the commands).
Hardware: one GPU with >= 40 GB (A100/H100; the 7B target in bfloat16 plus the GPT-2 policy).
Runtime: estimated, not measured (no GPU was lent to this project's machine): the D_0 build is
|train queries| x |source prompts| scoring calls per task, about 1-3 h per task on one H100
at the scoring throughput of experiments/bench_scoring.py scaled to 7B; policy training
and 3 loops add about 1 h per task. About 12-24 h for the table; each run resumes.
"""

import paper_table

if __name__ == "__main__":
  paper_table.run("nlu_zero_shot")
