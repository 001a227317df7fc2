"""Timeline plots: per-frame head probabilities against the reference turns, saved as PNG files and logged to
wandb. Written after testing (teacher-forced), for the first few test clips."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402


def plot_timeline(path: Path, title: str, times: list[float], probs: dict[str, list[float]],
                  reference: dict[str, list[float]]) -> Path:
    """One panel per head: probability over time (line) and reference positive frames (shaded markers)."""
    fig, axes = plt.subplots(len(probs), 1, figsize=(12, 2.2 * len(probs)), sharex=True, squeeze=False)
    for ax, (head, p) in zip(axes[:, 0], probs.items(), strict=True):
        for t in reference[head]:
            ax.axvline(t, color="tab:orange", alpha=0.5, lw=2)
        ax.plot(times, p, color="tab:blue", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"p({head})")
    axes[0, 0].set_title(f"{title}  (orange: reference frames)")
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
