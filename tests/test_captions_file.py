"""Your own photos and captions: a CSV or TSV becomes a Karpathy JSON, then a prepared dataset."""

import json

import numpy as np
import pytest
from PIL import Image

from sat_helpers import data
from sat_helpers.cli import main
from sat_helpers.config import get_profile
from sat_helpers.data import DatasetError, captions_to_karpathy, ensure_dataset


@pytest.fixture
def photos(tmp_path):
    """Six small photos, one in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"p{i}.jpg" for i in range(5)] + ["trip/beach.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).save(folder / name)
    return folder


GOOD_CSV = (
    "\ufeff Image File , Caption \n"  # a BOM, spaces and capitals in the header
    'p0.jpg,"A dog, running on grass"\n'
    "p0.jpg,a brown dog\n"
    "p1.jpg,two children play\n"
    "\n"
    "p2.jpg,a red car\n"
    "p3.jpg,a man on a bike\n"
    "p4.jpg,a cat sleeps\n"
    "trip/beach.png,waves on a sandy beach\n"
)


def test_a_csv_becomes_a_seeded_karpathy_json(photos, tmp_path):
    (tmp_path / "captions.csv").write_text(GOOD_CSV, encoding="utf-8")
    out = captions_to_karpathy(tmp_path / "captions.csv", photos, tmp_path / "a.json", seed=1)
    loaded = data.load_karpathy_json(out)  # the format every dataset goes through
    images = {i["filename"]: i for i in loaded["images"]}
    assert list(images) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg", "trip/beach.png"]
    assert [s["raw"] for s in images["p0.jpg"]["sentences"]] == ["A dog, running on grass",
                                                                 "a brown dog"]
    assert images["p0.jpg"]["sentences"][0]["tokens"] == ["a", "dog", "running", "on", "grass"]
    splits = [i["split"] for i in loaded["images"]]
    assert sorted(splits) == ["test", "train", "train", "train", "train", "val"]
    again = captions_to_karpathy(tmp_path / "captions.csv", photos, tmp_path / "b.json", seed=1)
    assert json.loads(again.read_text())["images"] == loaded["images"]  # seeded
    seeds = {tuple(i["split"] for i in json.loads(captions_to_karpathy(
        tmp_path / "captions.csv", photos, tmp_path / f"{s}.json", seed=s).read_text())["images"])
        for s in range(6)}
    assert len(seeds) > 1  # the seed does choose


def test_a_tsv_without_header_in_flickr8k_form(photos, tmp_path):
    lines = ["p0.jpg#0\ta dog", "p0.jpg#1\ta dog on grass", "p1.jpg\tkids", "p2.jpg\ta car"]
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    rows = data.read_captions_file(tmp_path / "c.tsv", photos)
    assert rows == [("p0.jpg", "a dog"), ("p0.jpg", "a dog on grass"), ("p1.jpg", "kids"),
                    ("p2.jpg", "a car")]
    header_swapped = "caption\tfilename\nkids\tp1.jpg\n"  # a header may order columns freely
    (tmp_path / "h.tsv").write_text(header_swapped)
    assert data.read_captions_file(tmp_path / "h.tsv", photos) == [("p1.jpg", "kids")]


def test_the_custom_profile_prepares_it_through_the_cli(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAT_DATA", str(tmp_path / "root"))
    (tmp_path / "captions.csv").write_text(GOOD_CSV, encoding="utf-8")
    profile = get_profile("custom", image_size=32)
    monkeypatch.setattr("sat_helpers.config.get_profile", lambda name=None: profile)
    assert main(["data", "--captions", str(tmp_path / "captions.csv"),
                 "--images", str(photos)]) == 0
    prepared = data.prepared_dir(profile)  # image_size=32 is a variant: custom-<hash>
    assert prepared.parent == tmp_path / "root" / "prepared"
    assert capsys.readouterr().out.strip().endswith(str(prepared))
    report = data.PrepareReport.load(prepared)
    assert report.images == {"train": 4, "val": 1, "test": 1} and not report.bad_images
    assert np.load(prepared / "train_images.npy").shape == (4, 32, 32, 3)
    assert ensure_dataset(profile) == prepared  # notebooks find it through the profile


def test_the_custom_profile_without_its_json_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SAT_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match="sat data --captions FILE --images DIR"):
        ensure_dataset(get_profile("custom"))


@pytest.mark.parametrize("content, match", [
    ("image,caption\np0.jpg,a dog\nnope.jpg,a cat\n", r"c\.csv:3: .*no such image file"),
    ("image,caption\np0.jpg,a dog\np1.jpg,\n", r"c\.csv:3: empty caption for 'p1.jpg'"),
    ("image,caption\np0.jpg,a dog\np1.jpg,!!!\n", r"c\.csv:3: caption '!!!' .* no words"),
    ("p0.jpg,a dog\np1.jpg,a cat, sitting\n", r"c\.csv:2: 3 column\(s\), expected 2 "
                                              r"\(image file, caption\).*quote"),
    ("image,caption,source\np0.jpg,a dog\n", r"c\.csv:2: 2 column\(s\), expected 3 \(as the h"),
    ("image,caption\nbroken.jpg,a dog\n", r"c\.csv:2: 'broken.jpg': .* not a readable image"),
    ("picture,caption\np0.jpg,a dog\n", r"c\.csv:1: the header .* names no image column"),
    ("", r"c\.csv: no rows"),
])
def test_bad_rows_name_the_file_and_line(photos, tmp_path, content, match):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (tmp_path / "c.csv").write_text(content)
    with pytest.raises(DatasetError, match=match):
        captions_to_karpathy(tmp_path / "c.csv", photos, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_every_bad_row_is_listed_at_once_and_encoding_is_checked(photos, tmp_path):
    (tmp_path / "c.csv").write_text("p0.jpg,a dog\nx.jpg,a\ny.jpg,b\np1.jpg,\n")
    with pytest.raises(DatasetError, match=r"3 bad row\(s\) of 4") as error:
        captions_to_karpathy(tmp_path / "c.csv", photos, tmp_path / "out.json")
    assert all(f"c.csv:{line}:" in str(error.value) for line in (2, 3, 4))
    (tmp_path / "latin.csv").write_bytes("p0.jpg,a dog\np1.jpg,un caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv:2: not UTF-8"):
        captions_to_karpathy(tmp_path / "latin.csv", photos, tmp_path / "out.json")
    (tmp_path / "two.csv").write_text("p0.jpg,a dog\np1.jpg,a cat\n")
    with pytest.raises(DatasetError, match="2 image"):
        captions_to_karpathy(tmp_path / "two.csv", photos, tmp_path / "out.json")


def test_cli_errors_go_to_stderr(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAT_DATA", str(tmp_path / "root"))
    assert main(["data", "--captions", str(tmp_path / "c.csv")]) == 1
    assert "go together" in capsys.readouterr().err
    (tmp_path / "c.csv").write_text("p0.jpg,a dog\nnope.jpg,a cat\n")
    assert main(["data", "--captions", str(tmp_path / "c.csv"), "--images", str(photos)]) == 1
    assert "c.csv:2:" in capsys.readouterr().err
    assert main(["data", "--profile", "quick", "--captions", str(tmp_path / "c.csv"),
                 "--images", str(photos)]) == 1
    assert "pass --profile custom" in capsys.readouterr().err
