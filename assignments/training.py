"""Fitting and testing a LightningModule with the project's logging and checkpointing."""

from __future__ import annotations

import contextlib
import csv
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from assignments.config import PrecisionName
from data_modules.base import TensorImageDataModule
from lightning_modules.classifier import ImageClassifier

log = logging.getLogger(__name__)

# Trainer limits of a smoke run: enough batches to exercise every stage, seconds in all.
SMOKE_LIMITS: dict[str, Any] = {"limit_train_batches": 4, "limit_val_batches": 2,
                                "limit_test_batches": 2, "limit_predict_batches": 2}


class EpochHistory(Callback):
    """Records each epoch's logged metrics and the time spent in training batches."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0
        self._batch_start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._batch_start
        self.train_images += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1}  # an int in the CSV
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith(("train/", "val/"))})
        self.epochs.append(row)


@dataclass
class RunResult:
    """What one fit-and-test run produced."""

    run_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    history: list[dict[str, float]]
    fit_seconds: float
    train_images_per_second: float
    predictions: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def write_history(epochs: list[dict[str, float]], path: Path) -> None:
    """Writes per-epoch metrics as CSV, one row per epoch, for spreadsheets and plots."""
    columns = sorted({key for row in epochs for key in row}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(epochs)


def environment_summary() -> str:
    """One line naming the machine and the versions that produced a figure."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # No /proc/cpuinfo off Linux.
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"{cpu}, {torch.get_num_threads()} threads")
    return (f"{device}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"lightning {L.__version__}")


def fit_and_test(
    model: ImageClassifier,
    datamodule: TensorImageDataModule,
    *,
    max_epochs: int,
    runs_dir: str | Path,
    name: str,
    accelerator: str = "auto",
    precision: str = "32-true",
    deterministic: bool = True,
    smoke: bool = False,
    predict: bool = True,
    progress_bar: bool = True,
) -> RunResult:
    """Trains ``model``, tests its best checkpoint and optionally predicts the test set.

    The caller seeds (``L.seed_everything``) before building the model and data module. The
    run writes TensorBoard events, hyperparameters and the best checkpoint (by ``val/acc``)
    into a new ``runs_dir/name/version_N`` folder.

    Args:
        model: The LightningModule to train.
        datamodule: The data to train, validate and test on.
        max_epochs: Training epochs.
        runs_dir: Root folder of all runs.
        name: Sub-folder of this kind of run.
        accelerator: Lightning accelerator (``auto`` picks a GPU when there is one).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``).
        deterministic: Use deterministic algorithms only.
        smoke: Run a few batches of each stage, for tests.
        predict: Also return the predicted class of every test image.
        progress_bar: Show Lightning's progress bar.

    Returns:
        The run's folder, best checkpoint, test and best validation metrics, per-epoch
        history, fit time and training throughput.
    """
    # Bad or missing data fails here, before a run folder is made for it.
    datamodule.prepare_data()
    datamodule.setup("fit")
    logger = TensorBoardLogger(save_dir=str(Path(runs_dir).resolve()), name=name,
                               default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                                 monitor="val/acc", mode="max", save_last=False)
    history = EpochHistory()
    trainer = L.Trainer(
        max_epochs=1 if smoke else max_epochs,
        accelerator=accelerator,
        devices=1,
        precision=cast(PrecisionName, precision),
        deterministic=deterministic,
        logger=logger,
        callbacks=[checkpoint, history],
        enable_progress_bar=progress_bar,
        enable_model_summary=True,
        num_sanity_val_steps=0 if smoke else 2,
        log_every_n_steps=10,
        **(SMOKE_LIMITS if smoke else {}),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    best = checkpoint.best_model_path or None
    (test_metrics,) = trainer.test(model, datamodule=datamodule,
                                   ckpt_path="best" if best else None, verbose=False)
    metrics = {k: float(v) for k, v in test_metrics.items()}
    metrics["val/acc_best"] = float(checkpoint.best_model_score or float("nan"))
    model.log_hparams_with_metrics({"hp/val_acc": metrics["val/acc_best"],
                                    "hp/test_acc": metrics["test/acc"],
                                    "hp/test_loss": metrics["test/loss"]})
    predictions = None
    if predict:
        batches = trainer.predict(model, datamodule=datamodule, ckpt_path=None)
        predictions = torch.cat(batches).cpu()  # type: ignore[arg-type]
    write_history(history.epochs, run_dir / "history.csv")
    logger.finalize("success")
    log.info("Run written to %s", run_dir)
    return RunResult(
        run_dir=run_dir,
        checkpoint=Path(best) if best else None,
        metrics=metrics,
        history=history.epochs,
        fit_seconds=fit_seconds,
        train_images_per_second=history.train_images / max(history.train_seconds, 1e-9),
        predictions=predictions,
    )
