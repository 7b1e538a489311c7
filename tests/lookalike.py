"""Tiny look-alikes of Flickr8k, Flickr30k and COCO 2014, in the layouts of the real downloads.

Each ``make_*`` function writes, under a mirror folder, the files a real mirror serves (same
names, same archive layouts: ``Flicker8k_Dataset/`` with macOS ``__MACOSX/`` junk beside it,
``train2014/`` and ``val2014/``, Karpathy JSON files with COCO's ``filepath`` and ``restval``)
and returns a ``Lookalike`` that says what a correct download and preparation must produce.
The photos come in the sizes and modes real datasets have: landscape and portrait RGB,
grayscale, CMYK, stored sideways with an EXIF orientation, and truncated (one photo in six).

``serve`` puts a mirror folder on 127.0.0.1; ``point_downloads_at`` sets the base URLs and
checksums of ``sat_helpers.download`` (its module constants, meant for mirrors) to it.
``fake_torchvision_weights`` writes random ImageNet weights where torchvision caches the real
ones, so ResNet encoders load without network (their features mean nothing, but are finite).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import socketserver
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

KINDS = ("landscape", "portrait", "grayscale", "cmyk", "exif_rotated", "truncated")
"""The photo kinds, in the order they cycle through a look-alike's images."""
SIZES = {"landscape": (500, 375), "portrait": (375, 500), "grayscale": (640, 480),
         "cmyk": (500, 333), "exif_rotated": (500, 375), "truncated": (640, 427)}
"""Stored (width, height) of each kind; the EXIF-rotated one is displayed as 375 x 500."""
SUBJECTS = ["dog", "man", "woman", "child", "girl", "boy", "bird", "cat"]
ACTIONS = ["runs", "sits", "jumps", "walks", "plays", "stands"]
PLACES = ["on the grass", "in the water", "on a bench", "near a tree", "in the snow",
          "on the street"]
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
"""The start of a macOS ``._name`` AppleDouble file: the junk in ``__MACOSX/`` folders."""


@dataclass
class Photo:
    """One look-alike photo: its file name, split, kind, JPEG bytes and captions."""

    filename: str
    split: str
    kind: str
    data: bytes
    captions: list[str]
    folder: str = ""  # COCO's filepath: train2014 or val2014


@dataclass
class Lookalike:
    """What a mirror folder holds, and what a correct pipeline must make of it."""

    dataset: str
    mirror: Path
    photos: list[Photo]
    md5: dict[str, str] = field(default_factory=dict)  # keyed as FLICKR8K_MD5 / COCO_MD5 are

    def by_kind(self, kind: str) -> Photo:
        """The first photo of a kind (``KINDS``)."""
        return next(p for p in self.photos if p.kind == kind)

    def readable(self, split: str) -> list[Photo]:
        """The photos of a Karpathy split that a preparation keeps (all but the truncated)."""
        return [p for p in self.photos if p.kind != "truncated" and p.split == split]


# ---------------------------------------------------------------- photos

def photo_bytes(kind: str, seed: int) -> bytes:
    """A JPEG of ``kind``: smooth random colour blobs, bright at the top of its displayed view."""
    rng = np.random.default_rng(seed)
    width, height = SIZES[kind]
    shown = (height, width) if kind == "exif_rotated" else (width, height)
    blobs = rng.integers(40, 200, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blobs).resize(shown, Image.Resampling.BICUBIC)
    pixels = np.asarray(image).copy()
    pixels[: shown[1] // 4] = 250  # a bright top band: shows whether EXIF rotation was applied
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if kind == "grayscale":
        image.convert("L").save(out, "JPEG", quality=85)
    elif kind == "cmyk":
        image.convert("CMYK").save(out, "JPEG", quality=85)
    elif kind == "exif_rotated":  # stored turned a quarter left; orientation 6 turns it back
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=85, exif=exif)
    else:
        image.save(out, "JPEG", quality=85)
    data = out.getvalue()
    return data[: len(data) * 3 // 5] if kind == "truncated" else data


def captions(rng: random.Random, n: int = 5) -> list[str]:
    """``n`` captions in the style of the real datasets (capitalised, some with a full stop)."""
    out = []
    for k in range(n):
        words = f"a {rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}"
        out.append(words.capitalize() + (" ." if k % 2 else ""))
    return out


def make_photos(names_splits: list[tuple[str, str, str]], seed: int) -> list[Photo]:
    """Photos for (filename, split, folder) triples, cycling through ``KINDS``."""
    rng = random.Random(seed)
    return [Photo(name, split, KINDS[i % len(KINDS)], photo_bytes(KINDS[i % len(KINDS)], seed + i),
                  captions(rng), folder)
            for i, (name, split, folder) in enumerate(names_splits)]


def karpathy_json(dataset: str, photos: list[Photo]) -> bytes:
    """Karpathy's dataset_<name>.json for the photos (COCO's entries add filepath and cocoid)."""
    images, sentid = [], 0
    for imgid, photo in enumerate(photos):
        sentences = []
        for raw in photo.captions:
            tokens = raw.lower().replace(" .", "").split()
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        entry = {"sentids": [s["sentid"] for s in sentences], "imgid": imgid,
                 "sentences": sentences, "split": photo.split, "filename": photo.filename}
        if photo.folder:
            entry = {"filepath": photo.folder, **entry, "cocoid": int(photo.filename[-10:-4])}
        images.append(entry)
    return json.dumps({"images": images, "dataset": dataset}).encode()


# ---------------------------------------------------------------- archives

def write_zip(path: Path, members: dict[str, bytes | None]) -> None:
    """A zip of ``members`` (name -> bytes; None: a folder entry), in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, b"" if data is None else data)


def write_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    """A .tar.gz of ``members`` (name -> bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))


def with_macos_junk(folder: str, files: dict[str, bytes]) -> dict[str, bytes | None]:
    """Zip members as macOS's Finder writes them: the folder, then __MACOSX/ AppleDouble files."""
    members: dict[str, bytes | None] = {f"{folder}/": None}
    members.update({f"{folder}/{name}": data for name, data in files.items()})
    members["__MACOSX/"] = None
    members.update({f"__MACOSX/{folder}/._{name}": APPLE_DOUBLE for name in files})
    return members


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_flickr8k(mirror: Path, n: int = 29, seed: int = 8) -> Lookalike:
    """Flickr8k_Dataset.zip, Flickr8k_text.zip and dataset_flickr8k.json under ``mirror``.

    29 photos: 11 train, 8 val and 6 test ones decode, as many as the notebooks' examples use.
    """
    splits = ["train"] * (n - 16) + ["val"] * 9 + ["test"] * 7
    names = [(f"{1000268201 + 7919 * i}_{hashlib.md5(bytes([i])).hexdigest()[:10]}.jpg", s, "")
             for i, s in enumerate(splits)]
    photos = make_photos(names, seed)
    images = mirror / "Flickr8k"
    write_zip(images / "Flickr8k_Dataset.zip",
              with_macos_junk("Flicker8k_Dataset", {p.filename: p.data for p in photos}))
    token = "".join(f"{p.filename}#{k}\t{c}\n" for p in photos for k, c in enumerate(p.captions))
    lists = {name: "".join(f"{p.filename}\n" for p in photos if p.split == split)
             for name, split in (("Flickr_8k.trainImages.txt", "train"),
                                 ("Flickr_8k.devImages.txt", "val"),
                                 ("Flickr_8k.testImages.txt", "test"))}
    text = {"Flickr8k.token.txt": token, **lists, "readme.txt": "Flickr8k look-alike\n"}
    members: dict[str, bytes | None] = {k: v.encode() for k, v in text.items()}
    members.update({"__MACOSX/": None, "__MACOSX/._Flickr8k.token.txt": APPLE_DOUBLE})
    write_zip(images / "Flickr8k_text.zip", members)
    (mirror / "karpathy").mkdir(parents=True, exist_ok=True)
    (mirror / "karpathy" / "dataset_flickr8k.json").write_bytes(karpathy_json("flickr8k", photos))
    return Lookalike("flickr8k", mirror, photos, {name: _md5(images / name) for name in
                                                  ("Flickr8k_Dataset.zip", "Flickr8k_text.zip")})


def make_flickr30k(mirror: Path, n: int = 8, seed: int = 30) -> Lookalike:
    """flickr30k-images.tar.gz (put by hand: not served) and dataset_flickr32k.json (served)."""
    splits = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
    photos = make_photos([(f"{1000092795 + 131 * i}.jpg", s, "") for i, s in enumerate(splits)],
                         seed)
    members = {f"flickr30k-images/{p.filename}": p.data for p in photos}
    members["flickr30k-images/readme.txt"] = b"Flickr30k look-alike\n"
    write_tar_gz(mirror / "by_hand" / "flickr30k-images.tar.gz", members)
    (mirror / "karpathy").mkdir(parents=True, exist_ok=True)
    (mirror / "karpathy" / "dataset_flickr32k.json").write_bytes(
        karpathy_json("flickr30k", photos))
    return Lookalike("flickr30k", mirror, photos)


def make_coco2014(mirror: Path, n_train: int = 7, n_val: int = 9, seed: int = 14) -> Lookalike:
    """train2014.zip, val2014.zip and dataset_coco.json (train, restval, val, test) under mirror."""
    val_splits = ["restval"] * (n_val - 6) + ["val"] * 3 + ["test"] * 3
    names = [(f"COCO_train2014_{9 + 17 * i:012d}.jpg", "train", "train2014")
             for i in range(n_train)]
    names += [(f"COCO_val2014_{42 + 23 * i:012d}.jpg", s, "val2014")
              for i, s in enumerate(val_splits)]
    photos = make_photos(names, seed)
    zips = mirror / "zips"
    for folder in ("train2014", "val2014"):
        members: dict[str, bytes | None] = {f"{folder}/": None}
        members.update({f"{folder}/{p.filename}": p.data for p in photos if p.folder == folder})
        write_zip(zips / f"{folder}.zip", members)
    (mirror / "karpathy").mkdir(parents=True, exist_ok=True)
    (mirror / "karpathy" / "dataset_coco.json").write_bytes(karpathy_json("coco", photos))
    return Lookalike("coco", mirror, photos,
                     {folder: _md5(zips / f"{folder}.zip") for folder in ("train2014", "val2014")})


# ---------------------------------------------------------------- serving

class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # no reverse DNS look-up
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (any free port) in a thread; yields the base URL."""
    httpd = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def point_downloads_at(monkeypatch, base: str, *lookalikes: Lookalike) -> None:
    """Set sat_helpers.download's mirror URLs and checksums to the look-alikes served at base."""
    from sat_helpers import download

    monkeypatch.setattr(download, "RETRIES", 1)
    monkeypatch.setattr(download, "RETRY_BACKOFF", 0.01)
    monkeypatch.setattr(download, "KARPATHY_GITHUB_BASE", f"{base}/karpathy")
    monkeypatch.setattr(download, "KARPATHY_ZIP_URL", f"{base}/missing/caption_datasets.zip")
    for look in lookalikes:
        name = download.KARPATHY_FILES[look.dataset][0]
        path = look.mirror / "karpathy" / name
        monkeypatch.setitem(download.KARPATHY_FILES, look.dataset,
                            (name, hashlib.sha256(path.read_bytes()).hexdigest(),
                             path.stat().st_size))
        if look.dataset == "flickr8k":
            monkeypatch.setattr(download, "FLICKR8K_BASE_URL", f"{base}/Flickr8k")
            monkeypatch.setattr(download, "FLICKR8K_MD5", look.md5)
        elif look.dataset == "coco":
            monkeypatch.setattr(download, "COCO_BASE_URL", f"{base}/zips")
            monkeypatch.setattr(download, "COCO_MD5", look.md5)


# ---------------------------------------------------------------- weights

def fake_torchvision_weights(torch_home: Path, encoder: str = "resnet101") -> Path:
    """Random ImageNet weights of a torchvision encoder, where torchvision's cache looks for them.

    ``encoder`` is a name of sat_helpers' registry; its spec names the torchvision weights. As in
    a trained ResNet, each residual branch starts small and the BatchNorm statistics are
    measured (on noise images), so the features have about the scale of real ones (mean 0.5,
    at most a few units); raw random weights grow through the 33 blocks and overflow float16.
    """
    import torch
    import torchvision

    from sat_helpers.encoder import TORCHVISION_WEIGHTS, get_spec

    weights = next(w for w in TORCHVISION_WEIGHTS.values() if w in get_spec(encoder).weights)
    enum_name, member = weights.split(".")
    url = getattr(torchvision.models, enum_name)[member].url
    path = torch_home / "hub" / "checkpoints" / Path(urlparse(url).path).name
    if path.is_file():
        return path
    torch.manual_seed(0)
    model = getattr(torchvision.models, enum_name.removesuffix("_Weights").lower())(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            torch.nn.init.constant_(module.bn3.weight, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 64, 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    # VGG's classifier (no encoder uses it) as zeros of one stored number: 2 kB, not 0.5 GB
    state = {k: torch.zeros(()).expand(v.shape) if k.startswith("classifier") else v
             for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path
