"""MNIST from its four standard IDX files, kept in memory as uint8 tensors."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from data_modules.base import ImageArrays, TensorImageDataModule
from data_modules.download import (
    DownloadFailed,
    describe_attempts,
    download_file,
    download_lock,
)
from data_modules.errors import DataFileError, DatasetNotFoundError

log = logging.getLogger(__name__)

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GZIP_MAGIC = b"\x1f\x8b"

# Official archives and their md5 checksums, as published with the dataset.
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def read_file_bytes(path: Path) -> bytes:
    """Returns a file's payload, decompressing it when its name ends in ``.gz``.

    Raises:
        DataFileError: The file is empty, is not the gzip data its name promises (an HTML
            error page, say), is a truncated archive, or hides gzip data under a plain name.
    """
    raw = path.read_bytes()
    if not raw:
        raise DataFileError(
            f"{path} is empty (0 bytes). Delete it and let the data module download it again, "
            "or copy the original file in its place."
        )
    is_gzip = raw[:2] == GZIP_MAGIC
    if path.suffix == ".gz":
        if not is_gzip:
            looks_like = (
                "an HTML or text page, probably an error page saved in place of the archive"
                if raw.lstrip()[:1] == b"<"
                else f"bytes starting {raw[:4].hex()}"
            )
            raise DataFileError(
                f"{path} is not gzip data: expected the gzip magic bytes 1f8b, found "
                f"{looks_like}. Delete it and download the file again."
            )
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise DataFileError(
                f"{path} is a truncated or corrupted gzip archive ({err}). Delete it and "
                "download the file again."
            ) from err
    if is_gzip:
        raise DataFileError(
            f"{path} holds gzip-compressed data under an uncompressed name. Rename it to "
            f"{path.name}.gz, or decompress it with `gunzip -c {path.name}.gz > {path.name}`."
        )
    return raw


def parse_idx(data: bytes, path: Path, kind: str) -> Tensor:
    """Parses an IDX payload of MNIST images (N x 28 x 28) or labels (N), as uint8.

    Args:
        data: The decompressed file contents.
        path: The file it came from, named in errors.
        kind: ``"images"`` or ``"labels"``.

    Raises:
        DataFileError: Wrong magic number, image size, header counts that disagree with the
            payload length, no items, or a label outside 0..9.
    """
    magic, header = (IMAGES_MAGIC, 16) if kind == "images" else (LABELS_MAGIC, 8)
    fix = "Replace it with the original MNIST file."
    if len(data) < header:
        raise DataFileError(
            f"{path}: expected an IDX {kind} header of {header} bytes, found only "
            f"{len(data)} bytes. {fix}"
        )
    found_magic = int.from_bytes(data[0:4], "big")
    if found_magic != magic:
        other = "labels" if kind == "images" else "images"
        swapped = " (an IDX labels file)" if found_magic == LABELS_MAGIC else (
            " (an IDX images file)" if found_magic == IMAGES_MAGIC else "")
        raise DataFileError(
            f"{path}: expected IDX magic number {magic} for {kind}, found {found_magic}"
            f"{swapped}. Check that the {kind} and {other} files are not swapped. {fix}"
        )
    count = int.from_bytes(data[4:8], "big")
    shape: tuple[int, ...] = (count,)
    if kind == "images":
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if (rows, cols) != (28, 28):
            raise DataFileError(f"{path}: expected 28 x 28 images, found {rows} x {cols}. {fix}")
        shape = (count, 28, 28)
    expected = header + count * (784 if kind == "images" else 1)
    if count == 0:
        raise DataFileError(f"{path}: the header announces 0 {kind}; expected a dataset. {fix}")
    if len(data) != expected:
        raise DataFileError(
            f"{path}: the header announces {count} {kind}, which take {expected} bytes, but "
            f"the file holds {len(data)} bytes (truncated or padded). {fix}"
        )
    values = torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)
    if kind == "labels" and int(values.max()) > 9:
        position = int((values > 9).nonzero()[0, 0])
        raise DataFileError(
            f"{path}: labels must lie in 0..9, found {int(values[position])} at position "
            f"{position}. {fix}"
        )
    return values


class MNISTDataModule(TensorImageDataModule):
    """MNIST: 60,000 training and 10,000 test handwritten digits, 28 x 28 grey levels.

    The four standard files (``train-images-idx3-ubyte`` and friends, gzip-compressed or not)
    are looked for in ``data_dir`` and in ``data_dir/MNIST/raw`` (torchvision's layout).
    Missing files are downloaded into ``data_dir/MNIST/raw`` when ``download`` is true. The
    data directory may be read-only when the files are present; nothing in it is modified.

    The official training set is split into ``60,000 - val_size`` training and ``val_size``
    validation images with a generator seeded by ``split_seed``; the official test set is
    used as it is. Pixels become ``(p / 255 - 0.1307) / 0.3081``: black (0) maps to about
    -0.4242 and white (255) to about 2.8215.

    Args:
        mirrors: Base addresses to download from, tried in turn; the official ones by default.
        md5s: Expected md5 of each ``.gz`` archive by file stem; the official ones by default.
        **kwargs: Passed to :class:`TensorImageDataModule` (``data_dir``, ``batch_size``,
            ``val_size``, ``split_seed``, ``train_subset``, ``download``, ...).
    """

    mean = (0.1307,)
    std = (0.3081,)
    classes = tuple(str(digit) for digit in range(10))
    image_shape = (1, 28, 28)

    def __init__(
        self,
        *args: object,
        mirrors: Sequence[str] = MNIST_MIRRORS,
        md5s: dict[str, str] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.mirrors = tuple(mirrors)
        self.md5s = dict(md5s or MNIST_FILES)

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def find_file(self, stem: str) -> Path | None:
        """Returns the first existing ``stem`` or ``stem.gz`` in the data folders, if any."""
        for folder in (Path(self.data_dir), self.raw_dir):
            for name in (f"{stem}.gz", stem):
                if (folder / name).is_file():
                    return folder / name
        return None

    def missing_files(self) -> list[str]:
        return [stem for stem in MNIST_FILES if self.find_file(stem) is None]

    def prepare_data(self) -> None:
        """Downloads missing files once, under a file lock shared by all local processes."""
        if Path(self.data_dir).exists() and not Path(self.data_dir).is_dir():
            raise DatasetNotFoundError(
                f"the data directory {Path(self.data_dir).resolve()} is a file, not a folder; "
                "pass the folder that holds (or should receive) the MNIST files"
            )
        if not self.missing_files():
            return
        if not self.download:
            self._raise_missing(self.missing_files(), [])
        with download_lock(self.raw_dir):
            attempts: list[tuple[str, str]] = []
            for stem in self.missing_files():
                urls = [f"{mirror.rstrip('/')}/{stem}.gz" for mirror in self.mirrors]
                try:
                    download_file(urls, self.raw_dir / f"{stem}.gz", self.md5s[stem])
                except DownloadFailed as err:
                    attempts.extend(err.attempts)
            if self.missing_files():
                self._raise_missing(self.missing_files(), attempts)

    def _raise_missing(self, stems: list[str], attempts: list[tuple[str, str]]) -> None:
        how = describe_attempts(attempts)
        raise DatasetNotFoundError(
            f"MNIST files missing from {Path(self.data_dir).resolve()}: {', '.join(stems)}. "
            f"{how}\nTo install them by hand, copy {', '.join(s + '.gz' for s in stems)} from "
            f"an MNIST mirror ({', '.join(self.mirrors)}) into {self.raw_dir.resolve()} or "
            f"{Path(self.data_dir).resolve()} (creating the folder if needed)."
        )

    def load_arrays(self) -> ImageArrays:
        missing = self.missing_files()
        if missing:
            self._raise_missing(missing, [])
        tensors = {}
        for stem in MNIST_FILES:
            path = self.find_file(stem)
            assert path is not None
            kind = "images" if "images" in stem else "labels"
            tensors[stem] = parse_idx(read_file_bytes(path), path, kind)
        for split in ("train", "t10k"):
            images = tensors[f"{split}-images-idx3-ubyte"]
            labels = tensors[f"{split}-labels-idx1-ubyte"]
            if len(images) != len(labels):
                raise DataFileError(
                    f"{self.find_file(f'{split}-images-idx3-ubyte')} holds {len(images)} images "
                    f"but {self.find_file(f'{split}-labels-idx1-ubyte')} holds {len(labels)} "
                    "labels; they must match. Replace the damaged file with the original."
                )
        log.info("Loaded MNIST from %s", self.data_dir)
        return ImageArrays(
            train_images=tensors["train-images-idx3-ubyte"].unsqueeze(1),
            train_labels=tensors["train-labels-idx1-ubyte"].long(),
            test_images=tensors["t10k-images-idx3-ubyte"].unsqueeze(1),
            test_labels=tensors["t10k-labels-idx1-ubyte"].long(),
        )
