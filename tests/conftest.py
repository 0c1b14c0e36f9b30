"""Shared fixtures: the real datasets, and small fake files in their on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """The folder of the real datasets: ``$DATA_DIR``, else ``../shared/data`` beside the repo."""
    return Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}; set DATA_DIR to the folder that holds it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder; in CI (``CI`` set) a missing folder fails instead of skipping."""
    return _require(real_data_dir(), "the real data folder")


@pytest.fixture(scope="session")
def mnist_dir(data_dir: Path) -> Path:
    _require(data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", "real MNIST")
    return data_dir


@pytest.fixture(scope="session")
def cifar10_dir(data_dir: Path) -> Path:
    _require(data_dir / "cifar-10-batches-py" / "data_batch_1", "real CIFAR-10")
    return data_dir
