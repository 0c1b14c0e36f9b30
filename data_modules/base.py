"""A LightningDataModule that keeps a whole image dataset in memory as uint8 tensors.

Batches are cut from the tensors by index, so loading one costs a gather rather than a Python
loop over samples. Images travel to the training device as uint8 and are converted to
standardised floats there, on whole batches, where training-time augmentation also runs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


@dataclass(frozen=True)
class ImageArrays:
    """A dataset's official train and test images (uint8, N x C x H x W) and labels (int64)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


class IndexedBatches(Dataset[tuple[Tensor, Tensor]]):
    """Serves whole batches: indexing with a list of positions returns stacked tensors."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Splits ``range(n)`` into train and validation positions with a private generator.

    The split depends only on ``n``, ``val_size`` and ``seed``, never on the global RNG, so
    it is the same in every process and every ``setup`` call.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    return order[val_size:].sort().values, order[:val_size].sort().values


class TensorImageDataModule(L.LightningDataModule, abc.ABC):
    """Base class for the in-memory image data modules.

    Subclasses set ``mean``, ``std``, ``classes`` and ``image_shape`` and implement
    ``prepare_data`` (find or download the files) and ``load_arrays`` (read and validate them).

    Args:
        data_dir: Folder that holds (or receives) the dataset files.
        batch_size: Images per training batch.
        eval_batch_size: Images per validation and test batch; defaults to ``batch_size``.
        val_size: Images held out of the official training set for validation.
        split_seed: Seed of the train/validation split, independent of the training seed.
        train_subset: Use only the first this many images of the training split.
        val_subset: Use only the first this many images of the validation split.
        download: Whether missing files may be downloaded.
        num_workers: Loader worker processes; 0 loads in the main process.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        split_seed: int = 0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        download: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_size", val_size)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        for name, subset in (("train_subset", train_subset), ("val_subset", val_subset)):
            if subset is not None and subset < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {subset}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.download = download
        self.num_workers = num_workers
        self.augment: Callable[[Tensor], Tensor] | None = None
        self._arrays: ImageArrays | None = None
        self.train_set: IndexedBatches | None = None
        self.val_set: IndexedBatches | None = None
        self.test_set: IndexedBatches | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abc.abstractmethod
    def load_arrays(self) -> ImageArrays:
        """Reads and validates the dataset files; called once per process by ``setup``."""

    def setup(self, stage: str | None = None) -> None:
        if self._arrays is None:
            self._arrays = self.load_arrays()
        arrays = self._arrays
        n_train = len(arrays.train_labels)
        if self.val_size >= n_train:
            raise ValueError(
                f"val_size={self.val_size} leaves no training images out of {n_train}; "
                "choose a smaller val_size"
            )
        train_idx, val_idx = split_indices(n_train, self.val_size, self.split_seed)
        train_idx = train_idx[: self.train_subset]
        val_idx = val_idx[: self.val_subset]
        images, labels = arrays.train_images, arrays.train_labels
        self.train_set = IndexedBatches(images[train_idx], labels[train_idx])
        self.val_set = IndexedBatches(images[val_idx], labels[val_idx])
        self.test_set = IndexedBatches(arrays.test_images, arrays.test_labels)

    def _loader(
        self, dataset: IndexedBatches | None, batch_size: int, shuffle: bool
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return DataLoader(
            dataset,
            sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=False),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def normalize(self, images: Tensor) -> Tensor:
        """Maps uint8 images to float: scaled to [0, 1], then standardised per channel.

        A pixel of value ``p`` in channel ``c`` becomes ``(p / 255 - mean[c]) / std[c]``.
        """
        channels = images.shape[-3]
        mean = torch.tensor(self.mean, device=images.device).view(channels, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(channels, 1, 1)
        return (images.float().div_(255) - mean).div_(std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        return self.normalize(images), labels
