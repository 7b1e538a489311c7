"""Files on disk: free space before a long step, checksums, and safe extraction of archives.

``check_free_space`` fails at once with a number instead of hours later with a full disk.
``extract`` unpacks zip and tar archives into a temporary folder beside ``dest`` and renames
it at the end; it refuses any member that would land outside ``dest`` (absolute paths, ``..``)
and every link member (symlinks and hardlinks: the datasets have none, so none is allowed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

EXTRACTED_MARKER = ".sat-extracted"


class UnsafeArchiveError(ValueError):
    """An archive member that would land outside the extraction folder, or is a link."""


class NotEnoughDiskError(OSError):
    """A long step would not fit on the disk: the message says how much it needs and where."""


# ---------------------------------------------------------------- disk space


def check_free_space(folder: str | Path, needed: int, what: str) -> None:
    """Raise NotEnoughDiskError unless ``folder``'s disk has ``needed`` bytes free for ``what``.

    Called before each long step (download, extraction, preparation, feature cache), so that
    it fails at once with a number instead of hours later with a full disk.
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise NotEnoughDiskError(
            f"{what} needs {_bytes(needed)} free in {folder}, but that disk has only "
            f"{_bytes(free)} free. Free some space there, or point SAT_DATA at a bigger disk "
            "(on Colab, the runtime's own disk has about 80 GB free; a mounted Drive is slower).")


def _bytes(n: int) -> str:
    """A byte count as a learner reads it: 12.3 GB, 4.5 MB, 678 bytes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# ---------------------------------------------------------------- checksums


def _size(path: Path) -> int:
    """The size of ``path`` in bytes, 0 when it does not exist."""
    return path.stat().st_size if path.exists() else 0


def _check_file(path: Path, sha256: str | None, md5: str | None, size: int | None) -> str | None:
    """What is wrong with ``path`` (size, sha256, md5), naming both values; None when right."""
    if size is not None and _size(path) != size:
        return f"expected {size} bytes, got {_size(path)} bytes"
    for name, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = file_hash(path, name)
            if actual != expected.lower():
                return f"expected {name} {expected.lower()}, got {name} {actual}"
    return None


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks (a progress bar for big files)."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f, tqdm(total=_size(path), unit="B", unit_scale=True,
                                     desc=f"{algorithm} {path.name}",
                                     disable=_size(path) < 1 << 28) as bar:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------- extract


def extract(archive: str | Path, dest: str | Path, subdir: str | None = None) -> Path:
    """Safely unpack a zip or tar(.gz) into ``dest``; atomic, and a no-op once complete.

    With ``subdir``, only the members under that archive folder are kept, without the prefix
    (``extract("train2014.zip", "coco/train2014", subdir="train2014")``). Every member is checked
    before anything is written; a member that would escape ``dest`` or is a link is refused.
    """
    archive, dest = Path(archive), Path(dest)
    if (dest / EXTRACTED_MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(
            f"{dest} exists but was not completed by extract() (no {EXTRACTED_MARKER} file in "
            "it): move it away or delete it, then run again."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run: never trusted
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        _unpack(archive, tmp, subdir)
        (tmp / EXTRACTED_MARKER).write_text(
            json.dumps({"archive": archive.name, "bytes": _size(archive), "subdir": subdir}))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _unpack(archive: Path, out: Path, subdir: str | None) -> None:
    """Check every member of a zip or tar archive, then write the kept ones under ``out``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [(i.filename, _zip_kind(i), i) for i in zf.infolist()]
            _write_members(archive, out, subdir, members, zf.open)
    elif archive.is_file() and tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [(m.name, _tar_kind(m), m) for m in tf.getmembers()]
            _write_members(archive, out, subdir, members, tf.extractfile)
    else:
        raise ValueError(
            f"{archive} is not a zip or tar archive (missing, corrupt, or an incomplete "
            "download?): delete it and download it again."
        )


def _zip_kind(info: zipfile.ZipInfo) -> str:
    """'dir', 'file' or 'link' for a zip member (links carry S_IFLNK in their Unix mode)."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return "link"
    return "dir" if info.is_dir() else "file"


def _tar_kind(member: tarfile.TarInfo) -> str:
    """'dir', 'file', 'link' (symlink or hardlink) or 'special' (device, fifo) for a tar member."""
    if member.issym() or member.islnk():
        return "link"
    if member.isdir():
        return "dir"
    return "file" if member.isfile() else "special"


def _unsafe_reason(name: str, kind: str, out: Path) -> str | None:
    """Why a member may not be extracted under ``out``, or None when it is safe."""
    norm = name.replace("\\", "/")
    if kind == "link":
        return "is a link (links are refused: they could point outside the folder)"
    if kind == "special":
        return "is a device or fifo, not a file"
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "has an absolute path"
    if ".." in norm.split("/"):
        return "contains '..' and would land outside the folder"
    if not (out / norm).resolve().is_relative_to(out.resolve()):
        return "would land outside the folder"
    return None


def _write_members(archive: Path, out: Path, subdir: str | None, members: list[tuple],
                   open_member: Callable[[Any], IO[bytes]]) -> None:
    """Refuse the archive if any member is unsafe, else write the kept members under ``out``."""
    for name, kind, _ in members:
        reason = _unsafe_reason(name, kind, out)
        if reason:
            raise UnsafeArchiveError(
                f"Refusing to extract {archive}: member {name!r} {reason}. Nothing was "
                "extracted. The archive is corrupt or malicious: delete it and download it "
                "again from a trusted source."
            )
    prefix = subdir.strip("/") + "/" if subdir else ""
    names = [(re.sub(r"^(\./)+", "", name), kind, m) for name, kind, m in members]
    kept = [(name[len(prefix):], kind, m) for name, kind, m in names
            if name.startswith(prefix) and name[len(prefix):].strip("/")]
    if not kept:
        tops = sorted({name.split("/")[0] for name, _, _ in members})
        raise ValueError(f"{archive} has no member under {subdir!r}; its top level: {tops}.")
    needed = sum(getattr(m, "file_size", getattr(m, "size", 0)) for _, kind, m in kept
                 if kind == "file")
    check_free_space(out, needed, f"extracting {archive.name}")
    for rel, kind, member in tqdm(kept, desc=f"extract {archive.name}", unit="file"):
        target = out / rel
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
