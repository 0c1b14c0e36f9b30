"""Verified, atomic, lock-protected downloads shared by the data modules.

A download is streamed into a hidden temporary file beside its destination while its md5 is
computed, and renamed to the final name only after the checksum matches. An interrupted or
corrupted transfer therefore never leaves a file under the final name. Mirrors are tried in
turn and every failure is reported together.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "lightning-course-downloader/1.0"


class DownloadFailed(RuntimeError):
    """Every mirror failed for one file; ``attempts`` lists ``(url, reason)`` pairs."""

    def __init__(self, filename: str, attempts: list[tuple[str, str]]) -> None:
        self.filename = filename
        self.attempts = attempts
        tried = "; ".join(f"{url} ({reason})" for url, reason in attempts)
        super().__init__(f"could not download {filename}: {tried}")


def describe_attempts(attempts: Sequence[tuple[str, str]]) -> str:
    """One line per failed download attempt, or why nothing was tried, for error messages."""
    if not attempts:
        return "Downloading is off (download=False, or --no-download)."
    return "Tried:" + "".join(f"\n  {url}: {reason}" for url, reason in attempts)


def md5sum(path: Path) -> str:
    """Returns the hex md5 digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def download_lock(directory: Path, timeout: float = 3600.0) -> Iterator[None]:
    """Holds an inter-process lock on ``directory`` so parallel processes download once.

    The lock file lives in the system's temporary folder, named after the resolved
    ``directory``, so no lock file is left in the data folder. While the lock is held,
    ``directory`` is created if missing, and the folders made for it are removed again on
    the way out if they are still empty, so a failed download leaves no empty folders.

    Only processes that share the temporary folder exclude each other (those of one machine,
    as a rule). Others, on other machines of a cluster, may download the same file at once;
    each file still arrives whole, by an atomic rename.

    Args:
        directory: The folder that downloads are written to.
        timeout: Seconds to wait for another process that holds the lock.
    """
    directory = directory.resolve()
    key = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"lightning-course-download-{key}.lock"
    # Writable by every user, so that one user's lock never blocks another's download.
    with FileLock(str(lock), timeout=timeout, mode=0o666):
        created = [folder for folder in (directory, *directory.parents) if not folder.exists()]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            yield
        finally:
            for folder in created:  # deepest first; rmdir refuses folders that hold anything
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _fetch(url: str, destination: Path, md5: str, timeout: float, progress: bool) -> None:
    """Streams ``url`` into a temporary file and renames it to ``destination`` if md5 matches."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part",
                                    dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name,
                      disable=not progress, leave=False) as bar:
                for chunk in iter(lambda: resp.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise OSError(f"transfer ended after {out.tell()} of {total} bytes")
        if digest.hexdigest() != md5:
            raise OSError(f"md5 mismatch: expected {md5}, got {digest.hexdigest()}")
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def download_file(
    urls: Sequence[str],
    destination: Path,
    md5: str,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Downloads one file from the first mirror that serves it with the right checksum.

    Args:
        urls: Full addresses of the file, tried in order.
        destination: Final path; written only once the md5 has been verified.
        md5: Expected hex md5 of the downloaded bytes.
        timeout: Socket timeout in seconds for each attempt.
        progress: Whether to show a progress bar.

    Returns:
        The address the file came from.

    Raises:
        DownloadFailed: No mirror delivered the file intact; lists every attempt.
    """
    attempts: list[tuple[str, str]] = []
    for url in urls:
        log.info("Downloading %s", url)
        try:
            _fetch(url, destination, md5, timeout, progress)
        except urllib.error.HTTPError as err:
            attempts.append((url, f"HTTP {err.code} {err.reason}"))
        except (urllib.error.URLError, OSError, ValueError) as err:
            attempts.append((url, str(getattr(err, "reason", err))))
        else:
            return url
        log.warning("Download of %s failed: %s", url, attempts[-1][1])
    raise DownloadFailed(destination.name, attempts)
