"""The LightningModule that trains, validates and tests any network of ``networks.py``."""

from __future__ import annotations

from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

import lightning_modules.fast_net  # noqa: F401  (registers the "fast" network)
from lightning_modules.networks import build_network

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LOSSES = ("cross_entropy", "mse", "multi_margin")
LR_SCHEDULES = ("constant", "onecycle", "linear")
STAGES = ("train", "val", "test")


def classification_loss(
    name: str, logits: Tensor, labels: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Loss between logits (N x K) and integer labels (N) by name.

    ``cross_entropy`` is Keras's sparse categorical cross-entropy on logits; ``mse`` compares
    the softmax probabilities with one-hot targets; ``multi_margin`` is the multi-class hinge.
    """
    if name == "cross_entropy":
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if name == "mse":
        one_hot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return F.mse_loss(logits.softmax(dim=-1), one_hot)
    if name == "multi_margin":
        return F.multi_margin_loss(logits, labels)
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")


class ImageClassifier(L.LightningModule):
    """Trains an image classifier and logs its loss and accuracy to every logger.

    Metrics are logged as ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``val/acc_best``, ``test/loss`` and ``test/acc``, once per epoch. All constructor
    arguments are saved as hyperparameters, so a checkpoint rebuilds the run.

    Args:
        network: Keyword arguments of :func:`build_network`, with ``name`` choosing the network.
        loss: One of ``LOSSES``.
        optimizer: One of ``OPTIMIZERS``.
        lr: Learning rate (the peak rate under ``onecycle`` and ``linear``).
        momentum: Momentum of SGD and RMSprop.
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty passed to the optimizer.
        label_smoothing: Label smoothing of the cross-entropy loss.
        lr_schedule: ``constant``; ``onecycle`` over the whole fit (cosine warm-up and decay,
            momentum cycled); or ``linear``: a linear warm-up to ``lr`` over
            ``warmup_fraction`` of the steps, then a linear decay towards zero, with the
            optimizer's momentum left as set (the speed-record schedule).
        warmup_fraction: Fraction of the training steps spent warming up under ``onecycle``
            and ``linear``.
        fused: Use the optimizer's fused kernel (faster on recent CPUs and GPUs).
        channels_last: Run convolutions in the channels-last memory format.
        flip_tta: Average the logits of each image and its mirror image at evaluation.
    """

    def __init__(
        self,
        network: dict[str, Any] | None = None,
        loss: str = "cross_entropy",
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        lr_schedule: str = "constant",
        fused: bool = False,
        channels_last: bool = False,
        flip_tta: bool = False,
        warmup_fraction: float = 0.3,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("loss", loss, LOSSES),
            ("optimizer", optimizer, OPTIMIZERS),
            ("lr_schedule", lr_schedule, LR_SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 < warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie strictly between 0 and 1, got "
                             f"{warmup_fraction}")
        self.save_hyperparameters()
        self.net = build_network(**(network or {}))
        if channels_last:
            # Module.to takes memory_format at run time; torch's overloads leave it out.
            self.net = self.net.to(  # type: ignore[call-overload]
                memory_format=torch.channels_last)
        output = getattr(self.net, "output", None)
        self.num_classes = 10 if output is None else int(output.out_features)
        # Keyed "train_acc", "val_loss", ...: a ModuleDict may not use the key "train".
        self.epoch_metrics = nn.ModuleDict()
        for stage in STAGES:
            self.epoch_metrics[f"{stage}_acc"] = MulticlassAccuracy(
                self.num_classes, average="micro"
            )
            self.epoch_metrics[f"{stage}_loss"] = MeanMetric()
        self.val_acc_best = MaxMetric()

    def _epoch_metric(self, key: str) -> Metric:
        # A ModuleDict's items are typed as plain modules; every one of these is a Metric.
        return cast(Metric, self.epoch_metrics[key])

    def forward(self, images: Tensor) -> Tensor:
        if self.hparams["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        if stage != "train" and self.hparams["flip_tta"]:
            logits = (logits + self(images.flip(-1))) / 2
        loss = classification_loss(
            self.hparams["loss"], logits, labels, self.hparams["label_smoothing"]
        )
        mean_loss, accuracy = (self._epoch_metric(f"{stage}_{m}") for m in ("loss", "acc"))
        # update(), not forward(): only epoch values are logged, so no per-batch value is due.
        mean_loss.update(loss.detach(), weight=len(labels))
        accuracy.update(logits.detach(), labels)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch[0])
        if self.hparams["flip_tta"]:
            logits = (logits + self(batch[0].flip(-1))) / 2
        return logits.argmax(dim=-1)

    def on_train_start(self) -> None:
        # Validation during the sanity check must not count towards the best accuracy.
        self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self._epoch_metric("val_acc").compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.net.parameters()
        # None is the optimizers' default: they pick their implementation themselves.
        fused = True if hp["fused"] else None
        optimizer: torch.optim.Optimizer
        if hp["optimizer"] == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                                        nesterov=hp["nesterov"],
                                        weight_decay=hp["weight_decay"], fused=fused)
        elif hp["optimizer"] == "adam":
            optimizer = torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                         fused=fused)
        elif hp["optimizer"] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                          fused=fused)
        else:
            optimizer = torch.optim.RMSprop(params, lr=hp["lr"], momentum=hp["momentum"],
                                            weight_decay=hp["weight_decay"])
        if hp["lr_schedule"] == "constant":
            return optimizer
        linear = hp["lr_schedule"] == "linear"
        total_steps = int(self.trainer.estimated_stepping_batches)
        warmup = hp.get("warmup_fraction", 0.3)
        if linear and total_steps >= 3:
            # OneCycleLR divides by zero when a phase is a single step long: keep two
            # warm-up steps and one decay step however short the run.
            warmup = min(max(warmup, 2 / total_steps), 1 - 1 / total_steps)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp["lr"], total_steps=total_steps, pct_start=warmup,
            anneal_strategy="linear" if linear else "cos", cycle_momentum=not linear,
        )
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def log_hparams_with_metrics(self, metrics: dict[str, float]) -> None:
        """Writes the hyperparameters with final metrics, for TensorBoard's HPARAMS tab."""
        for logger in self.loggers:
            logger.log_hyperparams(dict(self.hparams), metrics)
