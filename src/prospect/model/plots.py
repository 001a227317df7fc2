"""Plots saved as PNG files (and logged to wandb by their callers): timelines of the per-frame head
probabilities against the reference turns (teacher-forced after testing, for the first few test clips; and
streamed, with compression points), a comparison of streaming settings, and quality against cache size."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402


def plot_timeline(path: Path, title: str, times: list[float], probs: dict[str, list[float]],
                  reference: dict[str, list[float]], compressions: list[float] = (),
                  thresholds: dict[str, float] | None = None) -> Path:
    """One panel per head: probability over time (line), reference positive frames (orange), the threshold
    (dotted) and the times the cache was compressed (grey dashed)."""
    fig, axes = plt.subplots(len(probs), 1, figsize=(12, 2.2 * len(probs)), sharex=True, squeeze=False)
    for ax, (head, p) in zip(axes[:, 0], probs.items(), strict=True):
        for t in reference[head]:
            ax.axvline(t, color="tab:orange", alpha=0.5, lw=2)
        for t in compressions:
            ax.axvline(t, color="tab:gray", ls="--", lw=1)
        if thresholds and head in thresholds:
            ax.axhline(thresholds[head], color="tab:green", ls=":", lw=1)
        ax.plot(times, p, color="tab:blue", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"p({head})")
    legend = "orange: reference frames" + (", dashed: cache compressed" if compressions else "")
    axes[0, 0].set_title(f"{title}  ({legend})")
    axes[-1, 0].set_xlabel("video time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class TimelinePlots(L.Callback):
    """Collects the test split's per-frame head probabilities and plots `max_clips` clips."""

    def __init__(self, dirpath: str, max_clips: int = 4):
        self.dirpath, self.max_clips = Path(dirpath), max_clips
        self.paths: list[Path] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows: dict[str, list[tuple]] = defaultdict(list)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is None:
            return
        for i in range(len(batch.frame_index)):
            clip = batch.clip_ids[int(batch.decision_batch[i])]
            if clip in self._rows or len(self._rows) < self.max_clips:
                self._rows[clip].append((float(batch.frame_time[i]), float(outputs["speaking"][i]),
                                         float(outputs["dst_update"][i]), float(batch.speaking[i]),
                                         float(batch.dst_update[i])))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for clip, rows in self._rows.items():
            rows.sort()
            times = [r[0] for r in rows]
            probs = {"speaking": [r[1] for r in rows], "dst_update": [r[2] for r in rows]}
            reference = {"speaking": [r[0] for r in rows if r[3]], "dst_update": [r[0] for r in rows if r[4]]}
            path = plot_timeline(self.dirpath / f"timeline_{clip.replace('/', '_')}.png", clip, times, probs, reference)
            self.paths.append(path)
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb is not None and self.paths:
            wandb.log_image("test/timelines", [str(p) for p in self.paths], caption=[p.stem for p in self.paths])


def plot_settings(path: Path, title: str, metrics: dict[str, dict[str, float]],
                  keys: tuple[str, ...] = ("f1", "precision", "recall", "dst_f1", "bleu4")) -> Path:
    """Grouped bars: one group per streaming setting, one bar per metric."""
    settings = list(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(settings)), 3.2))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(settings))]
        ax.bar(xs, [metrics[s].get(key, 0.0) for s in settings], width, label=key)
    ax.set_xticks(range(len(settings)), settings)
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.set_title(title)
    ax.legend(ncol=len(keys), fontsize=8, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_tradeoff(path: Path, rows: list[dict], keys: tuple[str, ...] = ("f1", "step_naming_accuracy")) -> Path:
    """Quality against peak cache tokens: a panel per metric of `keys` that some row has, a line per strategy
    through its budgets (rows {strategy, budget, peak_cache_tokens, metric...}; a budget that did not fit has no
    point), the strategy `none` as a dashed horizontal reference line."""
    shown = [k for k in keys if any(r.get(k) is not None for r in rows)] or list(keys[:1])
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, key in zip(axes[0], shown, strict=True):
        points = defaultdict(list)
        for r in rows:
            if r.get(key) is not None:
                points[r["strategy"]].append((r["peak_cache_tokens"], r[key], r["budget"]))
        for strategy, line in points.items():
            if strategy == "none":
                ax.axhline(line[0][1], color="black", ls="--", lw=1, label=f"none ({line[0][0]} tokens)")
                continue
            tokens, values, _ = zip(*sorted(line, key=lambda point: point[2]), strict=True)
            ax.plot(tokens, values, marker="o", lw=1, label=strategy)
        ax.set_xscale("log", base=2)
        budgets = sorted({r["budget"] for r in rows if r.get("budget")})
        if budgets:  # a tick at each budget: the points sit at or below theirs
            ax.set_xticks(budgets)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 512, not 2^9
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("peak cache tokens")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    axes[0, 0].set_title("quality against cache budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
