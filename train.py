"""Train a proactive streaming assistant: `python train.py +experiment=perframe` (see README)."""

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from prospect.train import train

# conf/paths: data, models and outputs under this folder, whatever the working directory (or under PROSPECT_ROOT)
if not os.environ.get("PROSPECT_ROOT"):
    os.environ["PROSPECT_ROOT"] = str(Path(__file__).resolve().parent)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    out = metrics["output_dir"]
    logs = "wandb" if cfg.logger and "wandb" in cfg.logger._target_.lower() else "csv"
    logging.getLogger(__name__).info(
        f"run directory: {out}\n  metrics:     {out}/metrics.json\n  checkpoint:  {metrics['checkpoint']}"
        f"\n  plots:       {out}/plots\n  logs:        {out}/{logs}")
    # the value Hydra sweepers optimise: its best epoch when it is the checkpoint monitor
    return metrics.get(f"best/{cfg.optimized_metric}", metrics.get(cfg.optimized_metric))


if __name__ == "__main__":
    main()
