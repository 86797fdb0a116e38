"""Every config field once, with its default: the schema the other configs override.

Not an experiment to run (its sizes are the spec's, for a GPU, with the embedded
SmolLM2 and the packaged TweetEval as placeholders); the experiment configs (`tiny.py`, `quickstart.py`, `tweet_emotion.py`, `paper.py`)
start from `get_config()` here and change only what differs, so every config has
the same fields and `--config.<field>=...` works, or names the typo, on any of them.
The config is locked: setting a field that is not here is an error. Below the sections,
`RULES` gives each number's range (checked before any mode starts) and `NEUTRAL` the
fields that cannot change a result: a new field is added in this file only.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # query sampling, demo sets, the policy's sampling keys
  # the policy round a mode uses (0: the last finished; for train_policy, the round the
  # finished datasets train: D_0 -> 1, D_1 -> 2, ...); the loop mode runs them all
  c.round = 0
  c.progress = True  # tqdm bars with rate and ETA for every long stage (False for logs and CI)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)  # device mesh axis sizes (-1: the rest)
  # keep compiled XLA programs in <workdir>/xla_cache (or JAX_COMPILATION_CACHE_DIR, if set,
  # shared by workdirs): reruns load them (False: JAX's own setting)
  c.compile_cache = True

  c.target = dict(
      backend="local",  # local: our JAX model (target.local applies); http: a server (target.http)
      # the model: what `local` loads (and `generate`, `serve_target`); `http` sends `name`
      name="smollm2-135m-instruct",  # registry name: smollm2-135m-instruct, hf, gguf, random, or the API model
      path="",  # checkpoint directory or file ("" : the embedded default where the name has one)
      tokenizer_path="",  # tokenizer directory when it is not beside the checkpoint
      preset="",  # architecture preset for `random`/`hf` (e.g. tiny-llama, llama-2-7b)
      tokenizer="",  # tokenizer for `random`: "smollm2" or "" (byte-level)
      seed=0,  # init seed of a `random` model
      dtype="float32",  # compute dtype
      param_dtype="float32",  # parameter dtype
      local=dict(  # backend=local: how our JAX model is asked
          chat=True,  # render prompts with the model's chat template
          batch_size=16,  # scoring / generation batch
          length_multiple=8),  # pad sequence lengths to a multiple of this (fewer compilations)
      http=dict(  # backend=http: how an OpenAI-compatible server is asked
          base_url="",  # server URL ("" : $OPENAI_BASE_URL)
          model="",  # model name sent to the server ("" : target.name)
          api_key_env="OPENAI_API_KEY",  # environment variable holding the key
          scoring="completions",  # completions (echo logprobs) or chat_first_token
          concurrency=4,  # requests in flight
          max_retries=5,  # retries on 429/5xx/timeouts
          timeout_s=60.0,  # per-request timeout
          backoff_s=1.0))  # first retry delay (doubles each retry)

  c.task = dict(
      name="tweet_emotion",  # registry name (qpo_jax/tasks)
      file="",  # a YAML/JSON file declaring your own task (tasks/declared.py); then it names it
      seed=0,  # split shuffles
      max_words=100,  # queries are cut to this many words (spec: texts cut to 100 words)
      # each split's rows as 'source[lo%:hi%]' of a source split after the seeded shuffle,
      # e.g. validation='validation[:10%]' (None or '': the task's rule, the spec's)
      split_rules=dict(train=placeholder(str), collect=placeholder(str),
                       validation=placeholder(str), test=placeholder(str)),
      data=dict(
          kind="files",  # files, tfds or builtin
          size=800,  # builtin: number of generated rows
          seed=0,  # builtin: generator seed
          dir="",  # files: directory ("" : the task's default; tweet_emotion's ship in the package)
          name="",  # tfds: builder name ("" : the task's default)
          data_dir="",  # tfds: prepared data directory
          format="",  # files: tweeteval, csv, jsonl, json, auto ("" : the task's default)
          # files: each source split's file[lo:hi] (None: the task's default for that split)
          files=dict(train=placeholder(str), validation=placeholder(str), test=placeholder(str)),
          columns=placeholder(object),  # {our field: their column} renames, or a CSV's names
          # tfds: each source split's tfds split (None: the task's default)
          splits=dict(train=placeholder(str), validation=placeholder(str), test=placeholder(str)),
          header=placeholder(bool),  # csv: first line is a header (None: the task's default)
          label_base=placeholder(int)))  # subtract from labels (1-based label files)

  c.offline = dict(
      source="build",  # build D_0 with the target, or import a published offline file
      path="",  # import: the file
      prompts_dir="",  # source prompts: InstructEval-style YAML directory ("" : the packaged ones)
      prompt_sources=(),  # import: which prompt methods to keep (empty: all)
      lp_model="",  # InstructEval: which model's prompt files
      prompts_file="",  # Prompt-OIRL: prompt texts
      aliases_file="",  # Prompt-OIRL: prompt aliases
      target_name="",  # import: the target whose rewards to keep
      num_queries=0,  # train queries in D_0 (0: all)
      settings=("zero_shot",),  # zero_shot and/or few_shot
      num_demo_sets=3,  # few-shot: demo sets per query
      num_demos=4,  # few-shot: demos per set
      threshold=placeholder(float),  # expert filter: least raw reward a trained record has
      top_fraction=placeholder(float),  # expert filter: each query's best fraction of prompts
      rank_by="reward",  # expert filter ranks a query's prompts by: reward or advantage
      rows_per_query=0,  # after the filter: a random this many of each query's rows (0: all)
      returns="reward",  # a row's return: reward (normalised) or query_centred (vs its query)
      prompts_per_query=0,  # sparse D_0: random prompts per query (0: every prompt)
      nll_term="token",  # reward's NLL: token (gold text) or choice (over the options)
      max_bad_fraction=0.01,  # import: most rows that may be rejected
      prompts_per_chunk=4,  # D_0 is built and checkpointed this many prompts at a time
      records_per_shard=4096,  # records per TFRecord shard
      max_new_tokens=128,  # math: answer length
      inspect="")  # inspect_data: dataset directory ("" : the latest)

  c.policy = dict(
      name="smollm2-135m-instruct",  # registry name, as target.name
      path="",  # checkpoint ("" : the embedded default where the name has one)
      tokenizer_path="",  # as target.tokenizer_path
      preset="",  # as target.preset
      tokenizer="",  # as target.tokenizer
      seed=1,  # head init and a `random` backbone
      dtype="float32",  # compute dtype
      param_dtype="float32",  # parameter dtype
      remat=False,  # recompute each block's activations in the backward pass (less memory)
      lora_rank=0,  # >0: train LoRA adapters of this rank instead of the backbone
      lora_alpha=16.0)  # LoRA scale numerator

  c.train = dict(
      learning_rate=1e-3,  # round 1 peak learning rate
      schedule="step",  # step (x decay_rate every decay_every_epochs) or cosine
      epochs=100,  # round 1 epochs
      decay_every_epochs=20,  # step schedule period
      decay_rate=0.65,  # step schedule factor
      warmup_steps=0,  # linear warm-up
      batch_size=128,  # records per step
      grad_accum=1,  # micro-batches per step
      grad_clip=0.25,  # global norm clip
      pad_multiple=16,  # pad batch lengths to a multiple of this
      weight_decay=1e-4,  # AdamW
      query_len=40,  # Lq: query tokens (longer queries are cut)
      prompt_len=40,  # Lp: prompt tokens incl. EOS (must hold every source prompt)
      normalize=True,  # min-max normalise rewards to 0..100 with D_0's range
      freeze_backbone=False,  # train only the QPO heads
      finetune_lr=1e-4,  # rounds >= 2: learning rate
      finetune_epochs=20,  # rounds >= 2: epochs
      log_every=50,  # steps between metric logs
      checkpoint_every=500)  # steps between resumable checkpoints

  c.sample = dict(
      target_return=100.0,  # R*: the return the policy is conditioned on
      num_samples=1,  # collection: prompts per query
      batch_size=64,  # queries per sampling batch
      test=dict(temperature=0.0, top_k=0, top_p=1.0),  # test prompts: greedy (temperature 0)
      collect=dict(temperature=1.0, top_k=2, top_p=0.9))  # collection sampling

  c.loop = dict(
      num_loops=3,  # QPO loops T (loop t: round t, then collect t)
      collect_batches=10,  # collection batches per loop
      collect_queries=100,  # queries per collection batch (avg_acc is over one batch)
      # collect after the last round too: its records train nothing, but its accuracy is a
      # collect-split check of the final policy (a run extended by more loops collects it then)
      final_collection=True,
      # explore (explore.py): every distinct sampled prompt is scored on its query; new texts
      # (samples, rewrites and edits of the parents) are screened, the best kept and scored on
      # shared D_0 queries
      explore=False,
      parents=8,  # explore: the prompts the expert filter keeps most, rewritten and edited
      rewrites=4,  # explore: rewrites sampled per parent by the policy's pretrained LM
      edits=64,  # explore: phrase edits of the parents (swap, delete, add, cross over)
      junk_quantile=0.9,  # explore: most NLL a candidate may have, as a quantile of the sources
      max_screen=64,  # explore: most candidates screened (the critic picks them when more)
      screen_queries=32,  # explore: D_0 queries every screened candidate is scored on
      new_prompts=8,  # explore: screened prompts kept and scored on all `prompt_queries`
      prompt_queries=0)  # explore: D_0 queries every kept prompt is scored on (0: all)

  c.eval = dict(
      split="test",  # the split the final table scores ("validation": choosing settings)
      settings=("zero_shot",),  # settings of the final table
      num_queries=100,  # test queries
      num_demo_sets=10,  # few-shot demo sets per query
      num_demos=6,  # demos per set
      max_new_tokens=512,  # math: answer length
      validation_queries=100,  # QPO of every loop on this many validation queries (0: none)
      purity_queries=40,  # label purity of a prompt not in D_0: over this many D_0 queries
      finetuned_baselines=True,  # also the selectors with their encoder fine-tuned as QPO's
      best_of_n=0,  # >0: also the critic's pick of the last policy's greedy + N sampled prompts
      returns=(0.0, 50.0))  # the last policy's greedy prompts also at these R* (is R* used?)

  c.eval_prompts = dict(  # --mode=evaluate_prompts
      split="test",  # split to score on
      num_queries=100,  # queries
      setting="zero_shot",  # zero_shot or few_shot
      num_demo_sets=10,  # few-shot demo sets
      num_demos=6,  # demos per set
      max_new_tokens=512,  # math: answer length
      prompts=())  # prompts to score (empty: the source prompts)

  c.serve = dict(  # --mode=serve_target
      host="127.0.0.1",  # bind address (loopback unless you mean it)
      port=8000,  # port
      api_key_env="QPO_SERVE_KEY",  # environment variable with the key clients must send ("" : none)
      max_tokens=512,  # most tokens one request may generate
      max_body_bytes=1_000_000,  # largest request body
      request_timeout_s=60.0,  # longest a request may hold the model
      max_prompt_tokens=2048,  # longest prompt one request may send
      # tokens generated between checks of the time limit and of the client (each check
      # starts the next piece from the whole text again: larger is faster, checks are rarer)
      chunk_tokens=64)

  c.optimize = dict(  # --mode=optimize: the policy's prompts for your own queries
      input="",  # queries: .jsonl, .csv (with a header row) or .txt (one per line)
      field="query",  # the JSONL/CSV field with the query (tasks with several fields: theirs)
      output="",  # JSONL to write ("" : <workdir>/optimized.jsonl); a rerun continues it
      num_samples=0,  # 0: the greedy prompt; N: N prompts from the collection sampler
      answer=False,  # also the target's answer with each prompt (through the cache)
      batch_size=32)  # queries per written batch

  c.export = dict(  # --mode=export_policy
      dir="")  # output directory ("" : <workdir>/export/round_<t>)

  c.generate = dict(  # --mode=generate
      questions=("What is the capital of France?",),  # questions to answer
      max_new_tokens=32,  # answer length
      chat=True,  # use the chat template
      batch_size=4)  # questions per batch
  c.lock()
  return c


# What each number above may be (a kind of qpo_jax/config_rules.py), checked before any
# mode starts; a test fails on a numeric field without one.
RULES = {
    "seed": "seed", "round": "round",
    "mesh.data": "mesh_axis", "mesh.fsdp": "mesh_axis", "mesh.tensor": "mesh_axis",
    "target.seed": "seed", "target.local.batch_size": "positive_int",
    "target.local.length_multiple": "positive_int", "target.http.concurrency": "positive_int",
    "target.http.max_retries": "count", "target.http.timeout_s": "positive",
    "target.http.backoff_s": "non_negative",
    "task.seed": "seed", "task.max_words": "positive_int", "task.data.size": "positive_int",
    "task.data.seed": "seed", "task.data.label_base": "count",
    "offline.num_queries": "count", "offline.num_demo_sets": "positive_int",
    "offline.num_demos": "positive_int", "offline.threshold": "any",
    "offline.top_fraction": "fraction",
    "offline.prompts_per_query": "count", "offline.max_bad_fraction": "unit",
    "offline.rows_per_query": "count",
    "offline.prompts_per_chunk": "positive_int", "offline.records_per_shard": "positive_int",
    "offline.max_new_tokens": "positive_int",
    "policy.seed": "seed", "policy.lora_rank": "count", "policy.lora_alpha": "positive",
    "train.learning_rate": "positive", "train.epochs": "positive",
    "train.decay_every_epochs": "positive", "train.decay_rate": "fraction",
    "train.warmup_steps": "count", "train.batch_size": "positive_int",
    "train.grad_accum": "positive_int", "train.grad_clip": "positive",
    "train.pad_multiple": "positive_int", "train.weight_decay": "non_negative",
    "train.query_len": "positive_int", "train.prompt_len": "positive_int",
    "train.finetune_lr": "non_negative", "train.finetune_epochs": "non_negative",
    "train.log_every": "positive_int", "train.checkpoint_every": "positive_int",
    "sample.target_return": "any", "sample.num_samples": "positive_int",
    "sample.batch_size": "positive_int", "sample.test.temperature": "non_negative",
    "sample.test.top_k": "count", "sample.test.top_p": "fraction",
    "sample.collect.temperature": "non_negative", "sample.collect.top_k": "count",
    "sample.collect.top_p": "fraction",
    "loop.num_loops": "positive_int", "loop.collect_batches": "positive_int",
    "loop.collect_queries": "positive_int", "loop.parents": "count", "loop.rewrites": "count",
    "loop.edits": "count", "loop.junk_quantile": "fraction", "loop.max_screen": "positive_int",
    "loop.screen_queries": "positive_int", "loop.new_prompts": "positive_int",
    "loop.prompt_queries": "count",
    "eval.num_queries": "positive_int", "eval.num_demo_sets": "positive_int",
    "eval.num_demos": "positive_int", "eval.max_new_tokens": "positive_int",
    "eval.validation_queries": "count", "eval.purity_queries": "count", "eval.best_of_n": "count",
    "eval_prompts.num_queries": "positive_int", "eval_prompts.num_demo_sets": "positive_int",
    "eval_prompts.num_demos": "positive_int", "eval_prompts.max_new_tokens": "positive_int",
    "serve.port": "port", "serve.max_tokens": "positive_int", "serve.max_body_bytes": "positive_int",
    "serve.request_timeout_s": "positive", "serve.max_prompt_tokens": "positive_int",
    "serve.chunk_tokens": "positive_int",
    "optimize.num_samples": "count", "optimize.batch_size": "positive_int",
    "generate.max_new_tokens": "positive_int", "generate.batch_size": "positive_int",
}

# Fields that moved: old name -> new name. A stage recorded under an old name is compared
# under the new one (fingerprint.py), and an old name on the command line says where it went.
MOVED = {
    **{f"target.{k}": f"target.local.{k}" for k in ("chat", "batch_size", "length_multiple")},
    **{f"target.{k}": f"target.http.{k}" for k in (
        "base_url", "model", "api_key_env", "scoring", "concurrency", "max_retries",
        "timeout_s", "backoff_s")},
    **{f"data.{k}": f"offline.{k}" for k in (  # `data` was a second name beside task.data
        "source", "path", "prompts_dir", "prompt_sources", "lp_model", "prompts_file",
        "aliases_file", "target_name", "num_queries", "settings", "num_demo_sets", "num_demos",
        "threshold", "top_fraction", "rank_by", "prompts_per_query", "nll_term",
        "max_bad_fraction", "prompts_per_chunk", "records_per_shard", "max_new_tokens",
        "inspect")},
}

# Fields that cannot change a result: left out of stage fingerprints (qpo_jax/fingerprint.py),
# so changing one never stops a workdir from resuming.
NEUTRAL = frozenset({
    "target.local.batch_size", "target.local.length_multiple", "target.http.concurrency",
    "target.http.max_retries", "target.http.timeout_s", "target.http.backoff_s",
    "target.http.api_key_env",
    "offline.inspect", "offline.records_per_shard", "offline.prompts_per_chunk",
    "progress", "train.log_every", "train.checkpoint_every",
    "loop.num_loops", "loop.final_collection"})
# Not neutral though they change no arithmetic: `policy.remat` and `sample.batch_size` change
# the order of floating-point sums, and the trained policy's greedy prompts moved with them
# (QPO 0.540-0.590 over four such runs of the quickstart), so they are part of a stage.
