"""Dataset preparation: tokens, the vocabulary, resized images and encoded captions on disk.

One code path for every dataset: a Karpathy-format JSON (Shapes, Flickr8k/30k, COCO) and a
folder of images go in; ``prepare_dataset`` writes, per split, the images as a memory-mapped
uint8 ``.npy``, the encoded captions with their lengths, and every reference caption, plus
``vocab.json`` and a ``manifest.json``. ``data.CaptionDataset`` serves them to a DataLoader.

Policies (each counted in the manifest's ``report``, never silent):
- captions are ``tokenize(raw)`` (``tokens`` when a sentence has no ``raw``); empty ones are
  dropped;
- a caption longer than ``max_len`` tokens is not a training target (cutting it would teach
  the model to stop mid-sentence) but stays among the image's references for evaluation;
- an image with more than ``captions_per_image`` usable captions keeps a seeded random
  choice of them as targets; one with fewer repeats some (seeded sampling with
  replacement); one with none is dropped;
- the vocabulary counts the train split only (Karpathy ``restval`` counts as train), so val
  and test words the training data never saw become ``<unk>``;
- images become ``image_size`` x ``image_size`` after EXIF rotation, as ``resize`` says
  (``images.RESIZE_MODES``: squashed whole, the default, or the shorter side resized and the
  centre cropped, as the ``paper`` profile does); any mode becomes RGB (transparency over
  white, 16-bit scaled to 8 bits).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from .archives import check_free_space
from .captions import (
    KARPATHY_SPLITS,
    SPLITS,
    DatasetError,
    Vocab,
    caption_of,
    encode_caption,
    load_karpathy_json,
)
from .images import check_resize, load_image

FORMAT_VERSION = 1


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` kept and dropped (stored in the manifest as ``report``)."""

    images: dict[str, int] = field(default_factory=dict)
    vocab_size: int = 0
    captions_used: int = 0
    empty_captions: int = 0
    long_captions: int = 0
    images_without_captions: int = 0
    images_padded: int = 0
    bad_images: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, out_dir: str | Path) -> PrepareReport:
        """The report of a prepared dataset."""
        return cls(**json.loads((Path(out_dir) / "manifest.json").read_text())["report"])

    def summary(self) -> str:
        """One line a learner can read."""
        return (f"images {self.images}, vocabulary {self.vocab_size}, captions dropped: "
                f"{self.empty_captions} empty, {self.long_captions} too long for training "
                f"(kept as references); images dropped: {self.images_without_captions} "
                f"without captions, {len(self.bad_images)} unreadable; "
                f"{self.images_padded} images repeat captions to fill captions_per_image")


def _image_path(image_dir: Path, image: dict) -> Path:
    return image_dir / image.get("filepath", "") / image["filename"]


def _inputs_digest(karpathy_json: Path, image_dir: Path, images: list[dict]) -> dict:
    """Hashes of the JSON bytes and of every listed image's name, size and mtime (not pixels)."""
    listing = hashlib.sha256()
    for image in images:
        path = _image_path(image_dir, image)
        try:
            st = path.stat()
            listing.update(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            listing.update(f"{path.name}\tmissing\n".encode())
    return {"karpathy_json_sha256": _sha256(karpathy_json),
            "image_files_sha256": listing.hexdigest()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_current(out_dir: Path, params: dict, karpathy_json: Path, image_dir: Path) -> bool:
    """Whether ``out_dir`` holds a complete build of these parameters, JSON and image files."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    inputs = manifest.get("inputs", {})
    if (manifest.get("format_version") != FORMAT_VERSION or manifest.get("params") != params
            or inputs.get("karpathy_json_sha256") != _sha256(karpathy_json)
            or not all((out_dir / f).exists() for f in manifest.get("files", []))):
        return False
    images = json.loads(karpathy_json.read_bytes())["images"]  # the bytes it was built from
    return _inputs_digest(karpathy_json, image_dir, images) == inputs


def prepare_dataset(karpathy_json: str | Path, image_dir: str | Path, out_dir: str | Path,
                    image_size: int, min_word_freq: int, max_len: int, captions_per_image: int,
                    seed: int = 0, on_bad_image: str = "error", resize: str = "squash") -> Path:
    """Write the resized images, encoded captions, references and vocabulary into ``out_dir``.

    A no-op (seconds) when ``out_dir`` already holds this build: same parameters, same JSON
    bytes, same image files (names, sizes, mtimes). Otherwise it builds into a temporary
    sibling folder and renames it into place at the end, so an interrupted run leaves nothing
    a later run trusts. ``on_bad_image="skip"`` skips unreadable images (and counts them)
    instead of raising. See the module docstring for the caption policies.
    """
    karpathy_json, image_dir, out_dir = Path(karpathy_json), Path(image_dir), Path(out_dir)
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image={on_bad_image!r}; use 'error' or 'skip'.")
    check_resize(resize)
    params = {"image_size": image_size, "min_word_freq": min_word_freq, "max_len": max_len,
              "captions_per_image": captions_per_image, "seed": seed,
              "on_bad_image": on_bad_image}
    if resize != "squash":  # only then: a squashed build's manifest stays what it was
        params["resize"] = resize
    if _is_current(out_dir, params, karpathy_json, image_dir):
        return out_dir
    data = load_karpathy_json(karpathy_json)
    inputs = _inputs_digest(karpathy_json, image_dir, data["images"])
    check_free_space(out_dir.parent, len(data["images"]) * image_size ** 2 * 3,
                     f"the prepared {image_size}-px image arrays of {karpathy_json.name}")
    for stale in [*out_dir.parent.glob(f".{out_dir.name}.tmp-*"),
                  *out_dir.parent.glob(f".{out_dir.name}.old-*")]:
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):  # left by a killed run, not a live one
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        report = _build(data, image_dir, tmp, params)
        manifest = {"format_version": FORMAT_VERSION, "params": params, "inputs": inputs,
                    "source": {"karpathy_json": str(karpathy_json), "image_dir": str(image_dir)},
                    "files": sorted(p.name for p in tmp.iterdir()), "report": asdict(report)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report.empty_captions or report.long_captions or report.images_without_captions \
            or report.bad_images:
        print(f"prepare_dataset({out_dir.name}): {report.summary()}")
    return out_dir


def _pid_alive(pid: str) -> bool:
    """True when ``pid`` names a running process (another build may be writing its folder)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``tmp`` folder (two renames, then delete the old)."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _build(data: dict, image_dir: Path, out: Path, params: dict) -> PrepareReport:
    """Tokenise, build the train vocabulary, pick targets and write every split into ``out``."""
    report = PrepareReport()
    max_len, cpi = params["max_len"], params["captions_per_image"]
    rng = np.random.default_rng(params["seed"])
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for index, image in enumerate(data["images"]):
        refs = [caption_of(s) for s in image["sentences"]]
        report.empty_captions += sum(not r for r in refs)
        refs = [r for r in refs if r]
        targets = [r for r in refs if len(r) <= max_len]
        report.long_captions += len(refs) - len(targets)
        if not targets:
            report.images_without_captions += 1
            continue
        report.images_padded += len(targets) < cpi
        pick = rng.choice(len(targets), size=cpi, replace=len(targets) < cpi)
        records[KARPATHY_SPLITS[image["split"]]].append(
            {"image": image, "index": index, "references": refs,
             "targets": [targets[i] for i in pick]})
    vocab = Vocab.build([r for rec in records["train"] for r in rec["references"]],
                        params["min_word_freq"])
    vocab.save(out / "vocab.json")
    report.vocab_size = len(vocab)
    for split in SPLITS:
        _write_split(split, records[split], vocab, image_dir, out, params, report)
    report.captions_used = sum(report.images.values()) * cpi
    return report


def _write_split(split: str, records: list[dict], vocab: Vocab, image_dir: Path, out: Path,
                 params: dict, report: PrepareReport) -> None:
    """Images into a memmapped .npy (one at a time), captions, lengths and meta of one split."""
    size, max_len = params["image_size"], params["max_len"]
    path = out / f"{split}_images.npy"
    images = open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3))
    kept: list[dict] = []
    for rec in tqdm(records, desc=f"Preparing {split}", unit="img", leave=False,
                    disable=len(records) < 200):
        file = _image_path(image_dir, rec["image"])
        try:
            pixels, (width, height) = load_image(file, size, params.get("resize", "squash"))
        except DatasetError as err:
            if params["on_bad_image"] == "error":
                raise DatasetError(f"{err} Replace or remove it, or pass "
                                   "on_bad_image='skip'.") from err
            report.bad_images.append(str(file))
            continue
        images[len(kept)] = pixels
        kept.append({**rec, "width": width, "height": height})
    images.flush()
    del images
    if len(kept) < len(records):
        _shrink(path, len(kept))
    captions = np.full((len(kept) * params["captions_per_image"], max_len + 2), vocab.pad_id,
                       dtype=np.int64)
    lengths = np.zeros(len(captions), dtype=np.int64)
    row = 0
    for rec in kept:
        for tokens in rec["targets"]:
            captions[row] = encode_caption(tokens, vocab, max_len)
            lengths[row] = len(tokens) + 2
            row += 1
    np.save(out / f"{split}_captions.npy", captions)
    np.save(out / f"{split}_lengths.npy", lengths)
    meta = [{"id": rec["image"].get("imgid", rec["index"]), "filename": rec["image"]["filename"],
             "width": rec["width"], "height": rec["height"], "references": rec["references"],
             **({"objects": rec["image"]["objects"]} if "objects" in rec["image"] else {})}
            for rec in kept]
    (out / f"{split}_meta.json").write_text(json.dumps(meta))
    report.images[split] = len(kept)


def _shrink(path: Path, n: int, chunk: int = 256) -> None:
    """Keep only the first ``n`` images of a .npy file (copied in chunks, never all in RAM)."""
    src = np.load(path, mmap_mode="r")
    small = path.with_name("shrink-" + path.name)
    dst = open_memmap(small, mode="w+", dtype=src.dtype, shape=(n, *src.shape[1:]))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        dst[start:stop] = src[start:stop]
    dst.flush()
    del src, dst
    os.replace(small, path)
