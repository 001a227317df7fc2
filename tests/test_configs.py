"""The SLURM launcher and the Optuna search compose from the real configs and resolve to what the plugins need
(nothing is submitted and no trial runs here)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).parents[1] / "conf"


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_follows_the_trainer():
    cfg = compose_with_hydra(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                              "+experiment=perframe", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    # Lightning's SLURMEnvironment wants one task per device and as many nodes as the trainer
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)
    # the plugin reads its fields at construction; this submits nothing
    params = instantiate(launcher).params
    assert params["tasks_per_node"] == 4 and params["nodes"] == 2 and params["partition"] == "gpu"


def test_slurm_launcher_with_a_single_device_trainer():
    launcher = compose_with_hydra(["hydra/launcher=slurm"]).hydra.launcher  # trainer=cpu has no num_nodes
    assert (launcher.tasks_per_node, launcher.nodes) == (1, 1)


def test_loss_weight_search_composes():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import LogUniformDistribution

    cfg = compose_with_hydra(["hparams_search=loss_weights", "+experiment=perframe"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/speaking_auroc"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and set(space) == {"loss.lm_weight", "loss.speaking_weight", "loss.dst_weight",
                                        "loss.dst_gen_weight"}
    assert all(isinstance(d, LogUniformDistribution) and d.low > 0 for d in space.values())
    for key in space:  # each searched key exists, so a trial's override changes the loss
        assert isinstance(OmegaConf.select(cfg, key), float), key


def test_trainer_configs_compose():
    from lightning.pytorch.strategies import FSDPStrategy

    for name, accelerator, precision in (("cpu", "cpu", "32-true"), ("gpu", "gpu", "bf16-mixed"),
                                         ("ddp", "gpu", "bf16-mixed"), ("fsdp", "gpu", "bf16-mixed")):
        trainer = compose_with_hydra([f"trainer={name}", "+experiment=perframe"]).trainer
        assert (trainer.accelerator, trainer.precision) == (accelerator, precision), name
    fsdp = compose_with_hydra(["trainer=fsdp"]).trainer
    assert isinstance(instantiate(fsdp.strategy), FSDPStrategy)


def test_real_model_configs_name_hub_ids():
    for name, hub in (("smolvlm2_256m", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"),
                      ("smolvlm2_500m", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
                      ("smolvlm2_2b", "HuggingFaceTB/SmolVLM2-2.2B-Instruct")):
        model = compose_with_hydra([f"model={name}"]).model
        assert model.backbone.source == hub and model.net.lora_r == 128 and model.net.lora_alpha == 256
        assert model.tokens_per_frame == 16
