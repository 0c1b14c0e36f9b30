"""Assignment 1: build a CIFAR-10 image classifier.

Two networks are compared. The baseline is the Quiz 14 family (unpadded convolutions, then
dense layers) sized for 3 x 32 x 32 input; without batch norm, pooling or augmentation it
overfits and stays far from the state of the art. The fast network follows the public
CIFAR-10 speed records: conv-BN-GELU blocks with pooling, trained with SGD and Nesterov
momentum under a linear warm-up and decay, label smoothing, random crop and flip of whole
batches, and flip test-time augmentation.

The CIFAR-10 copy in ``../shared/data`` was JPEG-compressed (quality 75) before it reached
us, so accuracies measured on it are close to, not equal to, those on the official pixels.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch

from assignments.config import PRECISIONS, default_data_dir, option, save_config
from assignments.reporting import markdown_table, plot_curves, write_prediction_figures
from assignments.training import RunResult, environment_summary, fit_and_test
from data_modules.augment import PAD_MODES
from data_modules.cifar10 import CIFAR10DataModule
from lightning_modules.classifier import LOSSES, LR_SCHEDULES, OPTIMIZERS, ImageClassifier
from lightning_modules.fast_net import count_parameters
from lightning_modules.networks import ACTIVATIONS, INITS, feature_map_size

log = logging.getLogger(__name__)

T = TypeVar("T")

NETWORK_CHOICES = ("fast", "convnet")
JPEG_NOTE = ("The CIFAR-10 copy in ../shared/data was JPEG-compressed (quality 75) before it "
             "reached us: figures measured on it are close to, not equal to, those on the "
             "official pixels.")

# Training settings that suit each network; a field left at None takes its network's value.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "activation": "gelu", "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "label_smoothing": 0.2, "lr_schedule": "linear",
        "flip_tta": True, "augment": True, "batch_size": 512, "epochs": 10,
    },
    "convnet": {
        "activation": "relu", "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
        "nesterov": False, "weight_decay": 0.0, "label_smoothing": 0.0,
        "lr_schedule": "constant", "flip_tta": False, "augment": False, "batch_size": 64,
        "epochs": 10,
    },
}


@dataclass
class Assignment1Config:
    """Everything that defines an Assignment 1 run; each field is a command-line option.

    Fields left at ``None`` take the value that suits the chosen network (see ``PRESETS``).
    """

    network: str = option("fast", "network to train", NETWORK_CHOICES)
    activation: str | None = option(None, "activation (fast: gelu, convnet: relu)", ACTIVATIONS)
    conv_channels: tuple[int, ...] = option((6, 32, 64, 16), "convnet: filters of each conv")
    dense_units: tuple[int, ...] = option((256, 64), "convnet: units of each hidden dense layer")
    pool: bool = option(False, "convnet: 2 x 2 max pooling after each convolution")
    init: str = option("default", "convnet: weight initialisation", INITS)
    widths: tuple[int, ...] = option((64, 256, 256), "fast: channels of each pooled block")
    stem_channels: int = option(24, "fast: channels of the stem convolution")
    depth: int = option(2, "fast: convolutions per block")
    loss: str = option("cross_entropy", "training loss", LOSSES)
    optimizer: str | None = option(None, "optimizer (both: sgd)", OPTIMIZERS)
    lr: float | None = option(None, "peak learning rate (fast: 0.2, convnet: 0.02)")
    momentum: float | None = option(None, "momentum of SGD and RMSprop (0.9)")
    nesterov: bool | None = option(None, "Nesterov momentum (fast: on, convnet: off)")
    weight_decay: float | None = option(None, "L2 penalty (fast: 5e-4, convnet: 0)")
    label_smoothing: float | None = option(None, "label smoothing (fast: 0.2, convnet: 0)")
    lr_schedule: str | None = option(
        None, "learning-rate schedule (fast: linear, convnet: constant)", LR_SCHEDULES)
    warmup_fraction: float = option(0.2, "fraction of the steps spent warming up")
    flip_tta: bool | None = option(None, "average each test image with its mirror image")
    augment: bool | None = option(None, "random crop and flip of training batches")
    crop_padding: int = option(2, "largest random shift of the crop, in pixels")
    pad_mode: str = option("reflect", "how the shifted-in border is filled", PAD_MODES)
    epochs: int | None = option(None, "training epochs (10)")
    batch_size: int | None = option(None, "images per training batch (fast: 512, convnet: 64)")
    seed: int = option(0, "seed of weights, shuffling, augmentation and everything random")
    split_seed: int = option(0, "seed of the 45,000 / 5,000 train/validation split")
    train_subset: int | None = option(None, "train on only this many images (none: all)")
    val_subset: int | None = option(None, "validate on only this many images (none: all)")
    data_dir: str = option(default_data_dir(),
                           "folder holding cifar-10-batches-py: $DATA_DIR when set, else ./data")
    download: bool = option(True, "download CIFAR-10 from the official address if missing")
    num_workers: int = option(0, "data loader worker processes")
    accelerator: str = option("auto", "cpu, gpu or auto (a GPU when there is one)")
    precision: str = option(
        "auto", "numeric precision; auto: bf16-mixed on a GPU that has bf16, else 32-true",
        ("auto", *PRECISIONS))
    channels_last: bool = option(False, "channels-last memory format for convolutions")
    fused: bool = option(False, "fused optimizer kernel")
    deterministic: bool = option(True, "deterministic algorithms only")
    runs_dir: str = option("runs", "folder of TensorBoard runs and checkpoints")
    name: str = option("assignment1", "sub-folder of runs_dir for these runs")
    report_dir: str | None = option(
        None, "also copy the figures, results and best checkpoint here "
        "(e.g. assignments/reports/assignment1)")
    smoke: bool = option(False, "a few batches of everything, to test the pipeline")

    def __post_init__(self) -> None:
        if self.network not in PRESETS:
            raise ValueError(f"unknown network {self.network!r}; choose one of {NETWORK_CHOICES}")
        for key, value in PRESETS[self.network].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for name in ("epochs", "batch_size", "depth", "stem_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is None or self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be 0 or more, got {self.crop_padding}")
        self.conv_channels = tuple(self.conv_channels)
        if self.network == "convnet":
            shape = CIFAR10DataModule.image_shape
            feature_map_size(shape, len(self.conv_channels), pool=self.pool)
        self.dense_units = tuple(self.dense_units)
        self.widths = tuple(self.widths)


def preset_value(value: T | None, name: str) -> T:
    """A field that ``Assignment1Config`` filled from its network's preset when it was built.

    Raises:
        ValueError: The field is None, which it is only if set so after the config was built.
    """
    if value is None:
        raise ValueError(f"{name} is None; building an Assignment1Config fills it from its "
                         "network's preset")
    return value


def resolve_precision(precision: str, accelerator: str) -> str:
    """Turns ``auto`` into ``bf16-mixed`` on a bf16-capable GPU and ``32-true`` elsewhere.

    On CPUs without AMX (the AMD EPYC machines of this course) bf16 autocast was measured
    about nine times slower than float32, so ``auto`` never picks it on a CPU.
    """
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def build_datamodule(config: Assignment1Config) -> CIFAR10DataModule:
    batch_size = preset_value(config.batch_size, "batch_size")
    return CIFAR10DataModule(
        data_dir=config.data_dir,
        batch_size=batch_size,
        # A smoke run evaluates a few training-sized batches; a real run evaluates in thousands.
        eval_batch_size=batch_size if config.smoke else max(batch_size, 1000),
        split_seed=config.split_seed,
        train_subset=config.train_subset,
        val_subset=config.val_subset,
        download=config.download,
        num_workers=config.num_workers,
        augment=preset_value(config.augment, "augment"),
        crop_padding=config.crop_padding,
        pad_mode=config.pad_mode,
    )


def network_spec(config: Assignment1Config) -> dict[str, Any]:
    """The ``network`` argument of :class:`ImageClassifier` for the configured network."""
    shape = CIFAR10DataModule.image_shape
    if config.network == "convnet":
        return {"name": "convnet", "in_shape": shape, "conv_channels": config.conv_channels,
                "dense_units": config.dense_units, "pool": config.pool, "num_classes": 10,
                "activation": config.activation, "init": config.init}
    return {"name": "fast", "in_shape": shape, "num_classes": 10,
            "stem_channels": config.stem_channels, "widths": config.widths,
            "depth": config.depth, "activation": config.activation}


def build_model(config: Assignment1Config) -> ImageClassifier:
    settings = ("loss", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
                "label_smoothing", "lr_schedule", "warmup_fraction", "fused", "channels_last",
                "flip_tta")
    return ImageClassifier(network=network_spec(config),
                           **{name: getattr(config, name) for name in settings})


def results_markdown(config: Assignment1Config, result: RunResult, command: str) -> str:
    """The hand-in results table of one run, with machine, versions and command."""
    m = result.metrics
    table = markdown_table(
        ["network", "test accuracy", "test loss", "best val accuracy", "epochs", "fit s",
         "train images/s", "weights"],
        [(config.network, m["test/acc"], m["test/loss"], m["val/acc_best"],
          len(result.history), f"{result.fit_seconds:.0f}",
          f"{result.train_images_per_second:.0f}", result.extras.get("parameters", ""))])
    return (
        f"# Assignment 1: {config.network} network on CIFAR-10\n\n{table}\n"
        f"Machine and versions: {environment_summary()}.\n\n"
        f"Precision {result.extras.get('precision')}, optimizer {config.optimizer}, "
        f"lr {config.lr} ({config.lr_schedule}), batch {config.batch_size}, "
        f"augment {config.augment}, flip TTA {config.flip_tta}, seed {config.seed}"
        f"{', smoke run' if config.smoke else ''}.\n\n"
        f"Command: `{command}`\n\n{JPEG_NOTE}\n"
    )


def train_and_test(config: Assignment1Config, progress_bar: bool = True,
                   command: str | None = None) -> RunResult:
    """Trains the configured network on CIFAR-10, tests it and writes the hand-in outputs.

    The run folder receives TensorBoard events, the best checkpoint, ``config.yaml``,
    ``curves.png``, ``confusion_matrix.png``, ``per_class_accuracy.md``, ``samples.png`` and
    ``results.md``. With ``report_dir`` set, the figures, results and best checkpoint are
    also copied there, prefixed with the network's name.

    Args:
        config: The run's settings.
        progress_bar: Show Lightning's progress bar.
        command: The command line to quote in ``results.md``; defaults to ``sys.argv``.

    Returns:
        The run's result; ``extras`` holds ``parameters``, ``precision`` and ``report_dir``.
    """
    L.seed_everything(config.seed, workers=True)
    precision = resolve_precision(config.precision, config.accelerator)
    datamodule = build_datamodule(config)
    model = build_model(config)
    result = fit_and_test(
        model, datamodule, max_epochs=preset_value(config.epochs, "epochs"),
        runs_dir=config.runs_dir, name=config.name, accelerator=config.accelerator,
        precision=precision, deterministic=config.deterministic, smoke=config.smoke,
        progress_bar=progress_bar,
    )
    result.extras.update(parameters=count_parameters(model.net), precision=precision)
    run_dir = result.run_dir
    save_config(config, run_dir / "config.yaml")
    plot_curves({config.network: result.history}, run_dir / "curves.png")
    assert result.predictions is not None and datamodule.test_set is not None
    write_prediction_figures(result.predictions, datamodule.test_set.images,
                             datamodule.test_set.labels, datamodule.classes, run_dir)
    command = command or shlex.join(["python", *sys.argv])
    (run_dir / "results.md").write_text(results_markdown(config, result, command))
    if config.report_dir:
        report_dir = Path(config.report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in ("curves.png", "confusion_matrix.png", "per_class_accuracy.md",
                     "samples.png", "results.md", "config.yaml"):
            shutil.copyfile(run_dir / name, report_dir / f"{config.network}_{name}")
        if result.checkpoint is not None:
            shutil.copyfile(result.checkpoint, report_dir / f"{config.network}_best.ckpt")
        result.extras["report_dir"] = report_dir
    log.info("Assignment 1 run written to %s", run_dir)
    return result
