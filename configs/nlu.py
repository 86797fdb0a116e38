"""The quickstart's recipe, unchanged, on another NLU task with its public prompt
collection (InstructEval's, the paper's sources): ag_news or boolq.

Command (after `bash scripts/setup.sh`, with $QPO_DATA laid out as docs/tasks_and_data.md
says):
  .venv/bin/python main.py --config configs/nlu.py:task=ag_news --workdir /tmp/qpo_ag_news
Every method setting is configs/quickstart.py's (how each was chosen is said there);
only sizes that the texts force differ: the policy's query length (a BoolQ or Cosmos QA
query is a passage and a question), the prompt length (InstructEval's prompts run to 49
tokens), and D_0's queries for the long-text task (a BoolQ pair costs about three times a
tweet's). The files: AG News is read from its test split only (test.csv), whose first
half is the train split (the spec's rules then cut train / collect / validation / test);
BoolQ from its dev split, whose first half is the train split. (Cosmos QA's rules leave 13
validation rows of its valid split: too few to choose anything on, so it is not here.)
Runtime and Expected (validation queries, `--config.eval.split=validation`; the test
splits were never read): the `reward` rows of experiments/results/filter_ablation.md's
two-loop table: QPO loop 2 0.690 on AG News (best source prompt 0.470), 0.585 on BoolQ
(0.578); about 100 and 65 minutes on 2 CPU cores. The recipe before a7ce397 (advantage
ranking): experiments/results/recipe_tasks.md.
"""

import ml_collections

from qpo_jax.configs import quickstart
from qpo_jax.utils import data_dir

TASKS = {  # task -> (its files under $QPO_DATA/<task>, policy query tokens, D_0 queries)
    "ag_news": ({"train": "test.csv[:50%]", "test": "test.csv[50%:]"}, 64, 400),
    "boolq": ({"train": "dev.jsonl[:50%]", "validation": "dev.jsonl[50%:]"}, 160, 200),
}


def settings() -> list[str]:
  return [f"task={t}" for t in TASKS]


def get_config(arg: str = "task=ag_news") -> ml_collections.ConfigDict:
  named = dict(p.split("=", 1) for p in arg.split(",") if "=" in p)
  task = named.get("task", "")
  if task not in TASKS or set(named) - {"task"}:
    raise ValueError(f"configs/nlu.py:{arg}: takes task=<one of {sorted(TASKS)}>")
  files, query_len, num_queries = TASKS[task]
  c = quickstart.get_config()
  c.task.name = task
  c.task.data.update(kind="files", dir=data_dir(task), files=files)
  c.offline.update(prompts_dir=data_dir("prompts", "instructeval", "instructions"),
                   lp_model="llama7b", num_queries=num_queries)
  c.train.update(query_len=query_len, prompt_len=64)
  return c
