"""The evaluation job behind `python eval.py`: stream a data split through a checkpoint (or a plain backbone,
zero-shot) at each compression setting (a list, or every strategy at every budget), optionally with thresholds
calibrated on the validation split, and write eval_metrics.json (keyed by setting), eval_metrics.csv,
tradeoff.csv, dialog.csv, calibration.json and plots; and, teacher-forced, the replies said after each restart the
data trains for (replies_after_restarts.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from prospect.eval.encoder import load_encoder
from prospect.eval.report import (
    TRADEOFF_COLUMNS,
    log_to_wandb,
    metrics_table,
    save_dialog_csv,
    save_metrics_csv,
    save_plots,
    save_tradeoff,
)
from prospect.eval.restarts import replies_after_restarts
from prospect.eval.streaming import calibrate, evaluate
from prospect.model.features import open_feature_store
from prospect.stream.generator import StreamingGenerator, pick_device, stream_dtype
from prospect.stream.strategies import sweep_settings

log = logging.getLogger(__name__)


def run_eval(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Returns {setting: metrics} as written to eval_metrics.json."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator, data_cfg = _generator(cfg)
    datamodule = instantiate(data_cfg)
    with FileLock(str(Path(data_cfg["root"]).parent / ".prospect-prepare.lock")):
        datamodule.prepare_data()
    encoder = load_encoder(cfg.encoder, cfg.paths.models_dir)
    # None: frames are encoded (opened on the float32 model, whose fingerprint the store records)
    store = open_feature_store(datamodule.feature_store, generator.vlm, generator.tokens_per_frame)
    generator.to(dtype=stream_dtype(cfg.stream.dtype))
    settings = stream_settings(cfg.stream)
    window = tuple(cfg.window) if cfg.window else None
    configured = (cfg.stream.speaking_threshold, cfg.stream.dst_update_threshold)
    thresholds, thresholds_from = _uncalibrated_thresholds(generator, settings, configured, cfg.stored_thresholds)
    calibration = None
    if cfg.calibrate:
        cal = cfg.calibration
        val = _clips(datamodule, cal.split, cal.num_clips)
        calibrated = ["none"] if cal.from_none else settings
        calibration = calibrate(generator, val, calibrated, encoder, list(cal.speaking), list(cal.dst_update),
                                configured, window, store, cfg.stream.batch_size)
        if cal.from_none:  # every setting gets none's thresholds, in calibration.json too (an export keeps them)
            calibration = {s: calibration["none"] if s == "none" else
                           {"thresholds": calibration["none"]["thresholds"], "calibrated_on": "none"} for s in settings}
        thresholds = {s: tuple(calibration[s]["thresholds"]) for s in settings}
        thresholds_from = dict.fromkeys(settings, f"calibrated on {cal.split}" + (" (none's)" if cal.from_none else ""))
        (out_dir / "calibration.json").write_text(json.dumps(
            {"split": cal.split, "clips": len(val), "encoder": encoder.name, "settings": calibration}, indent=2) + "\n")
    clips = _clips(datamodule, cfg.split, cfg.num_clips)
    replies = {}  # before streaming: a clip that cannot be cut fails at once
    if cfg.restart_replies and datamodule.restart_len:
        replies = replies_after_restarts(generator, clips, datamodule.restart_len, datamodule.restarts, store)
        summary = {"split": cfg.split, "clips": len(clips), "restart_len": datamodule.restart_len, **replies}
        (out_dir / "replies_after_restarts.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("replies said teacher-forced (%s split, cut at %d tokens): %s", cfg.split, datamodule.restart_len,
                 ", ".join(f"{k} {v['accuracy']:.3f} of {v.get('replies', v.get('summaries'))}"
                           for k, v in replies.items()))
    results = evaluate(generator, clips, settings, encoder, thresholds, window, desc=f"streaming {cfg.split}",
                       store=store, batch_size=cfg.stream.batch_size)
    report = {s: {**r.metrics, "speaking_threshold": r.thresholds[0], "dst_update_threshold": r.thresholds[1],
                  "thresholds_from": thresholds_from[s], "encoder": encoder.name, "split": cfg.split,
                  "checkpoint": cfg.ckpt_path}
              for s, r in results.items()}
    (out_dir / "eval_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    save_metrics_csv(report, out_dir / "eval_metrics.csv")
    tradeoff, tradeoff_plot = save_tradeoff(report, out_dir / "tradeoff.csv", out_dir / "plots" / "tradeoff.png")
    save_dialog_csv(results, out_dir / "dialog.csv")
    plots = save_plots(results, out_dir / "plots", cfg.max_plots)
    if cfg.get("logger"):
        logger = instantiate(cfg.logger)
        logger.log_metrics({f"eval/{s}/{k}": v for s, m in report.items() for k, v in m.items()
                            if isinstance(v, int | float)}
                           | {f"eval/replies_after_restarts/{k}": v["accuracy"] for k, v in replies.items()})
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update({"encoder": encoder.name, "eval": OmegaConf.to_container(cfg)})
            log_to_wandb(logger, results, plots, "eval")
            logger.log_table("eval/tradeoff", columns=TRADEOFF_COLUMNS,
                             data=[[r[c] for c in TRADEOFF_COLUMNS] for r in tradeoff])
            logger.log_image("eval/tradeoff_plot", [str(tradeoff_plot)])
            logger.experiment.finish()
        else:
            logger.save()
    log.info("%s split, %d clips, encoder %s, thresholds %s:\n%s", cfg.split, len(clips), encoder.name,
             " / ".join(dict.fromkeys(thresholds_from.values())),
             metrics_table(report, keys=("speaking_threshold", "dst_update_threshold", *_TABLE)))
    for s, m in report.items():
        if "does_not_fit" in m:
            log.warning("%s does not fit: %s", s, m["does_not_fit"])
    return report


def _uncalibrated_thresholds(generator: StreamingGenerator, settings: list[str], configured: tuple[float, float],
                             use_stored: bool) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """Each setting's thresholds without calibration, and where they come from: an exported model's stored ones
    for the settings it stores (when `use_stored`: eval.yaml's stored_thresholds), else `configured`."""
    stored = generator.stored_thresholds if use_stored else {}
    thresholds, sources = {}, {}
    for s in settings:
        if s in stored:
            thresholds[s], sources[s] = (stored[s]["speaking"], stored[s]["dst_update"]), "exported model"
        else:
            thresholds[s], sources[s] = configured, "config"
    return thresholds, sources


def stream_settings(stream: DictConfig) -> list[str]:
    """The settings eval.py streams: with `stream.strategies`, `none` and each of them at each budget of
    `stream.budgets` (sweep_settings; `stream.settings` is then ignored), else `stream.settings`."""
    strategies, budgets = stream.get("strategies"), stream.get("budgets")
    if bool(strategies) != bool(budgets):
        raise ValueError("a sweep takes both stream.strategies (e.g. [drop_middle,attention_scored]) and "
                         f"stream.budgets (e.g. [256,512,1k,2k]); got strategies={strategies}, budgets={budgets}")
    return sweep_settings(strategies, budgets) if strategies else list(stream.settings)


_TABLE = ("f1", "precision", "recall", "bleu4", "meteor", "cider", "step_naming_accuracy", "turn_type_accuracy",
          "time_diff", "dst_f1", "dst_state_accuracy", "ms_per_frame", "peak_cache_tokens", "compressions",
          "frames_beyond_max_positions", "repeated_reply_rate", "longest_repeat_run", "capped_reply_rate")


def _generator(cfg: DictConfig) -> tuple[StreamingGenerator, dict]:
    """The generator and the data config: a checkpoint brings its model and, unless `data` is given, its data."""
    stream = cfg.stream
    kwargs = {"max_new_tokens": stream.max_new_tokens, "max_summary_tokens": stream.max_summary_tokens,
              "do_sample": stream.do_sample, "device": pick_device(cfg.device)}
    if cfg.ckpt_path:
        generator = StreamingGenerator.from_pretrained(cfg.ckpt_path, **kwargs)
        data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else generator.run_config["data"]
        return generator, data
    if not cfg.get("data"):
        raise ValueError("without ckpt_path, give the data to evaluate on (data=synthetic, data=clips ...)")
    generator = StreamingGenerator.untrained_from_config(OmegaConf.to_container(cfg.model, resolve=True), **kwargs)
    return generator, OmegaConf.to_container(cfg.data, resolve=True)


def _clips(datamodule, split: str, num_clips: int | None) -> list:
    clips = datamodule.videos(split)
    return clips[:num_clips] if num_clips else clips
