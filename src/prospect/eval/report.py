"""What a streaming evaluation leaves behind: a comparison table, timeline plots with compression points, a
settings comparison plot, the generated-vs-reference dialog (CSV and wandb table), and the trade-off of quality
against cache size per strategy and budget (tradeoff.csv, a plot, a wandb table)."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from prospect.eval.streaming import DIALOG_COLUMNS, SettingResult, StreamedClip, dialog_rows, reference_events
from prospect.model.plots import plot_settings, plot_timeline, plot_tradeoff
from prospect.stream.strategies import make_strategy

TABLE_KEYS = ("f1", "precision", "recall", "bleu4", "meteor", "cider", "dst_f1", "dst_state_accuracy",
              "speaking_auroc", "ms_per_frame", "peak_cache_tokens", "compressions")


def metrics_table(metrics: dict[str, dict], keys: tuple[str, ...] = TABLE_KEYS) -> str:
    """One row per setting, aligned columns."""
    header = ["setting", *keys]
    rows = [[s, *(_fmt(m.get(k)) for k in keys)] for s, m in metrics.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def plot_stream(path: Path, streamed: StreamedClip, setting: str, thresholds: tuple[float, float]) -> Path:
    """Head probabilities of one streamed clip against its reference events, with the compression points."""
    clip = streamed.clip
    reference = {head: [clip.frame_timestamp(e.frame) for e in reference_events(clip, role)]
                 for head, role in (("speaking", "assistant"), ("dst_update", "dst"))}
    probs = {"speaking": [r.speaking_prob for r in streamed.records],
             "dst_update": [r.dst_update_prob for r in streamed.records]}
    return plot_timeline(path, f"{clip.id} [{setting}]", [r.time for r in streamed.records], probs, reference,
                         compressions=streamed.compression_times(),
                         thresholds={"speaking": thresholds[0], "dst_update": thresholds[1]})


def save_plots(results: dict[str, SettingResult], out_dir: Path, max_clips: int) -> list[Path]:
    """Timelines of the first `max_clips` clips at every setting, and the settings comparison."""
    paths = []
    for setting, result in results.items():
        for streamed in result.clips[:max_clips]:
            name = f"stream_{setting}_{streamed.clip.id.replace('/', '_')}.png"
            paths.append(plot_stream(out_dir / name, streamed, setting, result.thresholds))
    paths.append(plot_settings(out_dir / "settings.png", "streaming settings",
                               {s: r.metrics for s, r in results.items() if "does_not_fit" not in r.metrics}))
    return paths


def all_dialog_rows(results: dict[str, SettingResult]) -> list[list]:
    return [row for r in results.values() for row in dialog_rows(r)]


def save_dialog_csv(results: dict[str, SettingResult], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(DIALOG_COLUMNS)
        writer.writerows(all_dialog_rows(results))
    return path


def save_metrics_csv(metrics: dict[str, dict], path: Path) -> Path:
    keys = sorted({k for m in metrics.values() for k in m})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", *keys])
        writer.writerows([[s, *(m.get(k) for k in keys)] for s, m in metrics.items()])
    return path


def log_to_wandb(logger: WandbLogger, results: dict[str, SettingResult], plots: list[Path], prefix: str,
                 step: int | None = None) -> None:
    """The dialog table and the plots, under `prefix` (e.g. "stream" or "eval")."""
    logger.log_table(f"{prefix}/dialog", columns=DIALOG_COLUMNS, data=all_dialog_rows(results), step=step)
    logger.log_image(f"{prefix}/timelines", [str(p) for p in plots], step=step, caption=[p.stem for p in plots])


TRADEOFF_COLUMNS = ["strategy", "budget", "f1", "dst_f1", "step_naming_accuracy", "peak_cache_tokens", "compressions",
                    "ms_per_frame", "does_not_fit"]


def tradeoff_rows(metrics: dict[str, dict]) -> list[dict]:
    """One row per setting ({setting: metrics}, as eval_metrics.json): its strategy and budget in tokens (none:
    no budget) with TRADEOFF_COLUMNS' metrics; a setting that did not fit has its reason and no numbers, a
    metric the data does not give (step naming without synthetic references) is None."""
    rows = []
    for setting, m in metrics.items():
        strategy = make_strategy(setting)
        rows.append({"strategy": strategy.name, "budget": strategy.budget,
                     **{k: m.get(k) for k in TRADEOFF_COLUMNS[2:]}})
    return rows


def save_tradeoff(metrics: dict[str, dict], csv_path: Path, plot_path: Path) -> tuple[list[dict], Path]:
    """tradeoff.csv (TRADEOFF_COLUMNS; empty cells where a value is None) and its plot; (the rows, the plot)."""
    rows = tradeoff_rows(metrics)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, TRADEOFF_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows, plot_tradeoff(plot_path, rows)
