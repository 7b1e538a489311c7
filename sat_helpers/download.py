"""Downloads of the real datasets: resumable, retried, checksummed, safely extracted.

``download_url`` streams to ``<dest>.part`` (resumed with an HTTP Range request after a cut)
and renames to ``dest`` only once the checksum matches, so a file at ``dest`` can be trusted.
Archives are unpacked by :func:`sat_helpers.archives.extract` (safe, atomic).

The dataset functions return :class:`DatasetFiles` (Karpathy JSON, image folder), ready for
``sat_helpers.data.prepare_dataset``. Layout under ``root`` (``data_root()/raw`` in the course)::

    karpathy/dataset_{flickr8k,flickr30k,coco}.json   Karpathy splits (auto, or put by hand)
    flickr8k/images/*.jpg                             Flickr8k (auto)
    flickr8k/dataset_flickr8k_official.json           only when no Karpathy copy answers
    flickr30k/flickr30k-images/*.jpg                  Flickr30k (licence form: put by hand)
    coco/train2014/*.jpg, coco/val2014/*.jpg          COCO 2014 (auto, 19 GB)

Base URLs are module constants so that a mirror (or the tests' local server) can replace them.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from .archives import (  # noqa: F401 - re-exported: download.extract etc. as before
    EXTRACTED_MARKER,
    NotEnoughDiskError,
    UnsafeArchiveError,
    _check_file,
    _size,
    check_free_space,
    extract,
    file_hash,
)

USER_AGENT = "sat-course/0.1 (+https://github.com/sat-course/show-attend-tell)"
RETRIES = 5
RETRY_BACKOFF = 1.0
"""Seconds before the first retry; doubled at each next one (1, 2, 4, 8, 16 s)."""
TIMEOUT = 60.0
RETRY_STATUS = (408, 429, 500, 502, 503, 504)

FLICKR8K_BASE_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
FLICKR8K_MD5 = {  # as pinned by the mlverse/torchvision R package for these release files
    "Flickr8k_Dataset.zip": "f18a1e2920de5bd84dae7cf08ec78978",
    "Flickr8k_text.zip": "bf6c1abcb8e4a833b7f922104de18627",
}
COCO_BASE_URL = "http://images.cocodataset.org/zips"
COCO_MD5 = {  # the md5 sums published with COCO 2014 (as in salesforce/LAVIS)
    "train2014": "0da8c0bd3d6becc4dcb32757491aca88",  # 13.5 GB
    "val2014": "a3d79f5ed8d289b7a7554ce06a5782b3",  # 6.6 GB
}
FLICKR30K_FORM = "https://forms.illinois.edu/sec/229675"

KARPATHY_ORIGINAL_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
"""The original link: dead (kept for the error message only)."""
KARPATHY_GITHUB_BASE = (
    "https://github.com/Delphboy/karpathy-splits/raw/89f5ec1e45369152415aa3f676d10a2ac56b37ac"
)
"""A GitHub copy of the three JSON files (Git LFS), pinned at a commit so the hashes hold."""
KARPATHY_FILES = {  # dataset: (file name in the GitHub copy, sha256, size in bytes) from its LFS
    "flickr8k": (
        "dataset_flickr8k.json",
        "c87925adfdb28e649d26194b6d3d8e12449ad1bc75ac89a9f4e68e1d3fae7cc0",
        26_366_489,
    ),
    "flickr30k": (
        "dataset_flickr32k.json",
        "64c85af0e9d187091cb88890e56b3f640ac48386196a930d3ff8433d73165135",
        111_042_326,
    ),
    "coco": (
        "dataset_coco.json",
        "af76e819987c9ced8452fdb4da823524e033f7baa097cf40bab83bdab4c469ea",
        408_860_810,
    ),
}
KARPATHY_ZIP_URL = (
    "https://huggingface.co/datasets/gpantaz/karpathy_split/resolve/main/caption_datasets.zip"
)
"""A Hugging Face copy of caption_datasets.zip (no published checksum: size not checked)."""
KARPATHY_KAGGLE_PAGE = "https://www.kaggle.com/datasets/shtvkumar/karpathy-splits"
"""Needs a Kaggle login, so it is only offered in the by-hand instructions."""


class DownloadError(RuntimeError):
    """A download that failed for good (after its retries, or with a permanent HTTP error)."""


class ChecksumError(DownloadError):
    """A downloaded file whose size or hash is not the expected one (it has been deleted)."""


class ManualDownloadRequired(FileNotFoundError):
    """A file the code cannot fetch by itself: the message says what to get and where to put it."""


class DatasetFiles(NamedTuple):
    """What prepare_dataset needs from a real dataset: its Karpathy JSON and its image folder."""

    karpathy_json: Path
    image_dir: Path


# ---------------------------------------------------------------- download_url


def download_url(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
                 size: int | None = None, retries: int | None = None, chunk_size: int = 1 << 20,
                 timeout: float | None = None, backoff: float | None = None) -> Path:
    """Download ``url`` to ``dest``: resumable, retried, and renamed only once verified.

    ``retries``, ``timeout`` (seconds per network operation) and ``backoff`` (seconds before
    the first retry, doubled at each next) default to RETRIES, TIMEOUT and RETRY_BACKOFF.
    """
    dest = Path(dest)
    retries = RETRIES if retries is None else retries
    timeout = TIMEOUT if timeout is None else timeout
    backoff = RETRY_BACKOFF if backoff is None else backoff
    if dest.exists():
        problem = _check_file(dest, sha256, md5, size)
        if problem is None:
            return dest
        tqdm.write(f"{dest} is not the expected file ({problem}): downloading it again.",
                   file=sys.stderr)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, retries, chunk_size, timeout, backoff)
    problem = _check_file(part, sha256, md5, size)
    if problem is not None:
        part.unlink()
        raise ChecksumError(
            f"{url} downloaded to {part} is not the expected file: {problem}. The file was "
            "deleted, so nothing untrusted is kept. Run again to download it afresh; if this "
            "repeats, the server now serves a different file (or a proxy alters it)."
        )
    os.replace(part, dest)
    return dest


def _fetch_with_retries(url: str, part: Path, retries: int, chunk_size: int, timeout: float,
                        backoff: float) -> None:
    """Call _fetch until it completes, waiting backoff * 2**attempt between tries."""
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, chunk_size, timeout)
            return
        except HTTPError as err:
            err.close()
            if err.code not in RETRY_STATUS:
                raise DownloadError(
                    f"Could not download {url}: HTTP {err.code} {err.reason}. Check the URL; "
                    "the file may have moved (see sat_helpers/download.py for the mirrors)."
                ) from err
            last: Exception = err
        except NotEnoughDiskError:
            raise  # retrying would not free the disk
        except (URLError, http.client.HTTPException, OSError) as err:
            last = err
        if attempt < retries:
            delay = backoff * 2**attempt
            tqdm.write(f"{url}: {last}; retry {attempt + 1}/{retries} in {delay:.1f} s "
                       f"(resuming from byte {_size(part)})", file=sys.stderr)
            time.sleep(delay)
    raise DownloadError(
        f"Could not download {url} after {retries + 1} tries (last error: {last}). The partial "
        f"file {part} is kept: run again to resume; check your network connection."
    ) from last


def _fetch(url: str, part: Path, chunk_size: int, timeout: float) -> None:
    """One request: resume ``part`` with a Range request, or restart it if the server says 200."""
    offset = _size(part)
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code != 416 or not offset:
            raise
        err.close()
        if _range_total(err.headers.get("Content-Range")) == offset:
            return  # the part file is already complete
        part.unlink()
        raise ConnectionError(f"the server refused to resume at byte {offset}; restarting") from err
    with response:
        if response.status == 206 and _range_start(response.headers.get("Content-Range")) != offset:
            part.unlink(missing_ok=True)
            raise ConnectionError("the server answered a different byte range; restarting")
        if response.status != 206:
            offset = 0  # the server ignored Range (200): start again from byte 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if length is not None:
            check_free_space(part.parent, int(length), f"downloading {url}")
        _stream(response, part, offset, total, chunk_size)


def _stream(response, part: Path, offset: int, total: int | None, chunk_size: int) -> None:
    """Write the response body to ``part`` from ``offset`` on, with a progress bar."""
    with open(part, "r+b" if offset else "wb") as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
    ) as bar:
        f.seek(offset)
        f.truncate()
        while chunk := response.read1(chunk_size):
            f.write(chunk)
            bar.update(len(chunk))
    if total is not None and _size(part) != total:
        raise ConnectionError(f"connection closed after {_size(part)} of {total} bytes")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a 'bytes START-END/TOTAL' Content-Range header."""
    match = re.match(r"bytes (\d+)-\d+/", content_range or "")
    return int(match.group(1)) if match else None


def _range_total(content_range: str | None) -> int | None:
    """The total size in a 'bytes */TOTAL' (or 'bytes A-B/TOTAL') Content-Range header."""
    match = re.search(r"/(\d+)$", content_range or "")
    return int(match.group(1)) if match else None


def _fetch_and_extract(url: str, archive: Path, dest: Path, subdir: str | None = None,
                       md5: str | None = None, keep_archive: bool = False) -> Path:
    """``dest`` unpacked from the archive at ``url``, downloading only when not yet extracted."""
    if not (dest / EXTRACTED_MARKER).is_file():
        download_url(url, archive, md5=md5)
        extract(archive, dest, subdir=subdir)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------- Karpathy splits


def download_karpathy_splits(root: str | Path, dataset: str = "flickr8k") -> Path:
    """Karpathy's ``dataset_<dataset>.json`` under ``root/karpathy``: put by hand, or fetched."""
    if dataset not in KARPATHY_FILES:
        raise ValueError(f"Unknown dataset {dataset!r}; valid: {', '.join(KARPATHY_FILES)}.")
    folder = Path(root) / "karpathy"
    target = folder / f"dataset_{dataset}.json"
    if _size(target) == 0:
        for archive in sorted(folder.glob("*.zip")):  # e.g. caption_datasets.zip put by hand
            _json_from_zip(archive, folder)
    if _size(target) > 0:
        return target
    name, sha256, size = KARPATHY_FILES[dataset]
    failures = []
    try:
        return download_url(f"{KARPATHY_GITHUB_BASE}/{name}", target, sha256=sha256, size=size)
    except DownloadError as err:
        failures.append(f"{KARPATHY_GITHUB_BASE}/{name}: {err}")
    try:
        zip_path = download_url(KARPATHY_ZIP_URL, folder / "caption_datasets.zip")
        _json_from_zip(zip_path, folder)
        zip_path.unlink()
    except (DownloadError, ValueError) as err:  # ValueError: not a zip, or an unsafe one
        failures.append(f"{KARPATHY_ZIP_URL}: {err}")
    if _size(target) > 0:
        return target
    raise ManualDownloadRequired(_karpathy_help(dataset, target, failures))


def _json_from_zip(archive: Path, folder: Path) -> None:
    """Move the dataset_*.json files of a Karpathy zip into ``folder`` (keeping existing ones)."""
    unpacked = extract(archive, folder / f".{archive.stem}.unpacked")
    for found in sorted(unpacked.rglob("dataset_*.json")):
        name = "dataset_flickr30k.json" if found.name == "dataset_flickr32k.json" else found.name
        if _size(folder / name) == 0:
            os.replace(found, folder / name)
    shutil.rmtree(unpacked)


def _karpathy_help(dataset: str, target: Path, failures: list[str]) -> str:
    """The by-hand instructions for Karpathy's split file, with why each mirror failed."""
    tried = "\n".join(f"  - {line}" for line in failures)
    return (
        f"Karpathy's split file dataset_{dataset}.json could not be downloaded.\n"
        f"Tried:\n{tried}\n"
        f"The original {KARPATHY_ORIGINAL_URL} is offline. Get caption_datasets.zip (it holds "
        f"dataset_flickr8k.json, dataset_flickr30k.json and dataset_coco.json) from one of:\n"
        f"  - {KARPATHY_ZIP_URL}\n"
        f"  - {KARPATHY_KAGGLE_PAGE} (needs a Kaggle login, so it cannot be fetched for you)\n"
        f"  - {KARPATHY_GITHUB_BASE}/{KARPATHY_FILES[dataset][0]} (this JSON file alone)\n"
        f"Then put dataset_{dataset}.json at {target}\n"
        f"(or put the .zip itself in {target.parent}/) and run this again."
    )


# ---------------------------------------------------------------- datasets


def download_flickr8k(root: str | Path) -> DatasetFiles:
    """Flickr8k images (1 GB) and Karpathy's splits under ``root``; a no-op once done."""
    base = Path(root) / "flickr8k"
    text = _fetch_and_extract(f"{FLICKR8K_BASE_URL}/Flickr8k_text.zip", base / "Flickr8k_text.zip",
                              base / "text", md5=FLICKR8K_MD5["Flickr8k_text.zip"])
    try:
        karpathy_json = download_karpathy_splits(root, "flickr8k")
    except ManualDownloadRequired as err:
        karpathy_json = _flickr8k_official_json(text, base / "dataset_flickr8k_official.json")
        warnings.warn(f"{err}\nMeanwhile the official Flickr8k splits (6000/1000/1000 images "
                      f"of Flickr8k_text.zip) are used instead: {karpathy_json}", stacklevel=2)
    zip_name = "Flickr8k_Dataset.zip"
    images = _fetch_and_extract(f"{FLICKR8K_BASE_URL}/{zip_name}", base / zip_name, base / "images",
                                subdir="Flicker8k_Dataset", md5=FLICKR8K_MD5[zip_name])
    return DatasetFiles(karpathy_json, images)


def _flickr8k_official_json(text_dir: Path, out: Path) -> Path:
    """A Karpathy-format JSON built from Flickr8k_text's captions and official split lists."""
    captions: dict[str, list[str]] = {}
    for line in (text_dir / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, _, raw = line.partition("\t")
        if raw.strip():
            captions.setdefault(key.split("#")[0], []).append(raw.strip())
    images, sentid = [], 0
    for split, list_name in (("train", "Flickr_8k.trainImages.txt"),
                             ("val", "Flickr_8k.devImages.txt"),
                             ("test", "Flickr_8k.testImages.txt")):
        for filename in (text_dir / list_name).read_text(encoding="utf-8").split():
            imgid = len(images)
            sentences = [{"raw": raw, "tokens": re.findall(r"[a-z0-9]+", raw.lower()),
                          "imgid": imgid, "sentid": sentid + k}
                         for k, raw in enumerate(captions.get(filename, []))]
            images.append({"filename": filename, "imgid": imgid, "split": split,
                           "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
            sentid += len(sentences)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    os.replace(tmp, out)
    return out


def download_coco2014(root: str | Path, keep_archives: bool = False) -> DatasetFiles:
    """COCO 2014 train and val images (19 GB) and Karpathy's splits under ``root``."""
    karpathy_json = download_karpathy_splits(root, "coco")  # small: fail before the 19 GB
    base = Path(root) / "coco"
    for split, md5 in COCO_MD5.items():
        _fetch_and_extract(f"{COCO_BASE_URL}/{split}.zip", base / f"{split}.zip", base / split,
                           subdir=split, md5=md5, keep_archive=keep_archives)
    return DatasetFiles(karpathy_json, base)  # images are at base / filepath / filename


def download_flickr30k(root: str | Path) -> DatasetFiles:
    """Flickr30k images put by hand (licence form) under ``root``, and Karpathy's splits."""
    base = Path(root) / "flickr30k"
    images = _flickr30k_images(base)
    return DatasetFiles(download_karpathy_splits(root, "flickr30k"), images)


def _flickr30k_images(base: Path) -> Path:
    """The folder of Flickr30k .jpg files under ``base``, unpacking an archive put there."""
    for folder in (base / "flickr30k-images", base / "flickr30k_images", base / "extracted"):
        found = _jpg_folder(folder)
        if found:
            return found
    for archive in sorted(base.glob("flickr30k*")):
        if archive.is_file() and archive.name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
            found = _jpg_folder(extract(archive, base / "extracted"))
            if found:
                return found
            raise ValueError(f"{archive} holds no .jpg files; is it the Flickr30k image archive?")
    raise ManualDownloadRequired(
        "Flickr30k images need a licence agreement, so they cannot be downloaded for you.\n"
        f"  1. Fill in the request form at {FLICKR30K_FORM} (University of Illinois); a "
        "download link comes by e-mail.\n"
        "  2. Download flickr30k-images.tar.gz (31,783 .jpg files).\n"
        f"  3. Put it at {base / 'flickr30k-images.tar.gz'} (a .zip or .tar works too), or unpack "
        f"it so that the .jpg files are in {base / 'flickr30k-images'}/\n"
        "Then run this again; Karpathy's split file is fetched automatically."
    )


def _jpg_folder(folder: Path) -> Path | None:
    """``folder`` or one of its subfolders that holds .jpg files, else None."""
    if not folder.is_dir():
        return None
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if next(candidate.glob("*.jpg"), None) is not None:
            return candidate
    return None
