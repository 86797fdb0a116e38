"""The report as pictures and TensorBoard scalars: results.png and <workdir>/eval/tb.

results.png has three panels: every method's accuracy with its 95% bootstrap
interval, one row each (methods with the same accuracy no longer hide each
other); QPO's accuracy per loop on the report's queries and on validation
queries, against the best single prompt and the strongest per-query selector;
and the reward distribution of each loop's records. The same accuracies go to
TensorBoard (`eval/...`, step = loop) beside the training curves of each round.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from qpo_jax import distributed
from qpo_jax.store import dataset
from qpo_jax.utils import atomic_open
from qpo_jax.workdir import Workdir


def _loops(result: dict[str, Any]) -> list[int]:
  return sorted(int(t) for t in result["qpo_prompts"])


def plot(result: dict[str, Any], workdir: str, labels) -> str:
  """Writes <workdir>/eval/results.png; `labels(method)` gives a method's display label
  (the writer process only: the others' picture would go nowhere)."""
  if not distributed.is_writer():
    return Workdir(workdir).eval("results.png")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  setting = result["settings"][0]
  methods = [m for m in result["methods"] if setting in result["methods"][m]]
  fig = plt.figure(figsize=(15, max(4.5, 0.28 * len(methods) + 1.5)))
  grid = fig.add_gridspec(1, 3, width_ratios=[1.5, 1, 1])
  dots, loops_ax, rewards_ax = (fig.add_subplot(grid[0, i]) for i in range(3))

  intervals = result.get("intervals", {})
  y = np.arange(len(methods))[::-1]
  for yi, m in zip(y, methods):
    acc = result["methods"][m][setting]
    ci = intervals.get(m, {}).get(setting)
    qpo = m.startswith("qpo_")
    reference = labels(m).startswith("(reference)")
    color = "black" if qpo else ("grey" if reference else "tab:blue")
    if ci:
      dots.plot([ci["low"], ci["high"]], [yi, yi], color=color, lw=2, alpha=0.6)
    dots.plot([acc], [yi], "o", color=color, ms=6)
  dots.set_yticks(y, [labels(m) for m in methods], fontsize=7)
  dots.set_xlabel(f"{result.get('split', 'test')} accuracy ({setting}), 95% bootstrap interval")
  dots.grid(axis="x", alpha=0.3)

  loops = _loops(result)
  loops_ax.plot(loops, [result["methods"][f"qpo_loop_{t}"][setting] for t in loops], "o-",
                color="black", lw=2, label=f"QPO, {result.get('split', 'test')}")
  validation = (result.get("validation") or {}).get("methods", {})
  if validation:
    loops_ax.plot(loops, [validation[f"qpo_loop_{t}"] for t in loops], "s--", color="black",
                  alpha=0.6, label="QPO, validation")
  selectors = [m for m in ("reward_model", "classifier_lookup", "reward_model_finetuned",
                           "classifier_lookup_finetuned") if m in result["methods"]]
  best = max(selectors, key=lambda m: result["methods"][m][setting], default=None)
  for m, color in (("best_train_prompt", "tab:orange"), (best, "tab:blue")):
    if m:
      loops_ax.axhline(result["methods"][m][setting], ls="--", color=color, lw=1.5,
                       label=labels(m))
  loops_ax.set_xticks(loops)
  loops_ax.set_xlabel("loop")
  loops_ax.set_ylabel("accuracy")
  loops_ax.legend(fontsize=7)
  loops_ax.set_title("QPO per loop")

  wd = Workdir(workdir)  # the newest dataset: datasets are renamed into place whole
  recs, _ = dataset.read_dataset(wd.data(wd.datasets()[-1]))
  by_loop = collections.defaultdict(list)
  for r in recs:
    by_loop[r.loop].append(r.reward)
  edges = np.histogram_bin_edges([r.reward for r in recs], bins=30)
  for t, values in sorted(by_loop.items()):
    rewards_ax.hist(values, bins=edges, alpha=0.5, label=f"loop {t} ({len(values)})")
  rewards_ax.set_xlabel("reward")
  rewards_ax.set_title("reward distribution per loop")
  rewards_ax.legend(fontsize=7)

  fig.tight_layout()
  path = wd.eval("results.png")
  with atomic_open(path, "wb") as fh:
    fig.savefig(fh, format="png", dpi=100)
  plt.close(fig)
  return path


def tensorboard(result: dict[str, Any], workdir: str) -> str:
  """Every method's accuracy (step: the last loop) and QPO's per loop on the report's and
  the validation queries, as `eval/<setting>/<method>` scalars in <workdir>/eval/tb.
  Written by the writer process only: in a multi-process run the others would add their
  own event files (the same scalars twice) and race it to create the folder."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  directory = Workdir(workdir).eval("tb")
  if not distributed.is_writer():
    return directory
  loops = _loops(result)
  validation = (result.get("validation") or {}).get("methods", {})
  with SummaryWriter(directory) as writer:
    for setting in result["settings"]:
      for m, accs in result["methods"].items():
        if setting in accs and not m.startswith("qpo_loop_"):
          writer.add_scalar(f"eval/{setting}/{m}", accs[setting], loops[-1])
      for t in loops:
        writer.add_scalar(f"eval/{setting}/qpo", result["methods"][f"qpo_loop_{t}"][setting], t)
    for t in loops:
      if f"qpo_loop_{t}" in validation:
        writer.add_scalar("eval/validation/qpo", validation[f"qpo_loop_{t}"], t)
  return directory

