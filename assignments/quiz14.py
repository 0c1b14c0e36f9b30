"""Quiz 14: an MNIST CNN with sigmoid everywhere stalls; the same network with relu learns.

The statement: build an MNIST classifier whose network has 4 convolution layers with 6, 32,
64 and 16 filters and 3 fully connected layers with 256, 64 and 10 units, with sigmoid
activation in all layers except the output layer. Train it and observe that the loss barely
improves; switch to relu and observe that it learns well within 10 epochs. Integer labels are
trained with (sparse categorical) cross-entropy against the 10-way output.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from assignments.config import ACCELERATORS, PRECISIONS, default_data_dir, save_config
from assignments.config import option as _option
from assignments.reporting import markdown_table, plot_curves, write_prediction_figures
from assignments.training import RunResult, environment_summary, fit_and_test
from data_modules.mnist import MNISTDataModule
from lightning_modules.classifier import LOSSES, OPTIMIZERS, ImageClassifier
from lightning_modules.networks import ACTIVATIONS, INITS, feature_map_size

log = logging.getLogger(__name__)

CONV_CHANNELS = (6, 32, 64, 16)
DENSE_UNITS = (256, 64)


@dataclass
class Quiz14Config:
    """Everything that defines a Quiz 14 run; each field is a command-line option."""

    activation: str = _option("sigmoid", "activation after every hidden layer", ACTIVATIONS)
    conv_channels: tuple[int, ...] = _option(CONV_CHANNELS, "filters of each convolution")
    dense_units: tuple[int, ...] = _option(DENSE_UNITS, "units of each hidden dense layer")
    pool: bool = _option(False, "2 x 2 max pooling after each convolution")
    init: str = _option("default", "weight initialisation (glorot is Keras's)", INITS)
    loss: str = _option("cross_entropy", "training loss", LOSSES)
    optimizer: str = _option("adam", "optimizer", OPTIMIZERS)
    lr: float = _option(1e-3, "learning rate")
    momentum: float = _option(0.0, "momentum of SGD and RMSprop")
    weight_decay: float = _option(0.0, "L2 penalty")
    epochs: int = _option(10, "training epochs")
    batch_size: int = _option(64, "images per training batch")
    seed: int = _option(0, "seed of weights, shuffling and everything random")
    split_seed: int = _option(0, "seed of the 55,000 / 5,000 train/validation split")
    train_subset: int | None = _option(None, "train on only this many images (none: all)")
    data_dir: str = _option(default_data_dir(), "MNIST folder: $DATA_DIR when set, else ./data")
    download: bool = _option(True, "download missing MNIST files from the official mirrors")
    num_workers: int = _option(0, "data loader worker processes")
    accelerator: str = _option("auto", "auto picks a GPU when there is one", ACCELERATORS)
    precision: str = _option("32-true", "numeric precision", PRECISIONS)
    channels_last: bool = _option(True, "channels-last memory format for convolutions")
    fused: bool = _option(False, "fused optimizer kernel")
    deterministic: bool = _option(True, "deterministic algorithms only")
    runs_dir: str = _option("runs", "folder of TensorBoard runs and checkpoints")
    name: str = _option("quiz14", "sub-folder of runs_dir for these runs")
    compare: tuple[str, ...] = _option(
        (), "train each of these activations under the same budget and compare them")
    report_dir: str | None = _option(
        None, "where the comparison figures go; unset: runs_dir/name/compare")
    jobs: int = _option(1, "compared runs trained side by side, each on cores / jobs threads")
    smoke: bool = _option(False, "a few batches of everything, to test the pipeline")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be at least 1, got {self.train_subset}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        for name in ("conv_channels", "dense_units"):
            if any(width < 1 for width in getattr(self, name)):
                raise ValueError(f"{name} must all be at least 1, got {getattr(self, name)}")
        unknown = [a for a in self.compare if a not in ACTIVATIONS]
        if unknown:
            raise ValueError(f"unknown activations {unknown}; choose from {sorted(ACTIVATIONS)}")
        self.conv_channels = tuple(self.conv_channels)
        self.dense_units = tuple(self.dense_units)
        feature_map_size(MNISTDataModule.image_shape, len(self.conv_channels), pool=self.pool)


def build_datamodule(config: Quiz14Config) -> MNISTDataModule:
    return MNISTDataModule(
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=max(config.batch_size, 1000),
        split_seed=config.split_seed,
        train_subset=config.train_subset,
        download=config.download,
        num_workers=config.num_workers,
    )


def build_model(config: Quiz14Config) -> ImageClassifier:
    network = {
        "name": "convnet",
        "in_shape": MNISTDataModule.image_shape,
        "conv_channels": config.conv_channels,
        "dense_units": config.dense_units,
        "pool": config.pool,
        "num_classes": 10,
        "activation": config.activation,
        "init": config.init,
    }
    return ImageClassifier(
        network=network, loss=config.loss, optimizer=config.optimizer, lr=config.lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
        fused=config.fused, channels_last=config.channels_last,
    )


def train_and_test(config: Quiz14Config, progress_bar: bool = True) -> RunResult:
    """Trains the configured network on MNIST, tests it and writes the run's figures.

    The run folder receives TensorBoard events, the best checkpoint, ``config.yaml``,
    ``curves.png``, ``confusion_matrix.png``, ``per_class_accuracy.md`` and ``samples.png``.
    """
    L.seed_everything(config.seed, workers=True)
    datamodule = build_datamodule(config)
    model = build_model(config)
    result = fit_and_test(
        model, datamodule, max_epochs=config.epochs, runs_dir=config.runs_dir,
        name=config.name, accelerator=config.accelerator, precision=config.precision,
        deterministic=config.deterministic, smoke=config.smoke, progress_bar=progress_bar,
    )
    save_config(config, result.run_dir / "config.yaml")
    plot_curves({config.activation: result.history}, result.run_dir / "curves.png")
    assert result.predictions is not None and datamodule.test_set is not None
    write_prediction_figures(result.predictions, datamodule.test_set.images,
                             datamodule.test_set.labels, datamodule.classes, result.run_dir)
    return result


def _train_with_threads(config: Quiz14Config, threads: int) -> RunResult:
    """Runs :func:`train_and_test` in a worker process limited to ``threads`` threads."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO)
    return train_and_test(config, progress_bar=False)


def compare_activations(config: Quiz14Config, out_dir: Path) -> dict[str, RunResult]:
    """Trains the network once per activation in ``config.compare`` under the same budget.

    With ``config.jobs > 1`` the runs train side by side in separate processes that share the
    machine's threads; each run is seeded alike, so its numbers do not depend on ``jobs``
    beyond the floating-point effects of the thread count.

    Writes ``comparison.png`` (loss and accuracy per epoch of every run) and
    ``comparison.md`` (final accuracies, machine, versions and command) into ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # One run folder per activation, so runs started together never race for a version.
    configs = {a: dataclasses.replace(config, activation=a, compare=(), name=f"{config.name}_{a}")
               for a in config.compare}
    if config.jobs == 1:
        results = {a: train_and_test(c) for a, c in configs.items()}
    else:
        threads = max(1, torch.get_num_threads() // config.jobs)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.jobs, mp_context=context) as pool:
            futures = {a: pool.submit(_train_with_threads, c, threads)
                       for a, c in configs.items()}
            results = {a: future.result() for a, future in futures.items()}
    plot_curves({a: r.history for a, r in results.items()}, out_dir / "comparison.png")
    rows = [
        (a, r.metrics["test/acc"], r.metrics["test/loss"], r.metrics["val/acc_best"],
         len(r.history), f"{r.fit_seconds:.0f}")
        for a, r in results.items()
    ]
    table = markdown_table(
        ["activation", "test accuracy", "test loss", "best val accuracy", "epochs", "fit s"],
        rows)
    (out_dir / "comparison.md").write_text(
        table + f"\nMachine and versions: {environment_summary()}.\n"
        f"Settings: optimizer {config.optimizer}, lr {config.lr}, momentum {config.momentum}, "
        f"init {config.init}, "
        f"batch {config.batch_size}, precision {config.precision}, channels-last "
        f"{config.channels_last}, {config.epochs} epochs, seed {config.seed}, "
        f"{config.jobs} run(s) side by side.\n"
    )
    return results
