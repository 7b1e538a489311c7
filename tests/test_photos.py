"""The photo path end to end, on look-alike archives served on 127.0.0.1 (tests/lookalike.py).

Flickr8k and COCO 2014: download -> prepare -> features -> train -> evaluate -> `sat caption`,
at the toy sizes of the ``photos_quick`` profile, with random ResNet-101 weights in a
temporary TORCH_HOME; the paper's setup likewise (``paper_quick``: random VGG-19, centre
crops). Flickr30k: its archive put by hand, then prepared. Then every notebook runs on the
prepared Flickr8k look-alike (``SAT_PROFILE=photos_quick``), as nbval runs them on Shapes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from lookalike import (
    fake_torchvision_weights,
    make_coco2014,
    make_flickr8k,
    make_flickr30k,
    point_downloads_at,
    serve,
)
from nbclient import NotebookClient

from sat_helpers import cli
from sat_helpers.checkpoint import load_encoder, load_model
from sat_helpers.config import Profile, data_root, get_profile
from sat_helpers.data import PrepareReport, Vocab, ensure_dataset
from sat_helpers.encoder import sample_images
from sat_helpers.images import annotation_vectors, load_image, open_image, square
from sat_helpers.search import greedy_search
from sat_helpers.train import run_dir, train
from sat_helpers.viz import explore

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The three look-alikes served on 127.0.0.1; SAT_DATA, TORCH_HOME and the downloads set."""
    mirror = tmp_path_factory.mktemp("mirror")
    looks = {look.dataset: look for look in (make_flickr8k(mirror), make_coco2014(mirror),
                                             make_flickr30k(mirror))}
    torch_home = tmp_path_factory.mktemp("torch_home")
    fake_torchvision_weights(torch_home, get_profile("photos_quick").encoder)
    with serve(mirror) as base, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAT_DATA", str(tmp_path_factory.mktemp("sat_data")))
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.setenv("SAT_PROFILE", "photos_quick")
        point_downloads_at(mp, base, *looks.values())
        yield looks


def _toy(name: str) -> Profile:
    """The real profile ``name`` at photos_quick's toy sizes; its other fields (coco's) kept."""
    toy, flickr8k = get_profile("photos_quick").to_dict(), get_profile("flickr8k").to_dict()
    sizes = {k: v for k, v in toy.items() if v != flickr8k[k] and k != "name"}
    return replace(get_profile(name), **sizes, name=f"photos_quick_{name}")


def _check_prepared(prepared: Path, look, splits: dict[str, tuple[str, ...]]) -> None:
    """Every readable photo kept once, the truncated ones counted, modes and EXIF handled."""
    report = PrepareReport.load(prepared)
    meta = {s: json.loads((prepared / f"{s}_meta.json").read_text()) for s in splits}
    size = get_profile("photos_quick").image_size
    for split, karpathy in splits.items():
        expected = {p.filename for p in look.photos
                    if p.split in karpathy and p.kind != "truncated"}
        assert {m["filename"] for m in meta[split]} == expected, split
        images = np.load(prepared / f"{split}_images.npy")
        assert images.shape == (len(expected), size, size, 3)
        # every look-alike photo is bright along the top of its displayed view: EXIF rotation
        # applied, CMYK not inverted, grayscale made RGB
        assert (images[:, : size // 8].mean(axis=(1, 2, 3)) > 230).all(), split
        assert (images[:, size // 3:].mean(axis=(1, 2, 3)) < 200).all(), split
    truncated = sorted(p.filename for p in look.photos if p.kind == "truncated")
    assert sorted(Path(b).name for b in report.bad_images) == truncated
    rotated = look.by_kind("exif_rotated")
    entry = next(m for s in meta.values() for m in s if m["filename"] == rotated.filename)
    assert (entry["width"], entry["height"]) == (375, 500)  # as displayed, not as stored
    gray = look.by_kind("grayscale")
    split = next(s for s, k in splits.items() if gray.split in k)
    j = [m["filename"] for m in meta[split]].index(gray.filename)
    pixels = np.load(prepared / f"{split}_images.npy")[j].astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    vocab = Vocab.load(prepared / "vocab.json")
    train_words = {w for p in look.photos if p.split in splits["train"] and p.kind != "truncated"
                   for c in p.captions for w in c.lower().replace(" .", "").split()}
    assert set(vocab.words) == train_words


def _check_scores(out: str, n_images: int) -> None:
    """`sat evaluate` printed the image count and BLEU-1..4 in [0, 1]."""
    assert re.search(rf"^images\s+{n_images}$", out, re.M), out
    bleu = [float(v) for v in re.findall(r"^BLEU-\d\s+(\S+)$", out, re.M)]
    assert len(bleu) == 4 and all(0 <= v <= 1 for v in bleu), out


def _check_captions(out: str, images: list[Path], vocab: Vocab) -> None:
    """`sat caption` printed one line per image, in order: a caption in the model's words."""
    lines = [line for line in out.splitlines() if not line.startswith("  ")]
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in images], out
    for line in lines:
        words = line.split(": ", 1)[1].split()
        assert words and set(words) <= set(vocab.words), line


def test_flickr8k_download_to_caption(photos, capsys):
    look = photos["flickr8k"]
    assert cli.main(["data", "--profile", "photos_quick"]) == 0
    prepared = Path(capsys.readouterr().out.strip().splitlines()[-1])
    raw = data_root() / "raw"
    assert prepared == data_root() / "prepared" / "photos_quick"
    images = raw / "flickr8k" / "images"
    assert {p.name for p in images.glob("*.jpg")} == {p.filename for p in look.photos}
    assert not list(images.rglob("__MACOSX")) and not list(images.rglob("._*"))  # macOS junk
    assert not list((raw / "flickr8k").glob("*.zip"))  # archives deleted once extracted
    assert (raw / "karpathy" / "dataset_flickr8k.json").is_file()
    _check_prepared(prepared, look, {"train": ("train",), "val": ("val",), "test": ("test",)})

    assert cli.main(["train", "--profile", "photos_quick", "--device", "cpu"]) == 0
    run = run_dir(get_profile("photos_quick"))
    assert len(pd.read_csv(run / "log.csv")) == get_profile("photos_quick").epochs
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["profile"]["dataset"] == "flickr8k"  # the photo path: no boxes, ResNet features
    capsys.readouterr()

    assert cli.main(["evaluate", "--profile", "photos_quick", "--no-meteor",
                     "--device", "cpu"]) == 0
    _check_scores(capsys.readouterr().out, len(look.readable("test")))

    shown = [images / look.by_kind("cmyk").filename, sample_images()["chelsea"]]
    # greedy: a wider beam prefers the toy model's empty caption, as beams prefer short ones
    assert cli.main(["caption", *map(str, shown), "--profile", "photos_quick", "--beam", "1"]) == 0
    _check_captions(capsys.readouterr().out, shown, Vocab.load(prepared / "vocab.json"))


def test_coco_download_to_caption(photos, capsys):
    look = photos["coco"]
    profile = _toy("coco")
    prepared = ensure_dataset(profile)
    coco = data_root() / "raw" / "coco"
    for folder in ("train2014", "val2014"):
        assert {p.name for p in (coco / folder).glob("*.jpg")} == {
            p.filename for p in look.photos if p.folder == folder}
    assert not list(coco.glob("*.zip"))
    _check_prepared(prepared, look,
                    {"train": ("train", "restval"), "val": ("val",), "test": ("test",)})

    train(profile, device="cpu")
    best = run_dir(profile) / "best.pt"
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(best), "--no-meteor", "--device", "cpu"]) == 0
    _check_scores(capsys.readouterr().out, len(look.readable("test")))
    rotated = look.by_kind("exif_rotated")
    shown = [coco / rotated.folder / rotated.filename]
    assert cli.main(["caption", str(shown[0]), "--checkpoint", str(best), "--beam", "1"]) == 0
    _check_captions(capsys.readouterr().out, shown, Vocab.load(prepared / "vocab.json"))


def test_flickr30k_put_by_hand_is_prepared(photos):
    look = photos["flickr30k"]
    by_hand = data_root() / "raw" / "flickr30k"
    by_hand.mkdir(parents=True, exist_ok=True)
    shutil.copy(look.mirror / "by_hand" / "flickr30k-images.tar.gz", by_hand)
    prepared = ensure_dataset(_toy("flickr30k"))
    assert (data_root() / "raw" / "karpathy" / "dataset_flickr30k.json").is_file()
    _check_prepared(prepared, look, {"train": ("train",), "val": ("val",), "test": ("test",)})


@pytest.mark.parametrize("notebook", sorted(p.name for p in NOTEBOOKS.glob("[0-9]*.ipynb")))
def test_notebook_runs_on_the_flickr8k_lookalike(photos, notebook):
    ensure_dataset(get_profile("photos_quick"))  # downloads while the local mirror is up
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()


def test_paper_profile_on_the_flickr8k_lookalike(photos, capsys):
    """The paper's setup at toy sizes: VGG-19 conv5_4 features of centre crops, the same crop
    in preparation, `sat caption` and the explorer, and BLEU with and without the BP."""
    fake_torchvision_weights(Path(os.environ["TORCH_HOME"]), "vgg19")
    look, profile = photos["flickr8k"], get_profile("paper_quick")
    prepared = ensure_dataset(profile)
    _check_prepared(prepared, look, {"train": ("train",), "val": ("val",), "test": ("test",)})
    images = data_root() / "raw" / "flickr8k" / "images"
    meta = json.loads((prepared / "test_meta.json").read_text())
    stored = np.load(prepared / "test_images.npy")
    size = profile.image_size
    for j, m in enumerate(meta):
        assert (stored[j] == load_image(images / m["filename"], size, "shorter_side_crop")[0]).all()
    wide = next(j for j, m in enumerate(meta) if m["width"] != m["height"])
    assert (stored[wide] != load_image(images / meta[wide]["filename"], size)[0]).any()

    train(profile, device="cpu")
    best = run_dir(profile) / "best.pt"
    decoder, vocab, stored_profile, ckpt = load_model(best)
    encoder = load_encoder(ckpt, stored_profile)
    assert (encoder.name, encoder.resize, decoder.config["enc_dim"]) == (
        "vgg19", "shorter_side_crop", 512)
    photo = images / meta[wide]["filename"]  # the explorer encodes the centre crop too
    opened = open_image(photo)[0]
    explorer = explore(decoder, vocab, encoder, {"photo": opened})

    def encoded(resize):
        pixels = torch.from_numpy(square(opened, size, resize)).permute(2, 0, 1)[None]
        return annotation_vectors(encoder, pixels)

    assert torch.equal(explorer.features("photo"), encoded("shorter_side_crop"))
    assert not torch.equal(explorer.features("photo"), encoded("squash"))
    capsys.readouterr()

    assert cli.main(["evaluate", "--checkpoint", str(best), "--no-meteor", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    _check_scores(out, len(look.readable("test")))
    no_bp = [float(v) for v in re.findall(r"^BLEU-\d \(no BP\)\s+(\S+)$", out, re.M)]
    with_bp = [float(v) for v in re.findall(r"^BLEU-\d\s+(\S+)$", out, re.M)]
    assert len(no_bp) == 4 and all(a >= b for a, b in zip(no_bp, with_bp, strict=True)), out
    # `sat caption` captions the centre crop: the greedy caption of its annotation vectors (a
    # two-epoch toy may well say nothing, so the words are compared, not required)
    with torch.no_grad():
        expected = greedy_search(decoder.eval(), encoded("shorter_side_crop"),
                                 stored_profile.decode_max_len, vocab=vocab)[0]
    assert cli.main(["caption", str(photo), "--checkpoint", str(best), "--beam", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    assert printed.split(": ", 1) == [str(photo), " ".join(expected.words)], printed
