"""The CIFAR-10 data module on tiny fake batches in the real pickle format, and on real data."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from data_modules.augment import RandomCropFlip
from data_modules.cifar10 import (
    CLASSES,
    FOLDER_NAME,
    TRAIN_BATCHES,
    CIFAR10DataModule,
    extract_folder,
    load_pickle,
)
from data_modules.errors import DataFileError, DatasetNotFoundError

PER_BATCH = 20


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` with Python 2's string opcodes, as the official CIFAR files do.

    Loaded with ``encoding="latin1"`` they become ``str``, with ``encoding="bytes"`` they stay
    ``bytes``: the two key conventions a CIFAR loader meets.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump(obj: object, path: Path, style: str = "py2") -> None:
    """Pickles like Python 2 (``py2``), or like Python 3 with ``bytes`` keys (``bytes``)."""
    with open(path, "wb") as f:
        if style == "py2":
            Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=4)


def fake_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_batch(path: Path, data: np.ndarray, labels: list[int], style: str = "py2",
                keys: tuple[bytes, bytes] = (b"data", b"labels")) -> None:
    batch = {keys[0]: data, keys[1]: labels, b"batch_label": b"fake batch",
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    dump(batch, path, style)


def write_fake_cifar(root: Path, style: str = "py2", n: int = PER_BATCH) -> Path:
    """Writes a complete tiny ``cifar-10-batches-py`` folder (labels cycle through 0..9)."""
    folder = root / FOLDER_NAME
    folder.mkdir(parents=True)
    for i, name in enumerate((*TRAIN_BATCHES, "test_batch")):
        write_batch(folder / name, fake_images(n, i), [k % 10 for k in range(n)], style)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": n,
            b"num_vis": 3072}
    dump(meta, folder / "batches.meta", style)
    return folder


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def fake_module(root: Path, **kwargs: object) -> CIFAR10DataModule:
    options: dict[str, object] = {"data_dir": str(root), "val_size": 10, "batch_size": 16,
                                  "expected_counts": None, "download": False}
    options.update(kwargs)
    return CIFAR10DataModule(**options)  # type: ignore[arg-type]


def build_archive(path: Path, folder: Path) -> str:
    """Tars and gzips ``folder`` under its own name; returns the archive's md5."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return hashlib.md5(path.read_bytes()).hexdigest()


# Decoding


@pytest.mark.parametrize("style", ["py2", "bytes"], ids=["python2-str-keys", "bytes-keys"])
def test_marked_pixels_decode_to_channel_row_column(tmp_path: Path, style: str) -> None:
    folder = write_fake_cifar(tmp_path, style)
    data = np.zeros((PER_BATCH, 3072), dtype=np.uint8)
    data[0, 0 * 1024 + 1 * 32 + 2] = 201  # red plane, row 1, column 2
    data[0, 1 * 1024 + 5 * 32 + 0] = 202  # green plane, row 5, column 0
    data[0, 2 * 1024 + 31 * 32 + 31] = 203  # blue plane, row 31, column 31
    data[3, 2 * 1024 + 0 * 32 + 30] = 204  # blue plane, row 0, column 30, fourth image
    write_batch(folder / "data_batch_1", data, [k % 10 for k in range(PER_BATCH)], style)

    arrays = fake_module(tmp_path).load_arrays()

    images = arrays.train_images
    assert images.shape == (5 * PER_BATCH, 3, 32, 32) and images.dtype == torch.uint8
    assert images[0, 0, 1, 2] == 201 and images[0, 1, 5, 0] == 202 and images[0, 2, 31, 31] == 203
    assert images[3, 2, 0, 30] == 204
    assert int(images[:PER_BATCH].count_nonzero()) == 4


@pytest.mark.parametrize("style", ["py2", "bytes"], ids=["python2-str-keys", "bytes-keys"])
def test_fake_dataset_loads_with_either_key_convention(tmp_path: Path, style: str) -> None:
    write_fake_cifar(tmp_path, style)
    raw = (tmp_path / FOLDER_NAME / "data_batch_1").read_bytes()
    keys = pickle.loads(raw, encoding="bytes").keys()
    assert all(isinstance(k, bytes) for k in keys)
    datamodule = fake_module(tmp_path)

    datamodule.setup()

    assert datamodule.classes == CLASSES
    assert len(datamodule.train_set) == 5 * PER_BATCH - 10 and len(datamodule.val_set) == 10
    assert datamodule.test_set.labels.tolist() == [k % 10 for k in range(PER_BATCH)]
    expected = torch.from_numpy(fake_images(PER_BATCH, 5)).view(-1, 3, 32, 32)
    assert torch.equal(datamodule.test_set.images, expected)


def test_pickles_naming_other_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": print}, protocol=2))

    with pytest.raises(DataFileError, match=r"refusing to load .*print"):
        load_pickle(path)


# Bad inputs: each error names the file and the fix, and changes nothing on disk.


def _truncate(folder: Path) -> None:
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[: 5000])


def _wrong_keys(folder: Path) -> None:
    write_batch(folder / "data_batch_3", fake_images(PER_BATCH, 0), [0] * PER_BATCH,
                keys=(b"images", b"targets"))


def _label_ten(folder: Path) -> None:
    write_batch(folder / "test_batch", fake_images(PER_BATCH, 0), [3] * 7 + [10] * 13)


def _wrong_shape(folder: Path) -> None:
    write_batch(folder / "data_batch_4", np.zeros((PER_BATCH, 1024), np.uint8), [0] * PER_BATCH)


def _bad_meta(folder: Path) -> None:
    dump({b"label_names": [b"cat", b"dog"]}, folder / "batches.meta")


BAD_FOLDERS = {
    "missing-batch": (lambda f: (f / "data_batch_3").unlink(), DatasetNotFoundError,
                      r"missing data_batch_3\. Copy the missing files"),
    "truncated-batch": (_truncate, DataFileError, r"data_batch_2: .*truncated.*Replace"),
    "wrong-keys": (_wrong_keys, DataFileError,
                   r"data_batch_3: expected the keys 'data' and 'labels', found .*'images'"),
    "label-10": (_label_ten, DataFileError,
                 r"test_batch: labels must lie in 0\.\.9, found 10 at position 7\. Replace"),
    "wrong-shape": (_wrong_shape, DataFileError, r"data_batch_4: expected 'data' .* 3072"),
    "bad-meta": (_bad_meta, DataFileError, r"batches\.meta: expected 'label_names'"),
}


@pytest.mark.parametrize("damage", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_damaged_folder_is_reported_and_left_alone(tmp_path: Path, damage: str) -> None:
    folder = write_fake_cifar(tmp_path)
    spoil, error, message = BAD_FOLDERS[damage]
    spoil(folder)
    before = snapshot(tmp_path)
    # Downloading is allowed: an existing folder must still never be replaced.
    datamodule = fake_module(tmp_path, download=True, mirrors=["http://127.0.0.1:9/none"])

    datamodule.prepare_data()
    with pytest.raises(error, match=message):
        datamodule.setup()

    assert snapshot(tmp_path) == before
    assert datamodule.train_set is None


def test_wrong_image_counts_are_reported(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)

    with pytest.raises(DataFileError, match=r"expected 50000 training and 10000 test images, "
                                            r"found 100 \(data_batch_1: 20"):
        fake_module(tmp_path, expected_counts=(50_000, 10_000)).setup()


def test_missing_folder_without_download_explains_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"(?s)not found\. Downloading is off.*tar"):
        fake_module(tmp_path).prepare_data()
    assert list(tmp_path.iterdir()) == []


def test_one_kilobyte_archive_on_disk_is_reported_not_deleted(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(1022))
    before = snapshot(tmp_path)

    with pytest.raises(DataFileError, match=r"cifar-10-python\.tar\.gz: expected md5 .* \(1024 "
                                            r"bytes\).*Delete it to download it again"):
        fake_module(tmp_path, download=True).prepare_data()

    assert snapshot(tmp_path) == before


def test_one_kilobyte_archive_with_matching_md5_fails_extraction_cleanly(tmp_path: Path) -> None:
    source = write_fake_cifar(tmp_path / "source")
    full = tmp_path / "full.tar.gz"
    build_archive(full, source)
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    archive.write_bytes(full.read_bytes()[:1024])
    before = snapshot(root)

    with pytest.raises(DataFileError, match=r"cifar-10-python\.tar\.gz: .*cannot be read to the "
                                            r"end.*download it again"):
        fake_module(root, download=True, md5=hashlib.md5(archive.read_bytes()).hexdigest()
                    ).prepare_data()

    assert snapshot(root) == before
    assert [p.name for p in root.iterdir()] == [archive.name]


def _unsafe_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        payload = b"harmless"
        entry = tarfile.TarInfo(f"{FOLDER_NAME}/data_batch_1")
        entry.size = len(payload)
        tar.addfile(entry, io.BytesIO(payload))
        if kind == "dotdot":
            bad = tarfile.TarInfo(f"{FOLDER_NAME}/../../escaped.txt")
            bad.size = len(payload)
            tar.addfile(bad, io.BytesIO(payload))
        elif kind == "absolute":
            bad = tarfile.TarInfo("/tmp/escaped-absolute.txt")
            bad.size = len(payload)
            tar.addfile(bad, io.BytesIO(payload))
        elif kind == "symlink":
            bad = tarfile.TarInfo(f"{FOLDER_NAME}/test_batch")
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(bad)
        elif kind == "hardlink":
            bad = tarfile.TarInfo(f"{FOLDER_NAME}/test_batch")
            bad.type, bad.linkname = tarfile.LNKTYPE, "/etc/passwd"
            tar.addfile(bad)
        elif kind == "device":
            bad = tarfile.TarInfo(f"{FOLDER_NAME}/null")
            bad.type = tarfile.CHRTYPE
            tar.addfile(bad)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_unsafe_archive_members_are_refused_before_writing(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    _unsafe_tar(archive, kind)
    before = snapshot(tmp_path)

    with pytest.raises(DataFileError, match=r"refusing to extract unsafe members.*Nothing was "
                                            r"extracted"):
        fake_module(root, download=True, md5=hashlib.md5(archive.read_bytes()).hexdigest()
                    ).prepare_data()

    assert snapshot(tmp_path) == before
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == [archive.name]


def test_archive_with_damaged_batch_is_not_installed(tmp_path: Path) -> None:
    source = write_fake_cifar(tmp_path / "source")
    (source / "data_batch_5").write_bytes(b"not a pickle")
    archive = tmp_path / "data.tar.gz"
    build_archive(archive, source)

    with pytest.raises(DataFileError, match=r"holds a damaged dataset: .*data_batch_5"):
        extract_folder(archive, tmp_path, expected_counts=None)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tar.gz", "source"]


def test_read_only_data_directory_loads(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path)
    before = snapshot(tmp_path)
    for path in (folder, tmp_path):
        path.chmod(0o555)
    try:
        datamodule = fake_module(tmp_path, download=True)
        datamodule.prepare_data()
        datamodule.setup()
    finally:
        for path in (tmp_path, folder):
            path.chmod(0o755)

    assert len(datamodule.test_set) == PER_BATCH
    assert snapshot(tmp_path) == before


# Download from a mirror served on 127.0.0.1


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 for the length of a test, and its address."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_from_local_mirror_extracts_and_loads(
        tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, address = http_root
    md5 = build_archive(served / "cifar-10-python.tar.gz",
                        write_fake_cifar(tmp_path / "source", style="bytes"))
    root = tmp_path / "data"
    datamodule = fake_module(root, download=True, md5=md5, mirrors=[
        f"{address}/nowhere/cifar-10-python.tar.gz", f"{address}/cifar-10-python.tar.gz"])

    datamodule.prepare_data()
    datamodule.setup()

    assert sorted(p.name for p in root.iterdir()) == [FOLDER_NAME, "cifar-10-python.tar.gz"]
    assert len(datamodule.train_set) == 5 * PER_BATCH - 10
    assert torch.equal(datamodule.test_set.images,
                       torch.from_numpy(fake_images(PER_BATCH, 5)).view(-1, 3, 32, 32))
    again = fake_module(root, download=True, md5=md5, mirrors=[f"{address}/gone.tar.gz"])
    again.prepare_data()  # The folder is there: no second download is attempted.


def test_mirror_serving_one_kilobyte_fails_with_every_attempt_listed(
        tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, address = http_root
    (served / "cifar-10-python.tar.gz").write_bytes(bytes(1024))
    root = tmp_path / "data"
    datamodule = fake_module(root, download=True, mirrors=[
        f"{address}/missing.tar.gz", f"{address}/cifar-10-python.tar.gz"])

    with pytest.raises(DatasetNotFoundError) as info:
        datamodule.prepare_data()

    message = str(info.value)
    assert "missing.tar.gz: HTTP 404" in message and "md5 mismatch" in message
    assert "To install it by hand" in message
    assert not root.exists()  # the folder made for the download is removed again


# Augmentation


def test_augmentation_keeps_shape_dtype_and_labels(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    datamodule = fake_module(tmp_path, augment=True, crop_padding=4)
    datamodule.setup()
    images, labels = datamodule.train_set[list(range(16))]
    datamodule.trainer = SimpleNamespace(training=True)  # type: ignore[assignment]

    augmented = datamodule.augment(images)  # type: ignore[misc]
    normalized, same_labels = datamodule.on_after_batch_transfer((images, labels), 0)

    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    assert normalized.shape == images.shape and normalized.dtype == torch.float32
    assert torch.equal(same_labels, labels)


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_each_augmented_image_is_a_shifted_possibly_mirrored_crop(pad_mode: str) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    padding = 3
    mode = "constant" if pad_mode == "zeros" else "reflect"
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode=mode)

    out = RandomCropFlip(padding, pad_mode)(images)

    flipped = 0
    for k in range(len(images)):
        crops = {(dy, dx, flip) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                 for flip in (False, True)
                 if torch.equal(out[k], (lambda c, f: c.flip(-1) if f else c)(
                     padded[k, :, dy:dy + 32, dx:dx + 32], flip))}
        assert crops, f"image {k} is not a crop of its padded original"
        flipped += all(flip for _, _, flip in crops)
    assert 16 < flipped < 48


def test_augmentation_is_reproducible_under_a_seed() -> None:
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    augment = RandomCropFlip(4, "reflect")

    L.seed_everything(7)
    first = augment(images)
    L.seed_everything(7)
    second = augment(images)
    L.seed_everything(8)
    third = augment(images)

    assert torch.equal(first, second)
    assert not torch.equal(first, third)


# Real data


@pytest.fixture(scope="module")
def real_cifar10(cifar10_dir: Path) -> CIFAR10DataModule:
    datamodule = CIFAR10DataModule(data_dir=str(cifar10_dir), download=False)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def test_real_data_sizes_and_classes(real_cifar10: CIFAR10DataModule) -> None:
    dm = real_cifar10
    assert dm.train_set is not None and dm.val_set is not None and dm.test_set is not None

    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45_000, 5_000, 10_000)
    assert dm.train_set.images.shape == (45_000, 3, 32, 32)
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.labels.dtype == torch.int64
    assert dm.classes == CLASSES
    train_counts = torch.bincount(torch.cat([dm.train_set.labels, dm.val_set.labels]))
    assert train_counts.tolist() == [5_000] * 10
    assert torch.bincount(dm.test_set.labels).tolist() == [1_000] * 10


def test_real_data_split_has_no_overlap_and_is_seeded(real_cifar10: CIFAR10DataModule) -> None:
    from data_modules.base import split_indices

    train_idx, val_idx = split_indices(50_000, 5_000, seed=0)

    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 50_000
    arrays = real_cifar10._arrays
    assert arrays is not None
    assert torch.equal(real_cifar10.val_set.images, arrays.train_images[val_idx])
    assert torch.equal(real_cifar10.test_set.images, arrays.test_images)


def test_real_data_colour_statistics_match_the_normalisation(
        real_cifar10: CIFAR10DataModule) -> None:
    images = real_cifar10.train_set.images[:10_000].float() / 255

    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))

    # Red is the brightest channel of CIFAR-10 and blue the darkest: a swapped decoding fails.
    assert torch.allclose(mean, torch.tensor(CIFAR10DataModule.mean), atol=0.01)
    assert torch.allclose(std, torch.tensor(CIFAR10DataModule.std), atol=0.01)
