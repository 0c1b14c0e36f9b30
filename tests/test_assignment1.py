"""Assignment 1: its config, a short real training run, determinism and the script's smoke mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch

from assignments.assignment1 import (
    PRESETS,
    Assignment1Config,
    build_datamodule,
    build_model,
    resolve_precision,
)
from assignments.config import parse_config, save_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_NET = {"widths": (16, 32, 64), "stem_channels": 8}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet_trainer(**kwargs: object) -> L.Trainer:
    options: dict[str, object] = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True,
        "num_sanity_val_steps": 0}
    options.update(kwargs)
    return L.Trainer(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("network", ["fast", "convnet"])
def test_unset_options_take_the_network_preset(network: str) -> None:
    config = Assignment1Config(network=network)

    for key, value in PRESETS[network].items():
        assert getattr(config, key) == value


def test_command_line_and_yaml_override_presets(tmp_path: Path) -> None:
    config = parse_config(Assignment1Config, "test", [
        "--network", "convnet", "--lr", "0.005", "--augment", "--widths", "8", "16"])
    save_config(config, tmp_path / "run.yaml")

    again = parse_config(Assignment1Config, "test", ["--config", str(tmp_path / "run.yaml")])

    assert config.lr == 0.005 and config.augment is True and config.optimizer == "sgd"
    assert config.widths == (8, 16)
    assert again == config


def test_bad_options_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_config(Assignment1Config, "test", ["--network", "resnet"])
    with pytest.raises(ValueError, match="lr must be positive"):
        Assignment1Config(lr=-1.0)


def test_auto_precision_is_float32_on_cpu() -> None:
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_quiz14_still_offers_the_shared_helpers() -> None:
    from assignments import quiz14
    from assignments.config import PRECISIONS, default_data_dir

    assert quiz14.PRECISIONS is PRECISIONS and quiz14.default_data_dir is default_data_dir


def test_short_training_on_real_images_beats_chance(cifar10_dir: Path) -> None:
    config = Assignment1Config(network="fast", data_dir=str(cifar10_dir), download=False,
                               train_subset=1_536, batch_size=64, epochs=2, lr=0.1,
                               widths=(8, 16, 32), stem_channels=8)
    L.seed_everything(0)
    datamodule = build_datamodule(config)
    model = build_model(config)
    trainer = quiet_trainer(max_epochs=config.epochs, limit_val_batches=0, limit_test_batches=1)

    trainer.fit(model, datamodule=datamodule)
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)

    # Ten balanced classes: chance is 0.10, with a standard deviation of 0.01 on the 1,000
    # test images scored here; 0.2 is far out of chance's reach.
    assert metrics["test/acc"] > 0.2, metrics


def test_same_seed_same_weights(cifar10_dir: Path) -> None:
    config = Assignment1Config(network="fast", data_dir=str(cifar10_dir), download=False,
                               train_subset=256, batch_size=32, epochs=1, **TINY_NET)

    def train() -> dict[str, torch.Tensor]:
        L.seed_everything(3)
        model = build_model(config)
        quiet_trainer(max_steps=4, limit_val_batches=0).fit(
            model, datamodule=build_datamodule(config))
        return model.state_dict()

    first, second = train(), train()

    assert all(torch.equal(first[k], second[k]) for k in first)


def test_script_smoke_mode_writes_run_and_report(cifar10_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("assignment1")
    report = tmp_path / "report"
    argv = ["--smoke", "--data-dir", str(cifar10_dir), "--no-download", "--runs-dir",
            str(tmp_path / "runs"), "--report-dir", str(report), "--batch-size", "32",
            "--widths", "16", "32", "64", "--stem-channels", "8", "--accelerator", "cpu"]

    assert script.main(argv) == 0

    out = capsys.readouterr().out
    assert "fast: test accuracy" in out and "JPEG" in out
    run_dir = tmp_path / "runs" / "assignment1" / "version_0"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    for name in ("curves.png", "confusion_matrix.png", "per_class_accuracy.md", "samples.png",
                 "results.md", "config.yaml", "best.ckpt"):
        assert (report / f"fast_{name}").is_file(), name
    results = (report / "fast_results.md").read_text()
    assert "Machine and versions" in results and "--smoke" in results and "JPEG" in results
    assert "airplane" in (report / "fast_per_class_accuracy.md").read_text()


def test_script_reports_missing_data_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("assignment1")

    code = script.main(["--data-dir", str(tmp_path), "--no-download", "--runs-dir",
                        str(tmp_path / "runs"), "--accelerator", "cpu"])

    assert code == 2
    assert "CIFAR-10 folder" in capsys.readouterr().err


def test_benchmark_throughput_counts_images_after_warmup() -> None:
    from assignments.assignment1_benchmark import images_per_second

    ends = [(10.0, 256), (11.0, 256), (13.0, 256), (15.0, 128)]

    # Batches 2 to 4 (640 images) run from the end of the warm-up batch (10 s) to 15 s.
    assert images_per_second(ends, warmup=1) == pytest.approx(640 / 5.0)
    with pytest.raises(ValueError, match="warmup"):
        images_per_second(ends, warmup=4)


@pytest.mark.parametrize("speed,expected", [
    (50.0, (1, 29_952)), (300.0, (4, None)), (0.1, (1, 1_024))],
    ids=["part-of-an-epoch", "whole-epochs", "at-least-four-batches"])
def test_benchmark_budget_plan_fits_the_measured_speed(speed: float, expected: tuple) -> None:
    from assignments.assignment1_benchmark import plan_budget

    assert plan_budget(speed, 600, 45_000, 256, overhead=0.0) == expected
