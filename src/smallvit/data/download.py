"""Fetching upstream files (any URL urllib opens, ``file://`` included) with checksum checks, and unpacking archives."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from smallvit.errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def download(url: str, dest: Path, checksum: str) -> Path:
    """Fetch ``url`` to ``dest`` and check it against ``checksum`` ("md5:<hex>" or "sha256:<hex>").

    The file is written to a temporary name and renamed only once it is complete and verified.
    """
    algorithm, expected = checksum.split(":")
    digest = hashlib.new(algorithm)
    tmp = dest.with_name(f"{dest.name}.part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as err:  # URLError, timeouts and disk errors are all OSErrors
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not download {url} ({err}): check the connection, or fetch it by hand and pass --source"
        ) from err
    if digest.hexdigest() != expected:
        tmp.unlink()
        actual = digest.hexdigest()
        raise DataError(
            f"{url} has {algorithm} {actual}, expected {expected}: download again, or fetch it and pass --source"
        )
    os.replace(tmp, dest)
    return dest


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest ("md5" or "sha256") of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_local(path: Path, checksum: str) -> None:
    """Check a user's copy of an upstream file against its published ``checksum`` ("md5:<hex>" or "sha256:<hex>")."""
    algorithm, expected = checksum.split(":")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"{path} has {algorithm} {actual}, expected {expected}: it is not the official file; "
            "pass --no-verify to prepare a repacked copy anyway"
        )


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _refuse_escaping_members(archive: tarfile.TarFile, dest: Path) -> None:
    root = dest.resolve()
    for member in archive.getmembers():
        target = (dest / member.name).resolve()
        if member.issym() or member.islnk() or not target.is_relative_to(root):
            raise DataError(f"archive member {member.name!r} would leave {dest}: the archive is not safe to unpack")


def extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar, .tar.gz, .tgz or .zip into ``dest``; members that would land outside ``dest`` are refused."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuses links and paths leaving dest
                    t.extractall(dest, filter="data")
                else:
                    _refuse_escaping_members(t, dest)
                    t.extractall(dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot unpack {archive} ({err}): fetch the archive again") from err
