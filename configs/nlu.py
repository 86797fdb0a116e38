"""The quickstart's recipe, unchanged, on another NLU task of ../shared/data with its public
prompt collection (InstructEval's, the paper's sources): ag_news or boolq.

Command (after `bash scripts/setup.sh`; ../shared/data beside the repository):
  .venv/bin/python main.py --config configs/nlu.py:task=ag_news --workdir /tmp/qpo_ag_news
Every method setting is configs/quickstart.py's (how each was chosen is said there);
only sizes that the texts force differ: the policy's query length (a BoolQ or Cosmos QA
query is a passage and a question), the prompt length (InstructEval's prompts run to 49
tokens), and D_0's queries for the long-text task (a BoolQ pair costs about three times a
tweet's). The files: AG News has only its test split here, so its first half is the
train split (the spec's rules then cut train / collect / validation / test); BoolQ has
its dev split, whose first half is the train split. (Cosmos QA's rules leave 13
validation rows of its valid split: too few to choose anything on, so it is not here.)
Runtime and Expected: the measured runs in experiments/results/recipe_tasks.md.
"""

import os

import ml_collections

from qpo_jax.configs import quickstart

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                      "shared", "data")
TASKS = {  # task -> (data fields, policy query tokens, D_0 queries)
    "ag_news": (dict(dir=f"{SHARED}/ag_news",
                     files={"train": "test.csv[:50%]", "test": "test.csv[50%:]"}), 64, 400),
    "boolq": (dict(dir=f"{SHARED}/boolq",
                   files={"train": "dev.jsonl[:50%]", "validation": "dev.jsonl[50%:]"}), 160, 200),
}


def settings() -> list[str]:
  return [f"task={t}" for t in TASKS]


def get_config(arg: str = "task=ag_news") -> ml_collections.ConfigDict:
  named = dict(p.split("=", 1) for p in arg.split(",") if "=" in p)
  task = named.get("task", "")
  if task not in TASKS or set(named) - {"task"}:
    raise ValueError(f"configs/nlu.py:{arg}: takes task=<one of {sorted(TASKS)}>")
  data, query_len, num_queries = TASKS[task]
  c = quickstart.get_config()
  c.task.name = task
  c.task.data.update(kind="files", **data)
  c.data.update(prompts_dir=f"{SHARED}/prompts/instructeval/instructions", lp_model="llama7b",
                num_queries=num_queries)
  c.train.update(query_len=query_len, prompt_len=64)
  return c
