"""The training job behind `python train.py`: data, model, Lightning trainer, then test; writes metrics.json.

`train(cfg)` takes a composed Hydra config (conf/train.yaml) so tests run exactly what users run.
"""

from __future__ import annotations

import json
import os
import subprocess
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from prospect.data.datamodule import ProspectDataModule
from prospect.data.sequence import DEFAULT_SYSTEM_PROMPT, PROMPT_WORDS
from prospect.model.factory import build_model
from prospect.model.features import SampleFrames, open_feature_store
from prospect.model.lit_module import ProspectLitModule


def build(cfg: DictConfig) -> tuple[ProspectLitModule, ProspectDataModule]:
    """The LightningModule and DataModule a config describes (data generated, tiny model built if needed)."""
    datamodule = instantiate(cfg.data)
    with _lock(Path(cfg.data.root).parent / ".prospect-prepare.lock"):  # SLURM starts all ranks at once
        datamodule.prepare_data()
    corpus = None
    if cfg.model.backbone.source == "tiny":  # the tiny tokenizer learns the data's texts and our prompt's words
        prompt = cfg.model.system_prompt or DEFAULT_SYSTEM_PROMPT
        corpus = chain(datamodule.corpus(), [prompt], PROMPT_WORDS)  # read only if built
    with _lock(Path(cfg.model.backbone.tiny_dir).parent / ".prospect-tiny.lock"):
        net, tokenizer = build_model(cfg.model, corpus)
    if datamodule.feature_store and cfg.model.net.train_connector:
        raise ValueError(f"data.feature_store={datamodule.feature_store}: cached frame features need the connector "
                         "frozen (model.net.train_connector=false)")
    vlm, tokens_per_frame = net.vlm, cfg.model.tokens_per_frame
    store = open_feature_store(datamodule.feature_store, vlm, tokens_per_frame)
    frames = SampleFrames(vlm.config.vision_config.image_size, store)
    datamodule.attach(tokenizer, tokens_per_frame, frames, cfg.model.system_prompt,
                      max_positions=vlm.config.text_config.max_position_embeddings)
    module = ProspectLitModule(net, instantiate(cfg.loss), instantiate(cfg.optimizer),
                            instantiate(cfg.scheduler) if cfg.get("scheduler") else None, config=_run_config(cfg))
    return module, datamodule


def _run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config that checkpoints store, its local paths absolute: a checkpoint then loads (and eval.py
    finds its data) from any working directory."""
    config = OmegaConf.to_container(cfg, resolve=True)
    backbone, data = config["model"]["backbone"], config["data"]
    keys = [(backbone, "tiny_dir"), (data, "root"), (data, "frames_root"), (data, "feature_store")]
    if backbone["source"] != "tiny" and Path(backbone["source"]).is_dir():  # else a hub id
        keys.append((backbone, "source"))
    for section, key in keys:
        if section.get(key):
            section[key] = str(Path(section[key]).resolve())
    return config


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (unless train=false) and test (unless test=false); returns and writes the flat metrics."""
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    module, datamodule = build(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    logger = _logger(cfg)
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)

    ckpt_for_test = cfg.ckpt_path
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        best = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        ckpt_for_test = best.best_model_path if best else None
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.train and best is not None and best.best_model_score is not None:
        metrics[f"best/{best.monitor}"] = float(best.best_model_score)
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_for_test or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    if isinstance(logger, WandbLogger):  # close the run: the next job of a multirun must start its own
        logger.experiment.finish()
    metrics["checkpoint"] = str(ckpt_for_test) if ckpt_for_test else None
    metrics["output_dir"] = str(out_dir)
    if trainer.global_rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def _lock(path: Path) -> FileLock:
    """A lock file beside generated data, so concurrently started ranks generate it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def _logger(cfg: DictConfig):
    if not cfg.get("logger"):
        return False
    kwargs: dict[str, Any] = {}
    if cfg.logger._target_.endswith("WandbLogger"):
        kwargs = _wandb_run_settings(cfg)
    logger = instantiate(cfg.logger, **kwargs)
    if isinstance(logger, WandbLogger):
        logger.experiment.config.update({"prospect": OmegaConf.to_container(cfg, resolve=True),
                                         "git_commit": _git_commit()}, allow_val_change=True)
    else:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "git_commit": _git_commit()})
    return logger


def _wandb_run_settings(cfg: DictConfig) -> dict[str, Any]:
    """Offline without an API key; in a multirun, one run per job grouped by the sweep."""
    settings: dict[str, Any] = {}
    if cfg.logger.get("offline") is None:
        settings["offline"] = not _wandb_has_key()
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            settings["group"] = f"{cfg.task_name}-{Path(hc.sweep.dir).name}"
            settings["name"] = f"{hc.job.num}-{hc.job.override_dirname}"[:120]
    return settings


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
