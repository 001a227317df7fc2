"""Evaluate a checkpoint by streaming: `python eval.py ckpt_path=PATH stream.settings=[none,drop_middle_1k]`
(see README, Evaluation)."""

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from prospect.evaluate import run_eval

# conf/paths: data, models and outputs under this folder, whatever the working directory (or under PROSPECT_ROOT)
if not os.environ.get("PROSPECT_ROOT"):
    os.environ["PROSPECT_ROOT"] = str(Path(__file__).resolve().parent)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_eval(cfg)
    logging.getLogger(__name__).info(
        f"written to {cfg.paths.output_dir}: eval_metrics.json, eval_metrics.csv, dialog.csv, plots/")


if __name__ == "__main__":
    main()
