"""CIFAR-10 from its python-pickle batches, kept in memory as uint8 tensors."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_modules.augment import RandomCropFlip
from data_modules.base import ImageArrays, TensorImageDataModule
from data_modules.download import (
    DownloadFailed,
    describe_attempts,
    download_file,
    download_lock,
    md5sum,
)
from data_modules.errors import DataFileError, DatasetNotFoundError

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
IMAGE_VALUES = 3 * 32 * 32
OFFICIAL_COUNTS = (50_000, 10_000)

# The only globals a CIFAR-10 pickle needs: numpy's array reconstruction. Anything else
# (a pickle can name any callable) is refused, so a tampered file cannot run code.
_numpy_core = getattr(np, "_core", None) or np.core
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _fix(path: Path) -> str:
    return (f"Replace {path.name} with the file from the official {ARCHIVE_NAME}, or move the "
            f"{path.parent.name} folder away and let the data module download it again.")


def load_pickle(path: Path) -> dict[str, Any]:
    """Loads a CIFAR pickle into a dict with ``str`` keys, whatever key type it was saved with.

    Python 2 pickles load with ``latin1`` decoding (``str`` keys); pickles written by Python 3
    with ``bytes`` keys keep them as bytes, so both are decoded here.

    Raises:
        DataFileError: The file is empty, truncated, not a pickle, not a dict, or names code
            other than numpy's array reconstruction.
    """
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, MemoryError) as err:
        size = path.stat().st_size
        raise DataFileError(
            f"{path}: expected a CIFAR-10 pickle, found a file of {size} bytes that does not "
            f"load ({type(err).__name__}: {err}): it is truncated or damaged. {_fix(path)}"
        ) from err
    if not isinstance(data, dict):
        raise DataFileError(
            f"{path}: expected a pickled dict, found {type(data).__name__}. {_fix(path)}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def decode_images(data: Any, path: Path) -> Tensor:
    """Turns ``data`` (N x 3072: red, green, blue planes, each row-major) into N x 3 x 32 x 32.

    Raises:
        DataFileError: Not a uint8 array of rows of 3072 values.
    """
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
            data.shape[1] != IMAGE_VALUES):
        found = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DataFileError(
            f"{path}: expected 'data' to be a uint8 array of N x {IMAGE_VALUES} values, found "
            f"a {found}. {_fix(path)}"
        )
    # (N, 3072) -> (N, 3, 32, 32): each row is three 32 x 32 planes stored row by row.
    return torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32).clone()


def read_batch(path: Path, num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """Reads one batch file into uint8 images (N x 3 x 32 x 32) and int64 labels (N).

    Raises:
        DataFileError: Unreadable file, missing ``data`` or ``labels`` key, wrong shapes, image
            and label counts that disagree, or a label outside ``0..num_classes - 1``.
    """
    batch = load_pickle(path)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataFileError(
            f"{path}: expected the keys 'data' and 'labels', found {sorted(batch)} (missing "
            f"{missing}). {_fix(path)}"
        )
    images = decode_images(batch["data"], path)
    try:
        labels = torch.as_tensor(np.asarray(batch["labels"], dtype=np.int64))
    except (TypeError, ValueError) as err:
        raise DataFileError(f"{path}: 'labels' is not a list of integers ({err}). "
                            f"{_fix(path)}") from err
    if labels.dim() != 1 or len(labels) != len(images):
        raise DataFileError(
            f"{path}: expected one label per image ({len(images)}), found labels of shape "
            f"{tuple(labels.shape)}. {_fix(path)}"
        )
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        position = int(bad[0, 0])
        raise DataFileError(
            f"{path}: labels must lie in 0..{num_classes - 1}, found {int(labels[position])} "
            f"at position {position}. {_fix(path)}"
        )
    return images, labels


def read_class_names(path: Path) -> tuple[str, ...]:
    """Reads the ten class names of ``batches.meta``.

    Raises:
        DataFileError: Unreadable file, or no ``label_names`` list of ten names.
    """
    meta = load_pickle(path)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != len(CLASSES) or not all(
            isinstance(n, (str, bytes)) for n in names):
        raise DataFileError(
            f"{path}: expected 'label_names' to list {len(CLASSES)} class names, found "
            f"{names!r} (keys {sorted(meta)}). {_fix(path)}"
        )
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def read_cifar10_folder(
    folder: Path, expected_counts: tuple[int, int] | None = OFFICIAL_COUNTS
) -> tuple[ImageArrays, tuple[str, ...]]:
    """Reads and validates a ``cifar-10-batches-py`` folder.

    Args:
        folder: The folder holding the five training batches, the test batch and the meta file.
        expected_counts: Training and test image counts to insist on; ``None`` accepts any
            (for small fake folders in tests).

    Returns:
        The official train and test arrays, and the class names.

    Raises:
        DatasetNotFoundError: Files are missing (all of them are listed).
        DataFileError: A file is damaged; the message names it and says how to fix it.
    """
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 folder {folder} is incomplete: expected {', '.join(REQUIRED_FILES)}; "
            f"missing {', '.join(missing)}. Copy the missing files from the official "
            f"{ARCHIVE_NAME}, or move the folder away and let the data module download it "
            "again."
        )
    classes = read_class_names(folder / META_FILE)
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    test_images, test_labels = read_batch(folder / TEST_BATCH)
    arrays = ImageArrays(
        train_images=torch.cat([images for images, _ in train]),
        train_labels=torch.cat([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
    )
    if expected_counts is not None:
        found = (len(arrays.train_labels), len(arrays.test_labels))
        if found != tuple(expected_counts):
            per_file = ", ".join(f"{name}: {len(labels)}" for name, (_, labels)
                                 in zip(TRAIN_BATCHES, train, strict=True))
            raise DataFileError(
                f"{folder}: expected {expected_counts[0]} training and {expected_counts[1]} test "
                f"images, found {found[0]} ({per_file}) and {found[1]} ({TEST_BATCH}). Replace "
                f"the short files with those of the official {ARCHIVE_NAME}."
            )
    return arrays, classes


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why an archive member may not be extracted, or None when it is a plain file or folder."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("\\", "/")):
        return "leaves the target folder"
    if member.issym() or member.islnk():
        return f"is a link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "is a device, pipe or other special file"
    return None


def extract_folder(archive: Path, root: Path, folder_name: str = FOLDER_NAME,
                   expected_counts: tuple[int, int] | None = OFFICIAL_COUNTS) -> Path:
    """Safely extracts ``folder_name`` from a ``.tar.gz`` archive into ``root``.

    Every member is checked before anything is written: none may be absolute, contain ``..``,
    be a link, a device or a pipe. Files are written into a hidden temporary folder inside
    ``root``, the result is read and validated, and only then is the folder renamed to
    ``root / folder_name``, so the final name never holds a partial dataset.

    Returns:
        The extracted folder.

    Raises:
        DataFileError: The archive is unreadable or truncated, holds an unsafe member, lacks
            the dataset folder, or holds damaged batches. ``root`` is left as it was.
    """
    fix = (f"Delete {archive} and download it again, or put the official {ARCHIVE_NAME} "
           f"(md5 {CIFAR10_MD5}) there.")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.", suffix=".extracting", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                unsafe = [f"{m.name!r} {problem}" for m in members
                          if (problem := _member_problem(m)) is not None]
                if unsafe:
                    raise DataFileError(
                        f"{archive}: refusing to extract unsafe members: {'; '.join(unsafe)}. "
                        f"Nothing was extracted. {fix}"
                    )
                for member in members:
                    target = staging / member.name
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DataFileError(
                f"{archive}: expected a gzip-compressed tar archive of CIFAR-10, found a "
                f"file of {archive.stat().st_size} bytes that cannot be read to the end "
                f"({type(err).__name__}: {err}). {fix}"
            ) from err
        extracted = staging / folder_name
        if not extracted.is_dir():
            raise DataFileError(f"{archive}: expected a folder {folder_name}/ inside, found "
                                f"{sorted(p.name for p in staging.iterdir())}. {fix}")
        try:
            read_cifar10_folder(extracted, expected_counts)
        except (DataFileError, DatasetNotFoundError) as err:
            raise DataFileError(f"{archive} holds a damaged dataset: {err}") from err
        try:
            os.rename(extracted, root / folder_name)
        except OSError:
            # Another process (one that shares no lock with this one) installed it first.
            if not (root / folder_name).is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / folder_name


class CIFAR10DataModule(TensorImageDataModule):
    """CIFAR-10: 50,000 training and 10,000 test colour images of 32 x 32 pixels, 10 classes.

    The python-pickle batches are read from ``data_dir/cifar-10-batches-py``. When that folder
    is missing and ``download`` is true, ``cifar-10-python.tar.gz`` is downloaded into
    ``data_dir`` (md5-verified, under a file lock, atomically) and extracted safely; an
    archive already there is used if its md5 matches. A folder that exists is never modified
    or replaced, so the data directory may be read-only; a damaged one is reported with the
    file at fault and how to fix it.

    The official training set is split into ``50,000 - val_size`` training and ``val_size``
    validation images with a generator seeded by ``split_seed``; the test set is used as it
    is. Pixels of channel ``c`` become ``(p / 255 - mean[c]) / std[c]`` with the per-channel
    mean and standard deviation of the training set. With ``augment``, training batches are
    randomly cropped (shifted by up to ``crop_padding`` pixels) and mirrored on the device
    that trains, after transfer and before normalisation.

    Args:
        mirrors: Full addresses of ``cifar-10-python.tar.gz``, tried in turn.
        md5: Expected md5 of the archive.
        augment: Apply random crop and flip to training batches.
        crop_padding: Largest random shift of the crop, in pixels.
        pad_mode: How the border uncovered by a shift is filled: ``reflect`` or ``zeros``.
        expected_counts: Training and test image counts to insist on; ``None`` accepts any
            (for small fake datasets in tests).
        **kwargs: Passed to :class:`TensorImageDataModule` (``data_dir``, ``batch_size``,
            ``val_size``, ``split_seed``, ``train_subset``, ``download``, ...).
    """

    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    classes = CLASSES
    image_shape = (3, 32, 32)

    def __init__(
        self,
        *args: object,
        mirrors: Sequence[str] = (CIFAR10_URL,),
        md5: str = CIFAR10_MD5,
        augment: bool = False,
        crop_padding: int = 4,
        pad_mode: str = "reflect",
        expected_counts: tuple[int, int] | None = OFFICIAL_COUNTS,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.mirrors = tuple(mirrors)
        self.md5 = md5
        self.expected_counts = expected_counts
        if augment:
            self.augment = RandomCropFlip(crop_padding, pad_mode, flip=True)
        else:
            RandomCropFlip(crop_padding, pad_mode)  # Validates the arguments all the same.

    @property
    def folder(self) -> Path:
        return Path(self.data_dir) / FOLDER_NAME

    @property
    def archive(self) -> Path:
        return Path(self.data_dir) / ARCHIVE_NAME

    def prepare_data(self) -> None:
        """Downloads and extracts the archive once, under a lock shared by local processes."""
        if self.folder.exists():
            return
        if not self.download:
            self._raise_missing([])
        root = Path(self.data_dir)
        with download_lock(root):
            if self.folder.exists():
                return
            attempts: list[tuple[str, str]] = []
            if self.archive.is_file():
                found = md5sum(self.archive)
                if found != self.md5:
                    raise DataFileError(
                        f"{self.archive}: expected md5 {self.md5}, found {found} "
                        f"({self.archive.stat().st_size} bytes): an incomplete or different "
                        f"file. Delete it to download it again, or replace it with the "
                        f"official {ARCHIVE_NAME}."
                    )
            else:
                try:
                    download_file(self.mirrors, self.archive, self.md5)
                except DownloadFailed as err:
                    attempts = err.attempts
                    self._raise_missing(attempts)
            extract_folder(self.archive, root, FOLDER_NAME, self.expected_counts)
            log.info("Extracted %s into %s", self.archive, self.folder)

    def _raise_missing(self, attempts: list[tuple[str, str]]) -> None:
        how = describe_attempts(attempts)
        raise DatasetNotFoundError(
            f"CIFAR-10 folder {self.folder.resolve()} not found. {how}\nTo install it by "
            f"hand, download {ARCHIVE_NAME} (md5 {self.md5}) from {', '.join(self.mirrors)} "
            f"and extract it into {Path(self.data_dir).resolve()} (creating the folder if "
            f"needed: `tar -xzf {ARCHIVE_NAME}`)."
        )

    def load_arrays(self) -> ImageArrays:
        if not self.folder.is_dir():
            self._raise_missing([])
        arrays, classes = read_cifar10_folder(self.folder, self.expected_counts)
        self.classes = classes
        log.info("Loaded CIFAR-10 from %s", self.folder)
        return arrays
