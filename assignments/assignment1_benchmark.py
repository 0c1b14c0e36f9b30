"""Assignment 1 benchmarks: pipeline overhead, and test accuracy under a fixed time budget.

Throughput compares the fast network trained by our Lightning pipeline (``ImageClassifier``
with ``CIFAR10DataModule``) with a plain PyTorch loop over the same network, initial weights,
batches, augmentation, loss, optimizer and schedule, in the same process; runs alternate so
that both see the same machine load. The time budget trains each network with as many
images as its measured speed allows in the budget, then tests it on the full test set.

Every figure comes from the CIFAR-10 copy in ``../shared/data``, which was JPEG-compressed
before it reached us; accuracies on it are close to, not equal to, those on the official files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import statistics
import time
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from assignments.assignment1 import (
    Assignment1Config,
    build_datamodule,
    build_model,
    network_spec,
    preset_value,
    resolve_precision,
    train_and_test,
)
from assignments.config import PrecisionName
from data_modules.cifar10 import CIFAR10DataModule
from lightning_modules.networks import build_network

log = logging.getLogger(__name__)


class BatchClock(Callback):
    """Records the end time and size of every training batch."""

    def __init__(self) -> None:
        self.ends: list[tuple[float, int]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append((time.perf_counter(), len(batch[1])))


def images_per_second(ends: list[tuple[float, int]], warmup: int) -> float:
    """Steady-state throughput: images of the batches after ``warmup``, over their wall time.

    The interval runs from the end of the last warm-up batch to the end of the last batch, so
    it includes everything between batches: loading, transfer, augmentation and logging.
    """
    if len(ends) <= warmup or warmup < 1:
        raise ValueError(f"need more than warmup={warmup} (at least 1) timed batches")
    images = sum(n for _, n in ends[warmup:])
    return images / (ends[-1][0] - ends[warmup - 1][0])


def lightning_throughput(config: Assignment1Config, datamodule: CIFAR10DataModule,
                         state: dict[str, torch.Tensor], batches: int, warmup: int) -> float:
    """Images per second of ``batches`` training steps through the Lightning pipeline."""
    L.seed_everything(config.seed, verbose=False)
    model = build_model(config)
    model.net.load_state_dict(state)
    clock = BatchClock()
    precision = resolve_precision(config.precision, config.accelerator)
    trainer = L.Trainer(
        accelerator=config.accelerator, devices=1, precision=cast(PrecisionName, precision),
        deterministic=config.deterministic, max_epochs=1, limit_train_batches=batches,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
    )
    trainer.fit(model, datamodule=datamodule)
    return images_per_second(clock.ends, warmup)


def plain_throughput(config: Assignment1Config, datamodule: CIFAR10DataModule,
                     state: dict[str, torch.Tensor], batches: int, warmup: int) -> float:
    """Images per second of the same training steps written as a plain PyTorch loop."""
    if config.optimizer != "sgd":
        raise ValueError("the plain loop mirrors the SGD optimizer only")
    if resolve_precision(config.precision, config.accelerator) != "32-true":
        raise ValueError("the plain loop runs in float32 only")
    L.seed_everything(config.seed, verbose=False)
    torch.use_deterministic_algorithms(config.deterministic)
    device = torch.device("cuda" if config.accelerator in ("auto", "gpu", "cuda")
                          and torch.cuda.is_available() else "cpu")
    net = build_network(**network_spec(config))
    net.load_state_dict(state)
    net.to(device).train()
    if config.channels_last:
        # Module.to takes memory_format at run time; torch's overloads leave it out.
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    lr = preset_value(config.lr, "lr")
    label_smoothing = preset_value(config.label_smoothing, "label_smoothing")
    optimizer = torch.optim.SGD(net.parameters(), lr=lr,
                                momentum=preset_value(config.momentum, "momentum"),
                                nesterov=preset_value(config.nesterov, "nesterov"),
                                weight_decay=preset_value(config.weight_decay, "weight_decay"))
    scheduler = None
    if config.lr_schedule != "constant":
        linear = config.lr_schedule == "linear"
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=batches, pct_start=config.warmup_fraction,
            anneal_strategy="linear" if linear else "cos", cycle_momentum=not linear)
    ends: list[tuple[float, int]] = []
    for step, (images, labels) in enumerate(datamodule.train_dataloader()):
        if step == batches:
            break
        images, labels = images.to(device), labels.to(device)
        if datamodule.augment is not None:
            images = datamodule.augment(images)
        images = datamodule.normalize(images)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(images), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        ends.append((time.perf_counter(), len(labels)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images_per_second(ends, warmup)


def compare_throughput(config: Assignment1Config, batches: int = 12, warmup: int = 2,
                       repeats: int = 2) -> dict[str, Any]:
    """Measures both loops ``repeats`` times, alternating which goes first.

    Args:
        config: The network and training settings; ``train_subset`` is set here to cover
            ``batches`` batches.
        batches: Training batches per measurement.
        warmup: Batches excluded from the timing at the start of each measurement.
        repeats: Measurements of each loop.

    Returns:
        ``plain`` and ``lightning`` (images/s of each measurement), their medians, and
        ``ratio`` (Lightning median over plain median).
    """
    batch_size = preset_value(config.batch_size, "batch_size")
    config = dataclasses.replace(config, train_subset=batches * batch_size)
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    L.seed_everything(config.seed, verbose=False)
    state = copy.deepcopy(build_network(**network_spec(config)).state_dict())
    runs: dict[str, list[float]] = {"plain": [], "lightning": []}
    measure = {"plain": plain_throughput, "lightning": lightning_throughput}
    for repeat in range(repeats):
        order = ("plain", "lightning") if repeat % 2 == 0 else ("lightning", "plain")
        for kind in order:
            runs[kind].append(measure[kind](config, datamodule, state, batches, warmup))
            log.info("%s loop: %.1f images/s", kind, runs[kind][-1])
    plain, lightning = statistics.median(runs["plain"]), statistics.median(runs["lightning"])
    return {**runs, "plain_median": plain, "lightning_median": lightning,
            "ratio": lightning / plain}


def plan_budget(images_per_s: float, budget_s: float, train_images: int, batch_size: int,
                overhead: float = 0.15) -> tuple[int, int | None]:
    """Epochs and training subset that fit ``budget_s`` at a measured speed.

    A share ``overhead`` of the budget is kept for validation and per-epoch work. When less
    than one epoch fits, one epoch over the largest whole number of batches that fits (at
    least four) is planned.

    Returns:
        ``(epochs, train_subset)``; ``train_subset`` is None for the full training split.
    """
    images = images_per_s * budget_s * (1 - overhead)
    if images >= train_images:
        return int(images // train_images), None
    return 1, max(4 * batch_size, int(images // batch_size) * batch_size)


def budget_run(config: Assignment1Config, budget_minutes: float, calibration_images: int = 1024,
               command: str | None = None) -> dict[str, Any]:
    """Trains ``config``'s network for about ``budget_minutes``, then tests it.

    The speed is measured first with plain training steps over about ``calibration_images``
    images (at least four batches, after one untimed batch); the run then gets as many
    epochs (or, below one epoch, training images) as fit the budget at that speed. The
    run's hand-in outputs are written as by ``train_and_test``.

    Returns:
        The plan, measured speed, fit time and test metrics.
    """
    batch_size = preset_value(config.batch_size, "batch_size")
    calibration_batches = max(4, -(-calibration_images // batch_size))
    datamodule = build_datamodule(dataclasses.replace(
        config, train_subset=(calibration_batches + 1) * batch_size))
    datamodule.prepare_data()
    datamodule.setup("fit")
    L.seed_everything(config.seed, verbose=False)
    state = build_network(**network_spec(config)).state_dict()
    # The schedule does not change the speed; a constant rate also suits so few steps.
    speed = plain_throughput(dataclasses.replace(config, lr_schedule="constant"), datamodule,
                             state, calibration_batches + 1, 1)
    epochs, subset = plan_budget(speed, budget_minutes * 60, 50_000 - datamodule.val_size,
                                 batch_size)
    log.info("%s: %.1f images/s measured; planning %d epoch(s) over %s training images",
             config.network, speed, epochs, subset or "all")
    run_config = dataclasses.replace(config, epochs=epochs, train_subset=subset)
    result = train_and_test(run_config, progress_bar=False, command=command)
    return {
        "network": config.network, "calibrated_images_per_s": speed, "epochs": epochs,
        "train_images": subset or 50_000 - datamodule.val_size,
        "fit_seconds": result.fit_seconds, "test_acc": result.metrics["test/acc"],
        "test_loss": result.metrics["test/loss"], "val_acc_best": result.metrics["val/acc_best"],
        "parameters": result.extras["parameters"],
        "train_images_per_s": result.train_images_per_second, "run_dir": result.run_dir,
    }
