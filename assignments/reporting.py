"""Figures and tables a student hands in: curves, confusion matrices, sample predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def plot_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """Plots loss and accuracy per epoch (train dashed, validation solid) of labelled runs."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, epochs in histories.items():
        x = [row["epoch"] for row in epochs]
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            line = ax.plot(x, [row.get(f"val/{metric}", float("nan")) for row in epochs],
                           marker="o", label=f"{label} val")[0]
            ax.plot(x, [row.get(f"train/{metric}", float("nan")) for row in epochs],
                    linestyle="--", marker="x", color=line.get_color(), label=f"{label} train")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Counts (true class, predicted class) pairs into a num_classes x num_classes matrix."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(matrix: Tensor) -> Tensor:
    """Recall of each class from a confusion matrix (rows are true classes)."""
    return matrix.diag().float() / matrix.sum(dim=1).clamp(min=1).float()


def plot_confusion(matrix: Tensor, class_names: Sequence[str], path: Path) -> Path:
    """Draws a confusion matrix with counts in each cell and class names on the axes."""
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(matrix.numpy(), cmap="Blues")
    threshold = matrix.max().item() / 2
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    accuracy = matrix.diag().sum().item() / max(matrix.sum().item(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (accuracy {accuracy:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_samples(
    images: Tensor, predictions: Tensor, targets: Tensor, class_names: Sequence[str], path: Path,
    count: int = 32,
) -> Path:
    """Shows the first ``count`` images (uint8, N x C x H x W) with predicted and true labels.

    Wrong predictions are titled in red.
    """
    count = min(count, len(predictions))
    cols = 8
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        image = images[k].permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        pred, true = int(predictions[k]), int(targets[k])
        ax.set_title(f"{class_names[pred]} ({class_names[true]})", fontsize=7,
                     color="black" if pred == true else "red")
    fig.suptitle("Predicted (true) labels of test images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Formats rows as a GitHub markdown table; floats get four decimals."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_prediction_figures(
    predictions: Tensor, images: Tensor, targets: Tensor, class_names: Sequence[str],
    out_dir: Path,
) -> dict[str, Path]:
    """Writes the confusion matrix, per-class accuracy table and sample grid of a test run."""
    targets = targets[: len(predictions)]
    matrix = confusion_matrix(predictions, targets, len(class_names))
    recall = per_class_accuracy(matrix)
    table = markdown_table(["class", "test images", "accuracy"],
                           [(name, int(matrix[i].sum()), float(recall[i]))
                            for i, name in enumerate(class_names)])
    (out_dir / "per_class_accuracy.md").write_text(table)
    plot_confusion(matrix, class_names, out_dir / "confusion_matrix.png")
    plot_samples(images, predictions, targets, class_names, out_dir / "samples.png")
    return {name: out_dir / name for name in
            ("confusion_matrix.png", "samples.png", "per_class_accuracy.md")}
