"""The evaluation job behind `python eval.py`: stream a data split through a checkpoint (or a plain backbone,
zero-shot) at each compression setting, optionally with thresholds calibrated on the validation split, and
write eval_metrics.json (keyed by setting), eval_metrics.csv, dialog.csv, calibration.json and plots."""

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
    log_to_wandb,
    metrics_table,
    save_dialog_csv,
    save_metrics_csv,
    save_plots,
)
from prospect.eval.streaming import calibrate, evaluate
from prospect.model.features import open_feature_store
from prospect.stream.generator import StreamingGenerator, pick_device, stream_dtype

log = logging.getLogger(__name__)


def run_eval(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Returns {setting: metrics} as written to eval_metrics.json."""
    out_dir = Path(cfg.paths.output_dir)
    generator, data_cfg = _generator(cfg)
    datamodule = instantiate(data_cfg)
    with FileLock(str(Path(data_cfg["root"]).parent / ".prospect-prepare.lock")):
        datamodule.prepare_data()
    encoder = load_encoder(cfg.encoder, cfg.paths.models_dir)
    # None: frames are encoded (opened on the float32 model, whose fingerprint the store records)
    store = open_feature_store(datamodule.feature_store, generator.model, generator.tokens_per_frame)
    generator.to(dtype=stream_dtype(cfg.stream.dtype))
    settings = list(cfg.stream.settings)
    window = tuple(cfg.window) if cfg.window else None
    thresholds: Any = (cfg.stream.speaking_threshold, cfg.stream.dst_update_threshold)
    calibration = None
    if cfg.calibrate:
        cal = cfg.calibration
        val = _clips(datamodule, cal.split, cal.num_clips)
        calibration = calibrate(generator, val, settings, encoder, list(cal.speaking), list(cal.dst_update), thresholds,
                                window, store, cfg.stream.batch_size)
        thresholds = {s: c["thresholds"] for s, c in calibration.items()}
        (out_dir / "calibration.json").write_text(json.dumps(
            {"split": cal.split, "clips": len(val), "encoder": encoder.name, "settings": calibration}, indent=2) + "\n")
    clips = _clips(datamodule, cfg.split, cfg.num_clips)
    results = evaluate(generator, clips, settings, encoder, thresholds, window, desc=f"streaming {cfg.split}",
                       store=store, batch_size=cfg.stream.batch_size)
    report = {s: {**r.metrics, "speaking_threshold": r.thresholds[0], "dst_update_threshold": r.thresholds[1],
                  "thresholds_from": f"calibrated on {cfg.calibration.split}" if calibration else "config",
                  "encoder": encoder.name, "split": cfg.split, "checkpoint": cfg.ckpt_path}
              for s, r in results.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    save_metrics_csv(report, out_dir / "eval_metrics.csv")
    save_dialog_csv(results, out_dir / "dialog.csv")
    plots = save_plots(results, out_dir / "plots", cfg.max_plots)
    if cfg.get("logger"):
        logger = instantiate(cfg.logger)
        logger.log_metrics({f"eval/{s}/{k}": v for s, m in report.items() for k, v in m.items()
                            if isinstance(v, int | float)})
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update({"encoder": encoder.name, "eval": OmegaConf.to_container(cfg)})
            log_to_wandb(logger, results, plots, "eval")
            logger.experiment.finish()
        else:
            logger.save()
    log.info("%s split, %d clips, encoder %s%s:\n%s", cfg.split, len(clips), encoder.name,
             f", thresholds calibrated on {cfg.calibration.split}" if calibration else "",
             metrics_table(report, keys=("speaking_threshold", "dst_update_threshold", *_TABLE)))
    return report


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
