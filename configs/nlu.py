"""The quickstart's recipe, unchanged, on one of the paper's NLU tasks with its public
prompt collection (InstructEval's, the paper's sources): ag_news, boolq, cosmos_qa,
hellaswag, imdb or tweet_emotion.

Command (after `bash scripts/setup.sh`, with $QPO_DATA laid out as docs/tasks_and_data.md
says):
  .venv/bin/python main.py --config configs/nlu.py:task=ag_news --workdir /tmp/qpo_ag_news
Every method setting is configs/quickstart.py's (how each was chosen is said there);
only sizes that the texts force differ: the policy's query length, the prompt length
(InstructEval's prompts run to 49 tokens), and D_0's queries. A long-text task, whose query
runs to task.max_words = 100 words per field (BoolQ's and Cosmos QA's passages, IMDB's
reviews, HellaSwag's WikiHow contexts), takes 160 query tokens (SmolLM2's tokenizer on the
train split: Cosmos QA 100% fit, BoolQ 90%, its longest passages lose the question's end)
and 200 D_0 queries (a BoolQ pair costs about three times a tweet's); a tweet 48 tokens
(99% fit), an AG News article 64 (79%: its title and first sentences), 400 queries each.
The files: AG News is read from its test split only (test.csv), whose first half is the
train split (the spec's rules then cut train / collect / validation / test); BoolQ from its
dev split and Cosmos QA from its valid split, whose first half is the train split (Cosmos
QA's own rules keep 1% of its train split for validation, 13 rows of that half: too few to
choose on, so the first 10% of the second half are the validation split and the rest the
test split; with its train.csv, set --config.task.data.files.train=train.csv
--config.task.data.files.validation=valid.csv --config.task.split_rules.validation=
--config.task.split_rules.test= for the spec's splits);
TweetEval from the package; HellaSwag and IMDB from prepared tensorflow-datasets
(`--config.task.data.data_dir=...`, default ~/tensorflow_datasets).
Runtime and Expected (validation queries, `--config.eval.split=validation`; the test
splits were never read): the `reward` rows of experiments/results/filter_ablation.md's
two-loop table: QPO loop 2 0.690 on AG News (best source prompt 0.470), 0.585 on BoolQ
(0.578); about 100 and 65 minutes on 2 CPU cores. The recipe before a7ce397 (advantage
ranking): experiments/results/recipe_tasks.md. tweet_emotion (InstructEval's 31 prompts, not
the quickstart's own 23; chosen on nothing): loop 2 0.365 on 200 validation tweets (best
source prompt 0.390, frozen reward model 0.490), 34 minutes
(experiments/results/recipe_tweet_emotion_instructeval.md). cosmos_qa, hellaswag and imdb
have not been run at full size; cosmos_qa at a reduced size (recipe_tasks.md: 15 minutes)
runs end to end, with SmolLM2-135M at chance (8 train and 16 validation questions).
"""

import ml_collections

from qpo_jax.configs import quickstart
from qpo_jax.utils import data_dir

# task -> (where its rows are: files under $QPO_DATA/<task>, "tfds" or "package"; query
# tokens; D_0 queries)
TASKS = {
    "ag_news": ({"train": "test.csv[:50%]", "test": "test.csv[50%:]"}, 64, 400),
    "boolq": ({"train": "dev.jsonl[:50%]", "validation": "dev.jsonl[50%:]"}, 160, 200),
    "cosmos_qa": ({"train": "valid.csv[:50%]", "validation": "valid.csv[50%:]"}, 160, 200),
    "hellaswag": ("tfds", 160, 200),
    "imdb": ("tfds", 160, 200),
    "tweet_emotion": ("package", 48, 400),
}
# task -> task.split_rules where the files above leave a split too small (see above)
SPLIT_RULES = {"cosmos_qa": {"validation": "validation[:10%]", "test": "validation[10%:]"}}


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
  if files == "tfds":
    c.task.data.kind = "tfds"
  elif files != "package":  # the quickstart's data section already reads the package's files
    c.task.data.update(kind="files", dir=data_dir(task), files=files)
  c.task.split_rules.update(SPLIT_RULES.get(task, {}))
  c.offline.update(prompts_dir=data_dir("prompts", "instructeval", "instructions"),
                   lp_model="llama7b", num_queries=num_queries)
  c.train.update(query_len=query_len, prompt_len=64)
  return c
