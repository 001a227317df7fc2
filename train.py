"""Train a proactive streaming assistant: `python train.py +experiment=perframe` (see README)."""

import hydra
from omegaconf import DictConfig

from prospect.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    print(f"run directory: {metrics['output_dir']}")
    return metrics.get("val/speaking_auroc")  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
