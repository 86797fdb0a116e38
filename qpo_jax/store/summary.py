"""Looking at a dataset: counts per prompt source, reward histogram, best prompts; a PNG.

`describe` returns a printable report; `plot` writes a figure with the reward
distribution per prompt source and per loop.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from qpo_jax.store.records import Record
from qpo_jax.utils import atomic_open


def best_prompts(recs: Sequence[Record], top: int = 5) -> dict[str, list[tuple[float, float, int, str]]]:
  """Per task: (mean accuracy, mean reward, records, prompt) of the best prompts."""
  by: dict[tuple[str, str], list[Record]] = collections.defaultdict(list)
  for r in recs:
    by[(r.task, r.prompt)].append(r)
  out: dict[str, list] = collections.defaultdict(list)
  for (task, prompt), rs in by.items():
    out[task].append((float(np.nanmean([r.accuracy for r in rs])),
                      float(np.mean([r.reward for r in rs])), len(rs), prompt))
  return {t: sorted(v, key=lambda x: (-x[0], -x[1]))[:top] for t, v in sorted(out.items())}


def describe(recs: Sequence[Record], manifest: dict | None = None, bins: int = 10) -> str:
  lines = []
  if manifest is not None:
    lines.append(f"records {manifest['count']}, queries {manifest['queries']}, prompts "
                 f"{manifest['prompts']}, normaliser {manifest.get('normalizer')}")
  lines.append("\n| prompt source | records | mean reward | accuracy |\n|---|---|---|---|")
  by_source: dict[str, list[Record]] = collections.defaultdict(list)
  for r in recs:
    by_source[r.prompt_source].append(r)
  for source, rs in sorted(by_source.items()):
    lines.append(f"| {source or '-'} | {len(rs)} | {np.mean([r.reward for r in rs]):.2f} | "
                 f"{np.nanmean([r.accuracy for r in rs]):.3f} |")
  values = np.asarray([r.reward for r in recs])
  counts, edges = np.histogram(values, bins=bins)
  lines.append("\nreward histogram")
  width = max(counts.max(), 1)
  for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
    lines.append(f"  [{lo:8.2f}, {hi:8.2f})  {c:7d}  {'#' * int(40 * c / width)}")
  for task, rows in best_prompts(recs).items():
    lines.append(f"\nbest prompts for {task} (accuracy, mean reward, records)")
    for acc, rew, n, prompt in rows:
      lines.append(f"  {acc:.3f}  {rew:7.2f}  {n:5d}  {prompt[:90]!r}")
  return "\n".join(lines)


def plot(recs: Sequence[Record], path: str, title: str = "") -> str:
  """Reward histograms per prompt source and per loop, as a PNG at `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  values = np.asarray([r.reward for r in recs])
  edges = np.histogram_bin_edges(values, bins=30)
  for key, ax, name in ((lambda r: r.prompt_source, axes[0], "prompt source"),
                        (lambda r: f"loop {r.loop}", axes[1], "loop")):
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for r in recs:
      groups[key(r)].append(r.reward)
    for label, vals in sorted(groups.items()):
      ax.hist(vals, bins=edges, alpha=0.5, label=f"{label} ({len(vals)})")
    ax.set_xlabel("reward")
    ax.set_ylabel("records")
    ax.set_title(f"reward by {name}")
    ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  with atomic_open(path, "wb") as fh:
    fig.savefig(fh, format="png", dpi=100)
  plt.close(fig)
  return path
