"""Dataset preparation: tokens, vocabulary, prepare_dataset's outputs, policies and bad input."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sat_helpers import data, prepare
from sat_helpers.config import get_profile
from sat_helpers.data import (
    CaptionDataset,
    DatasetError,
    PrepareReport,
    Vocab,
    caption_collate,
    load_karpathy_json,
    prepare_dataset,
    tokenize,
)

SIZE, CPI, MAX_LEN = 16, 3, 10
PARAMS = dict(image_size=SIZE, min_word_freq=1, max_len=MAX_LEN, captions_per_image=CPI, seed=0)
LONG = "a dog " + "runs very fast " * 5  # 17 tokens > MAX_LEN


def colour(i: int) -> tuple[int, int, int]:
    """A distinct flat colour per image, so tests can tell images apart after resizing."""
    return (20 * i % 256, 255 - 20 * i % 256, 60)


def write_dataset(root, records, write_images=True):
    """A Karpathy JSON + 32x24 flat-colour PNGs; records: (split, [raw captions])."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, (split, raws) in enumerate(records):
        name = f"im{i}.png"
        if write_images:
            Image.new("RGB", (32, 24), colour(i)).save(root / "images" / name)
        images.append({"filename": name, "imgid": i, "split": split,
                       "sentences": [{"raw": r, "tokens": tokenize(r)} for r in raws],
                       "objects": [{"shape": "circle", "colour": "red", "size": "small",
                                    "box": [0, 0, 16, 12]}]})
    path = root / "dataset.json"
    path.write_text(json.dumps({"dataset": "toy", "images": images}))
    return path, root / "images"


BASE = [
    ("train", ["A black dog runs.", "A dog is running", "the dog plays", "a dog"]),
    ("train", ["Two cats sleep.", "cats sleeping", "two cats on a bed", LONG]),
    ("restval", ["A bird flies!", "a bird in the sky", "bird", "a small bird"]),
    ("train", ["A man rides a bike", "a man on a bike", "", "cyclist"]),
    ("val", ["A dog swims", "dog in water", "wet dog"]),
    ("test", ["A zebra runs", "a zebra", "zebra running fast"]),
    ("test", ["a cat", "the cat sits", "cat"]),
]


@pytest.fixture
def toy(tmp_path):
    json_path, image_dir = write_dataset(tmp_path / "raw", BASE)
    return json_path, image_dir, tmp_path / "prepared"


def files_state(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_tokenize():
    assert tokenize("A Dog's ball, running!  Twice--") == ["a", "dog's", "ball", "running", "twice"]
    assert tokenize("Café au lait: 2 cups") == ["café", "au", "lait", "2", "cups"]
    assert tokenize(" , . ") == []


def test_vocab_specials_encode_decode_save_load(tmp_path):
    vocab = Vocab(["dog", "cat"])
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and len(vocab) == 6
    assert vocab.encode(["cat", "zebra", "dog"]) == [5, 3, 4]
    assert vocab.decode([1, 5, 3, 4, 2, 5, 0]) == ["cat", "<unk>", "dog"]
    assert vocab.decode(torch.tensor([1, 4, 0, 0])) == ["dog"]
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == vocab.itos
    with pytest.raises(ValueError):
        Vocab(["dog", "<unk>"])


def test_vocab_build_orders_by_frequency_and_cuts_rare_words():
    vocab = Vocab.build([["b", "a", "c"], ["a", "b"], ["a"]], min_word_freq=2)
    assert vocab.words == ["a", "b"]


def test_prepare_outputs(toy):
    json_path, image_dir, out = toy
    assert prepare_dataset(json_path, image_dir, out, **PARAMS) == out
    report = PrepareReport.load(out)
    assert report.images == {"train": 4, "val": 1, "test": 2}
    vocab = Vocab.load(out / "vocab.json")
    for split, n in report.images.items():
        images = np.load(out / f"{split}_images.npy", mmap_mode="r")
        captions = np.load(out / f"{split}_captions.npy")
        lengths = np.load(out / f"{split}_lengths.npy")
        meta = json.loads((out / f"{split}_meta.json").read_text())
        assert images.dtype == np.uint8 and images.shape == (n, SIZE, SIZE, 3)
        assert captions.dtype == np.int64 and captions.shape == (n * CPI, MAX_LEN + 2)
        assert lengths.dtype == np.int64 and lengths.shape == (n * CPI,)
        assert len(meta) == n
        for j, m in enumerate(meta):
            assert (m["width"], m["height"]) == (32, 24)
            assert np.all(images[j] == colour(m["id"])), "image j must be meta j's picture"
            refs = [tokenize(s) for s in BASE[m["id"]][1] if tokenize(s)]
            assert m["references"] == refs and m["objects"][0]["box"] == [0, 0, 16, 12]
            for row in range(j * CPI, (j + 1) * CPI):
                ids = captions[row]
                assert ids[0] == vocab.start_id and ids[lengths[row] - 1] == vocab.end_id
                assert np.all(ids[lengths[row]:] == vocab.pad_id)
                words = vocab.decode(ids)
                assert len(words) == lengths[row] - 2 <= MAX_LEN
                if split == "train":
                    assert words in refs
    train_ids = [m["id"] for m in json.loads((out / "train_meta.json").read_text())]
    assert train_ids == [0, 1, 2, 3], "restval counts as train, JSON order is kept"


def test_vocab_comes_from_train_only(toy):
    json_path, image_dir, out = toy
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    vocab = Vocab.load(out / "vocab.json")
    assert "zebra" not in vocab and "dog" in vocab and "bird" in vocab
    test = CaptionDataset(out, "test")
    zebra = next(j for j, m in enumerate(test.meta) if m["references"][0][1] == "zebra")
    assert vocab.unk_id in test[zebra][3].tolist()[0]
    assert test.meta[zebra]["references"][0] == ["a", "zebra", "runs"]


def test_caption_policies_are_counted(toy, capsys):
    json_path, image_dir, out = toy
    records = BASE + [("train", ["", " ,. "]), ("train", [LONG]), ("train", ["a cat", LONG])]
    write_dataset(json_path.parent, records)
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    report = PrepareReport.load(out)
    assert report.empty_captions == 3 and report.long_captions == 3
    assert report.images_without_captions == 2 and report.images["train"] == 5
    assert report.images_padded == 1, "only the last image has fewer than 3 usable captions"
    assert "2 without captions" in capsys.readouterr().out
    last = CaptionDataset(out, "train")
    assert [last.vocab.decode(last.captions[k]) for k in range(4 * CPI, 5 * CPI)] == \
        [["a", "cat"]] * CPI
    meta = json.loads((out / "train_meta.json").read_text())
    cats = next(m for m in meta if m["id"] == 1)
    assert tokenize(LONG) in cats["references"], "long captions stay references"
    train = CaptionDataset(out, "train")
    rows = [train.vocab.decode(train.captions[k]) for k in range(CPI, 2 * CPI)]
    assert all(len(r) <= MAX_LEN for r in rows) and len({tuple(r) for r in rows}) == CPI


def test_few_captions_are_sampled_with_replacement(tmp_path):
    json_path, image_dir = write_dataset(tmp_path, [("train", ["one dog", "two dogs"])])
    params = {**PARAMS, "captions_per_image": 5}
    out = prepare_dataset(json_path, image_dir, tmp_path / "p", **params)
    train = CaptionDataset(out, "train")
    rows = {tuple(train.vocab.decode(train.captions[k])) for k in range(5)}
    assert rows <= {("one", "dog"), ("two", "dogs")} and len(train) == 5
    assert PrepareReport.load(out).images_padded == 1


def test_rerun_is_a_fast_no_op(toy):
    json_path, image_dir, out = toy
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    before = files_state(out)
    start = time.perf_counter()
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    assert time.perf_counter() - start < 1.0
    assert files_state(out) == before


@pytest.mark.parametrize("change", ["param", "json", "image"])
def test_changes_rebuild(toy, change):
    json_path, image_dir, out = toy
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    params = dict(PARAMS)
    if change == "param":
        params["max_len"] = 12
    elif change == "json":
        write_dataset(json_path.parent, BASE[:-1], write_images=False)
    else:
        Image.new("RGB", (32, 24), (1, 2, 3)).save(image_dir / "im0.png")
    before = files_state(out)
    prepare_dataset(json_path, image_dir, out, **params)
    assert files_state(out)["manifest.json"] != before["manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["params"] == {
        **params, "on_bad_image": "error"}
    if change == "param":
        assert np.load(out / "train_captions.npy").shape[1] == 14
    if change == "json":
        assert PrepareReport.load(out).images["test"] == 1
    if change == "image":
        assert np.all(np.load(out / "train_images.npy")[0] == (1, 2, 3))


def interrupt_after(monkeypatch, n):
    calls = []
    real = prepare.load_image

    def flaky(path, size, resize="squash"):
        calls.append(path)
        if len(calls) > n:
            raise KeyboardInterrupt("simulated interruption")
        return real(path, size, resize)

    monkeypatch.setattr(prepare, "load_image", flaky)


def test_interrupted_build_leaves_nothing_trusted(toy, monkeypatch):
    json_path, image_dir, out = toy
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(json_path, image_dir, out, **PARAMS)
    assert list(out.parent.iterdir()) == [json_path.parent], "no half-written folder is left"
    monkeypatch.undo()
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    old = files_state(out)
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(json_path, image_dir, out, **{**PARAMS, "max_len": 12})
    assert files_state(out) == old, "the old complete build is untouched"
    assert json.loads((out / "manifest.json").read_text())["params"]["max_len"] == MAX_LEN
    monkeypatch.undo()
    prepare_dataset(json_path, image_dir, out, **{**PARAMS, "max_len": 12})
    assert np.load(out / "val_captions.npy").shape[1] == 14


def test_stale_temporary_folder_is_cleaned_but_not_a_live_build(toy):
    """A killed run's folder goes; one a running build is still writing stays."""
    json_path, image_dir, out = toy
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    stale = out.parent / f".{out.name}.tmp-{finished.stdout.strip()}"  # its process has ended
    live = out.parent / f".{out.name}.tmp-{os.getppid()}"  # a running process
    for folder in (stale, live):
        (folder / "junk").mkdir(parents=True)
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    assert not stale.exists() and (live / "junk").is_dir()


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "not-an-image", "missing"])
def test_bad_image_is_named_or_skipped(toy, kind):
    json_path, image_dir, out = toy
    bad = image_dir / "im1.png"
    if kind == "truncated":
        Image.effect_noise((32, 24), 50).convert("RGB").save(bad)
        bad.write_bytes(bad.read_bytes()[:200])
    elif kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "not-an-image":
        bad.write_text("this is a caption, not a picture")
    else:
        bad.unlink()
    with pytest.raises(DatasetError, match="im1.png"):
        prepare_dataset(json_path, image_dir, out, **PARAMS)
    assert not out.exists() and list(out.parent.iterdir()) == [json_path.parent]
    prepare_dataset(json_path, image_dir, out, **PARAMS, on_bad_image="skip")
    report = PrepareReport.load(out)
    assert [p.split("/")[-1] for p in report.bad_images] == ["im1.png"]
    assert report.images["train"] == 3
    train = CaptionDataset(out, "train")
    assert [m["id"] for m in train.meta] == [0, 2, 3] and len(train) == 3 * CPI
    assert np.load(out / "train_images.npy").shape == (3, SIZE, SIZE, 3)
    assert np.all(train.images[1] == colour(2))


def test_decompression_bomb_is_a_clear_error(toy, monkeypatch):
    json_path, image_dir, out = toy
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # our 32x24 images exceed it
    with pytest.raises(DatasetError, match="decompression-bomb.*|im0.png"):
        prepare_dataset(json_path, image_dir, out, **PARAMS)
    with pytest.raises(DatasetError) as err:
        data.load_image(image_dir / "im0.png", SIZE)
    assert "im0.png" in str(err.value) and "MAX_IMAGE_PIXELS" in str(err.value)
    assert not out.exists()


def odd_images(folder):
    """name -> (writer, expected check on the prepared (S, S, 3) array)."""
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[:, 16:] = (200, 0, 0, 255)  # left half fully transparent black, right half opaque red
    i16 = np.zeros((24, 32), np.uint16)
    i16[:, :16] = 65535
    rotated = np.zeros((24, 32, 3), np.uint8)
    rotated[:12] = (255, 0, 0)  # top red, bottom blue; EXIF 6 = turn 90 degrees clockwise
    rotated[12:] = (0, 0, 255)
    exif = Image.Exif()
    exif[data.ORIENTATION] = 6
    palette = Image.new("P", (32, 24), 0)
    palette.putpalette([10, 200, 30] + [0] * 765)
    writers = {
        "gray.png": lambda p: Image.new("L", (32, 24), 100).save(p),
        "palette.png": lambda p: palette.save(p),
        "rgba.png": lambda p: Image.fromarray(rgba, "RGBA").save(p),
        "cmyk.jpg": lambda p: Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(p, quality=95),
        "sixteen.png": lambda p: Image.fromarray(i16).save(p),
        "rotated.jpg": lambda p: Image.fromarray(rotated).save(p, exif=exif, quality=95),
    }
    for name, write in writers.items():
        write(folder / name)
    return list(writers)


def test_any_mode_becomes_correct_rgb(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    names = odd_images(folder)
    with Image.open(folder / "sixteen.png") as im:
        assert im.mode.startswith("I"), "the test needs a 16-bit image"
    px = {name: data.load_image(folder / name, SIZE) for name in names}
    assert np.all(px["gray.png"][0] == 100)
    assert np.all(px["palette.png"][0] == (10, 200, 30))
    assert np.all(px["rgba.png"][0][:, :6] == 255), "transparent pixels become white"
    assert np.all(px["rgba.png"][0][:, -6:] == (200, 0, 0))
    assert np.abs(px["cmyk.jpg"][0].astype(int) - (255, 0, 0)).max() < 12
    assert np.all(px["sixteen.png"][0][:, :6] == 255) and np.all(px["sixteen.png"][0][:, -6:] == 0)
    image, size = px["rotated.jpg"]
    assert size == (24, 32), "width and height as displayed (after the EXIF rotation)"
    right, left = image[:, -5:].reshape(-1, 3).mean(0), image[:, :5].reshape(-1, 3).mean(0)
    assert right[0] > 200 > right[2] and left[2] > 200 > left[0], "red must end up on the right"
    for name, (pixels, _) in px.items():
        assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8, name


def test_odd_images_prepare(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    images = [{"filename": n, "split": "train", "sentences": [{"raw": "a thing"}]}
              for n in odd_images(folder)]
    (tmp_path / "d.json").write_text(json.dumps({"images": images}))
    out = prepare_dataset(tmp_path / "d.json", folder, tmp_path / "p", **PARAMS)
    assert np.load(out / "train_images.npy").shape == (6, SIZE, SIZE, 3)


@pytest.mark.parametrize("content, match", [
    ("{not json", "malformed JSON"),
    ('{"images": {}}', "'images' list"),
    ('{"images": [{"filename": "a.png", "split": "train", "sentences": []}, '
     '{"filename": "b.png", "sentences": []}]}', r"images\[1\] has no field 'split'"),
    ('{"images": [{"filename": "a.png", "split": "validation", "sentences": []}]}',
     r"images\[0\] field 'split' is 'validation'"),
    ('{"images": [{"filename": 3, "split": "train", "sentences": []}]}',
     r"images\[0\] field 'filename' should be a str"),
    ('{"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": 5}]}]}',
     r"images\[0\] field 'sentences\[0\]'"),
])
def test_bad_json_names_the_problem(tmp_path, content, match):
    path = tmp_path / "dataset.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=match) as err:
        load_karpathy_json(path)
    assert str(path) in str(err.value)
    with pytest.raises(DatasetError, match=match):
        prepare_dataset(path, tmp_path, tmp_path / "out", **PARAMS)
    assert not (tmp_path / "out").exists()


def test_empty_split_is_fine(tmp_path):
    json_path, image_dir = write_dataset(tmp_path, [("train", ["a dog"]), ("test", ["a cat"])])
    out = prepare_dataset(json_path, image_dir, tmp_path / "p", **PARAMS)
    val = CaptionDataset(out, "val")
    assert len(val) == 0 and val.images.shape == (0, SIZE, SIZE, 3)


def test_datasets_items_and_collate(toy):
    json_path, image_dir, out = toy
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    train, val = CaptionDataset(out, "train"), CaptionDataset(out, "val")
    assert len(train) == 4 * CPI and len(val) == 1
    image, caption, length = train[CPI + 1]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert tuple(image[:, 0, 0].tolist()) == colour(1)
    assert caption.shape == (MAX_LEN + 2,) and caption.dtype == torch.int64
    assert length == int((caption != train.vocab.pad_id).sum())
    image, first, length, all_caps = val[0]
    assert all_caps.shape == (CPI, MAX_LEN + 2) and torch.equal(first, all_caps[0])
    images, captions, lengths = caption_collate([train[0], train[5]])
    assert images.shape == (2, 3, SIZE, SIZE) and captions.shape == (2, MAX_LEN + 2)
    assert lengths.tolist() == [train[0][2], train[5][2]]
    assert len(caption_collate([val[0]])) == 4


def test_dataloader_with_two_workers(toy):
    json_path, image_dir, out = toy
    prepare_dataset(json_path, image_dir, out, **PARAMS)
    train = CaptionDataset(out, "train")
    assert len(train.images) == 4  # an open memmap must not stop sending the dataset to workers
    loader = torch.utils.data.DataLoader(train, batch_size=5, num_workers=2,
                                         collate_fn=caption_collate)
    batches = list(loader)
    single = list(torch.utils.data.DataLoader(train, batch_size=5, collate_fn=caption_collate))
    assert len(batches) == len(single) == 3
    for a, b in zip(batches, single, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_ensure_dataset_generates_prepares_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("SAT_DATA", str(tmp_path))
    profile = get_profile("quick", shapes_images=12, image_size=64, captions_per_image=5)
    out = data.ensure_dataset(profile)
    assert out == data.prepared_dir(profile) and out.parent == tmp_path / "prepared"
    raw = data.shapes_dir(profile)
    assert (raw / "dataset_shapes.json").exists() and len(list((raw / "images").iterdir())) == 12
    report = PrepareReport.load(out)
    assert sum(report.images.values()) == 12 and report.long_captions == 0
    meta = CaptionDataset(out, "test").meta
    assert meta[0]["objects"] and len(meta[0]["references"]) == 5
    before = files_state(out), (raw / "dataset_shapes.json").stat().st_mtime_ns
    assert data.ensure_dataset(profile) == out
    assert (files_state(out), (raw / "dataset_shapes.json").stat().st_mtime_ns) == before
    # another training seed reuses the prepared data (and so the features); another data seed not
    assert data.ensure_dataset(dataclasses.replace(profile, seed=7)) == out
    assert (files_state(out), (raw / "dataset_shapes.json").stat().st_mtime_ns) == before
    other = data.ensure_dataset(dataclasses.replace(profile, data_seed=7))  # built beside it
    assert other != out and other.parent == out.parent and files_state(out) == before[0]
