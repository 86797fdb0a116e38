"""Table: number of loops (QPO after loops 1..5, zero-shot, Llama-2-7B-chat).

  python experiments/table_loop_ablation.py --root=runs/paper \
    --override=policy.path=/ckpt/gpt2 --override=target.path=/ckpt/Llama-2-7b-chat-hf

Extends the zero-shot NLU runs to 5 loops (loop.num_loops=5 in the same workdirs, so loops
1-3 are reused when the zero-shot table ran first under the same --root) and tabulates QPO
after each loop next to the best source prompt chosen on train.
Runs (or resumes) every setting it needs with main.py under --root, then writes
<root>/tables/loop_ablation.json and .md (see experiments/paper_table.py for the flags;
--dry_run prints the commands).
Hardware: one GPU with >= 40 GB (A100/H100).
Runtime: estimated, not measured: about 1 h per task per extra loop on one H100 after the
zero-shot table, 12-24 h from scratch.
"""

import paper_table

if __name__ == "__main__":
  paper_table.run("loop_ablation")
