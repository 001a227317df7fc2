"""Train a proactive streaming assistant: `python train.py +experiment=perframe` (see README)."""

import hydra
from omegaconf import DictConfig

from prospect.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    print(f"run directory: {metrics['output_dir']}")
    # the value Hydra sweepers optimise: its best epoch when it is the checkpoint monitor
    return metrics.get(f"best/{cfg.optimized_metric}", metrics.get(cfg.optimized_metric))


if __name__ == "__main__":
    main()
