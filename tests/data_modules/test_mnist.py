import gzip
import hashlib
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_modules.base import split_indices
from data_modules.download import md5sum
from data_modules.errors import DataFileError, DatasetNotFoundError
from data_modules.mnist import MNIST_FILES, MNISTDataModule
from tests.mirror import Mirror, serve

STEMS = list(MNIST_FILES)


def idx_bytes(values: torch.Tensor, magic: int) -> bytes:
    """Encodes uint8 images (N x 28 x 28) or labels (N) in the IDX format."""
    header = magic.to_bytes(4, "big") + len(values).to_bytes(4, "big")
    for size in values.shape[1:]:
        header += size.to_bytes(4, "big")
    return header + values.numpy().tobytes()


def fake_mnist_files(n_train: int = 40, n_test: int = 20) -> dict[str, bytes]:
    """Uncompressed IDX payloads of a tiny MNIST whose pixels encode each image's position."""
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.zeros(n, 28, 28, dtype=torch.uint8)
        images[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
        images[:, 27, 27] = 255
        files[f"{split}-images-idx3-ubyte"] = idx_bytes(images, 2051)
        files[f"{split}-labels-idx1-ubyte"] = idx_bytes(torch.arange(n, dtype=torch.uint8) % 10,
                                                         2049)
    return files


def write_fake_mnist(folder: Path, **kwargs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, payload in fake_mnist_files(**kwargs).items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# The real MNIST.


@pytest.fixture(scope="module")
def real_mnist(mnist_dir):
    before = snapshot(mnist_dir)
    datamodule = MNISTDataModule(data_dir=str(mnist_dir), download=False)
    datamodule.prepare_data()
    datamodule.setup()
    yield datamodule
    assert snapshot(mnist_dir) == before, "the data module wrote into the data directory"


def test_real_split_sizes_and_no_overlap(real_mnist):
    train, val, test = real_mnist.train_set, real_mnist.val_set, real_mnist.test_set
    train_idx, val_idx = split_indices(60_000, 5_000, seed=0)

    assert (len(train), len(val), len(test)) == (55_000, 5_000, 10_000)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 60_000


def test_real_shapes_dtypes_and_test_class_counts(real_mnist):
    images, labels = next(iter(real_mnist.train_dataloader()))

    assert images.shape == (128, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (128,) and labels.dtype == torch.int64
    assert real_mnist.test_set.labels.bincount().tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(real_mnist.train_set.labels.max()) == 9


def test_normalised_black_and_white_pixels(real_mnist):
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    black, white = real_mnist.normalize(pixels).flatten().tolist()

    assert black == pytest.approx(-0.1307 / 0.3081, abs=1e-5)  # -0.4242
    assert white == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)  # 2.8215
    batch = real_mnist.on_after_batch_transfer(next(iter(real_mnist.val_dataloader())), 0)
    assert batch[0].dtype == torch.float32 and batch[0].min() == pytest.approx(black)


def test_split_is_identical_across_processes():
    code = ("from data_modules.base import split_indices; import hashlib;"
            "t, v = split_indices(60000, 5000, 0);"
            "print(hashlib.md5(v.numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    here = hashlib.md5(split_indices(60000, 5000, 0)[1].numpy().tobytes()).hexdigest()

    assert out.stdout.strip() == here
    assert not torch.equal(split_indices(60000, 5000, 1)[1], split_indices(60000, 5000, 0)[1])


def test_shared_test_labels_match_the_official_checksum(mnist_dir):
    path = mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    assert md5sum(path) == MNIST_FILES["t10k-labels-idx1-ubyte"]


# Reading files in both layouts and both compressions.


@pytest.mark.parametrize("layout", ["root", "torchvision"])
@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
def test_reads_both_layouts_and_compressions(tmp_path, layout, compressed):
    folder = tmp_path if layout == "root" else tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, payload in fake_mnist_files().items():
        if compressed:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, download=False)
    dm.setup()

    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 20)
    # Pixel (0, 0) encodes each image's position, so labels must stay aligned with images.
    assert torch.equal(dm.test_set.images[:, 0, 0, 0].long() % 10, dm.test_set.labels)
    assert torch.equal(dm.train_set.images[:, 0, 0, 0].long() % 10, dm.train_set.labels)


# Bad input: each case names the file, says what was expected and found, and leaves the folder.


def _corrupt(folder: Path, case: str) -> tuple[Path, str]:
    files = fake_mnist_files()
    labels = folder / "train-labels-idx1-ubyte.gz"
    images = folder / "train-images-idx3-ubyte.gz"
    if case == "truncated-gzip":
        images.write_bytes(images.read_bytes()[:200])
        return images, "truncated or corrupted gzip"
    if case == "html-page":
        images.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
        return images, "HTML"
    if case == "zero-bytes":
        images.write_bytes(b"")
        return images, "is empty"
    if case == "gzip-under-plain-name":
        images.unlink()
        plain = folder / "train-images-idx3-ubyte"
        plain.write_bytes(gzip.compress(files["train-images-idx3-ubyte"]))
        return plain, "Rename it to train-images-idx3-ubyte.gz"
    if case == "label-10":
        payload = bytearray(files["train-labels-idx1-ubyte"])
        payload[8 + 7] = 10
        labels.write_bytes(gzip.compress(bytes(payload)))
        return labels, "found 10 at position 7"
    if case == "swapped-files":
        images.write_bytes(gzip.compress(files["train-labels-idx1-ubyte"]))
        return images, "expected IDX magic number 2051 for images, found 2049"
    if case == "header-count":
        payload = bytearray(files["train-images-idx3-ubyte"])
        payload[4:8] = (41).to_bytes(4, "big")
        images.write_bytes(gzip.compress(bytes(payload)))
        return images, "announces 41 images"
    if case == "wrong-size":
        payload = bytearray(files["train-images-idx3-ubyte"])
        payload[8:12] = (32).to_bytes(4, "big")
        images.write_bytes(gzip.compress(bytes(payload)))
        return images, "expected 28 x 28 images, found 32 x 28"
    if case == "count-mismatch":
        labels.write_bytes(gzip.compress(fake_mnist_files(n_train=39)["train-labels-idx1-ubyte"]))
        return labels, "holds 40 images but .* holds 39 labels"
    raise AssertionError(case)


BAD_CASES = ["truncated-gzip", "html-page", "zero-bytes", "gzip-under-plain-name", "label-10",
             "swapped-files", "header-count", "wrong-size", "count-mismatch"]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("download", [False, True], ids=["offline", "download-allowed"])
def test_bad_files_give_a_clear_error_and_change_nothing(tmp_path, case, download):
    folder = write_fake_mnist(tmp_path)
    bad_file, expected = _corrupt(folder, case)
    before = snapshot(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, download=download,
                         mirrors=["http://127.0.0.1:9/unused/"])

    with pytest.raises(DataFileError, match=expected) as excinfo:
        dm.prepare_data()
        dm.setup()

    assert str(bad_file) in str(excinfo.value) or bad_file.name in str(excinfo.value)
    assert snapshot(tmp_path) == before


def test_missing_files_offline_list_files_and_where_to_put_them(tmp_path):
    folder = write_fake_mnist(tmp_path)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)

    with pytest.raises(DatasetNotFoundError) as excinfo:
        dm.prepare_data()

    message = str(excinfo.value)
    assert "t10k-images-idx3-ubyte" in message and "train-images" not in message.split(".")[0]
    assert str((tmp_path / "MNIST" / "raw").resolve()) in message
    assert "download=False" in message


# Downloads from a mirror served on 127.0.0.1.


@pytest.fixture
def mirror():
    m = Mirror()
    m.files = {f"{stem}.gz": gzip.compress(payload)
               for stem, payload in fake_mnist_files().items()}
    with serve(m):
        yield m


def _md5s(mirror: Mirror) -> dict[str, str]:
    return {stem: hashlib.md5(mirror.files[f"{stem}.gz"]).hexdigest() for stem in STEMS}


def test_download_verifies_md5_and_loads(tmp_path, mirror):
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, mirrors=[mirror.url("a")],
                         md5s=_md5s(mirror))
    dm.prepare_data()
    dm.setup()

    raw = tmp_path / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    assert len(dm.test_set) == 20
    assert not list(raw.glob("*.part"))


def test_first_mirror_forbidden_second_used(tmp_path, mirror):
    mirror.failing["bad"] = 403
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10,
                         mirrors=[mirror.url("bad"), mirror.url("good")], md5s=_md5s(mirror))
    dm.prepare_data()

    assert all(mirror.requests[f"/bad/{s}.gz"] == 1 for s in STEMS)
    assert all(mirror.requests[f"/good/{s}.gz"] == 1 for s in STEMS)
    assert dm.missing_files() == []


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_download_leaves_no_file_under_the_final_name(tmp_path, mirror, damage):
    md5s = _md5s(mirror)
    name = "train-images-idx3-ubyte.gz"
    if damage == "corrupted":
        mirror.files[name] = mirror.files[name][:-8] + b"\x00" * 8
    else:
        mirror.truncate.add(name)
    dm = MNISTDataModule(data_dir=str(tmp_path), mirrors=[mirror.url("a")], md5s=md5s)

    with pytest.raises(DatasetNotFoundError) as excinfo:
        dm.prepare_data()

    raw = tmp_path / "MNIST" / "raw"
    assert not (raw / name).exists()
    assert not list(raw.glob("*.part"))
    assert mirror.url("a") + name in str(excinfo.value)
    reason = "md5 mismatch" if damage == "corrupted" else "transfer ended after"
    assert reason in str(excinfo.value)


def test_unreachable_mirrors_are_all_reported_and_nothing_is_left_behind(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "data"),
                         mirrors=["http://127.0.0.1:9/x/", "http://127.0.0.1:9/y/"])
    with pytest.raises(DatasetNotFoundError) as excinfo:
        dm.prepare_data()

    message = str(excinfo.value)
    for stem in STEMS:
        assert f"http://127.0.0.1:9/x/{stem}.gz" in message
        assert f"http://127.0.0.1:9/y/{stem}.gz" in message
    # The folders made for the download are gone again.
    assert list(tmp_path.iterdir()) == []


def _prepare(data_dir: str, url: str, md5s: dict[str, str]) -> None:
    MNISTDataModule(data_dir=data_dir, mirrors=[url], md5s=md5s).prepare_data()


def test_parallel_prepare_data_downloads_once(tmp_path, mirror):
    # Forked workers start in milliseconds, so all three race for the lock.
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_prepare, args=(str(tmp_path), mirror.url("a"),
                                                      _md5s(mirror))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)

    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert all(mirror.requests[f"/a/{s}.gz"] == 1 for s in STEMS)
