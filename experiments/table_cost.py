"""Table: cost (target LLM usage per stage; calls per test query).

  python experiments/table_cost.py --root=runs/paper \
    --only_table

From the NLU zero/few-shot and GSM8K/SVAMP (GPT-3.5-turbo) runs: target calls to build
D_0 (zero when the published logs are imported), calls and tokens of QPO's collection
loops (its only online interaction), and per test query QPO's one prompt against trying
every source prompt on the target.
Runs (or resumes) every setting it needs with main.py under --root, then writes
<root>/tables/cost.json and .md (see experiments/paper_table.py for the flags;
--dry_run prints the commands).
Hardware: none of its own: it reads the runs of the other tables (run them first, or let it run
the missing ones on their hardware).
Runtime: seconds when the runs exist (--only_table); otherwise the sum of the NLU and math tables.
"""

import paper_table

if __name__ == "__main__":
  paper_table.run("cost")
