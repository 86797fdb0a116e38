"""Table: target scale, zero-shot (Llama-2-chat 7B, 13B, 70B).

  python experiments/table_target_scale.py --root=runs/paper \
    --override=policy.path=/ckpt/gpt2 --override=target.path=/ckpt/Llama-2-<size>-chat-hf
  (run one size at a time with --tasks and the size's checkpoint, all under one --root)

The zero-shot NLU pipeline at three target sizes; each size has its own D_0, policy and loops.
Runs (or resumes) every setting it needs with main.py under --root, then writes
<root>/tables/target_scale.json and .md (see experiments/paper_table.py for the flags;
--dry_run prints the commands).
Hardware: 7B and 13B: one 80 GB GPU; 70B: 8 x 80 GB GPUs or a TPU v4/v5 slice with
--override=mesh.tensor=8 (bfloat16 weights are sharded by the partition rules).
Runtime: estimated, not measured: the 7B column as the zero-shot table (12-24 h); 13B about 2x
and 70B about 10x its target time on 8 GPUs. Use --tasks to run a subset.
"""

import paper_table

if __name__ == "__main__":
  paper_table.run("target_scale")
