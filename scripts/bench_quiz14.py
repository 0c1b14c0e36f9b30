"""Throughput of the Quiz 14 training pipeline against a plain PyTorch loop on the same work.

    python scripts/bench_quiz14.py                   # Lightning vs plain loop, default settings
    python scripts/bench_quiz14.py --variants        # also fp32 / channels-last / fused / bf16
    python scripts/bench_quiz14.py --smoke           # seconds: checks that the script runs

Both sides train the same network (fresh, same seed) on the same real MNIST batches with the
same batch size and optimizer; rounds alternate between them so that machine noise hits both
alike, and the ratio of their median throughputs is printed. Lightning's time is measured from
the start to the end of its training epoch, so it includes its loop, hooks and metric updates.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from assignments.config import PrecisionName
from assignments.quiz14 import Quiz14Config, build_datamodule, build_model
from assignments.training import environment_summary
from data_modules.mnist import MNISTDataModule
from lightning_modules.classifier import ImageClassifier


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_rate(config: Quiz14Config, dm: MNISTDataModule, batches: int) -> float:
    """Images per second of ``batches`` training steps through a Lightning Trainer."""
    L.seed_everything(config.seed, verbose=False)
    model = build_model(config)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        precision=cast(PrecisionName, config.precision), accelerator=config.accelerator,
        devices=1, deterministic=config.deterministic, callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return batches * config.batch_size / timer.seconds


def plain_rate(config: Quiz14Config, dm: MNISTDataModule, batches: int) -> float:
    """Images per second of the same steps in a hand-written PyTorch loop."""
    L.seed_everything(config.seed, verbose=False)
    model: ImageClassifier = build_model(config)
    optimizer = model.configure_optimizers()
    device = torch.device("cuda" if config.accelerator != "cpu" and torch.cuda.is_available()
                          else "cpu")
    model.to(device).train()
    bf16 = config.precision.startswith("bf16")
    start = time.perf_counter()
    for step, (images, labels) in enumerate(dm.train_dataloader()):
        if step == batches:
            break
        images = dm.normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                    else contextlib.nullcontext())
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * config.batch_size / (time.perf_counter() - start)


def compare(config: Quiz14Config, dm: MNISTDataModule, batches: int, rounds: int) -> None:
    lightning, plain = [], []
    for _ in range(rounds):
        plain.append(plain_rate(config, dm, batches))
        lightning.append(lightning_rate(config, dm, batches))
    # Each round's two measurements are seconds apart, so their ratio cancels slow changes in
    # the machine's load that would skew a ratio of medians.
    ratio = statistics.median(li / pl for li, pl in zip(lightning, plain, strict=True))
    print(f"plain PyTorch loop : {statistics.median(plain):7.1f} images/s "
          f"(rounds: {', '.join(f'{r:.0f}' for r in plain)})")
    print(f"Lightning pipeline : {statistics.median(lightning):7.1f} images/s "
          f"(rounds: {', '.join(f'{r:.0f}' for r in lightning)})")
    print(f"ratio Lightning / plain (median over rounds): {ratio:.3f}")


def variants(config: Quiz14Config, dm: MNISTDataModule, batches: int, rounds: int) -> None:
    """Plain-loop throughput of the numeric settings this machine could train with."""
    settings: dict[str, dict[str, Any]] = {
        "fp32": {"channels_last": False, "fused": False},
        "fp32 channels-last": {"channels_last": True, "fused": False},
        "fp32 channels-last fused": {"channels_last": True, "fused": True},
        "bf16 autocast channels-last fused": {"channels_last": True, "fused": True,
                                              "precision": "bf16-mixed"},
    }
    configs = {name: Quiz14Config(**{**vars(config), **changes})
               for name, changes in settings.items()}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, cfg in configs.items():
            rates[name].append(plain_rate(cfg, dm, batches))
    print(f"\n{'setting':36s} {'images/s':>9s} {'vs fp32':>8s}")
    for name, values in rates.items():
        speedup = statistics.median(v / f for v, f in zip(values, rates["fp32"], strict=True))
        print(f"{name:36s} {statistics.median(values):9.1f} {speedup:7.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=100, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--data-dir", default=Quiz14Config().data_dir)
    parser.add_argument("--variants", action="store_true",
                        help="also time fp32, channels-last, fused and bf16 in the plain loop")
    parser.add_argument("--smoke", action="store_true", help="2 batches, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.rounds = 2, 1
    config = Quiz14Config(
        activation=args.activation, batch_size=args.batch_size, precision=args.precision,
        accelerator=args.accelerator, channels_last=not args.no_channels_last,
        data_dir=args.data_dir, train_subset=args.batches * args.batch_size, download=False,
    )
    dm = build_datamodule(config)
    dm.setup("fit")
    print(f"Quiz 14 network, {args.activation}, batch {args.batch_size}, {args.batches} steps "
          f"x {args.rounds} rounds, precision {args.precision}, channels-last "
          f"{config.channels_last}\n{environment_summary()}")
    compare(config, dm, args.batches, args.rounds)
    if args.variants:
        variants(config, dm, args.batches, args.rounds)


if __name__ == "__main__":
    main()
