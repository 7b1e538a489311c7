"""The Shapes generator: deterministic, truthful boxes and captions, Karpathy format."""

import json

import numpy as np
import pytest
from PIL import Image

from sat_helpers import shapes
from sat_helpers.data import load_karpathy_json, tokenize

N_SCENES = 300


@pytest.fixture(scope="module")
def scenes():
    """(objects, captions, image) of many scenes at 224 px, drawn without touching disk."""
    return [shapes.make_image(i, seed=7, image_size=224) for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "a"
    return shapes.make_shapes_dataset(root, 20, 96, seed=3, val_fraction=0.2, test_fraction=0.1)


def test_same_seed_same_bytes_and_pixels(generated, tmp_path):
    again = shapes.make_shapes_dataset(tmp_path / "b", 20, 96, seed=3, val_fraction=0.2,
                                       test_fraction=0.1, workers=2)
    assert again.read_bytes() == generated.read_bytes()
    names = sorted(p.name for p in (generated.parent / "images").iterdir())
    assert names == sorted(p.name for p in (again.parent / "images").iterdir())
    assert len(names) == 20
    for name in names:
        a = np.asarray(Image.open(generated.parent / "images" / name))
        b = np.asarray(Image.open(again.parent / "images" / name))
        assert np.array_equal(a, b), name


def test_another_seed_differs(generated, tmp_path):
    other = shapes.make_shapes_dataset(tmp_path / "c", 20, 96, seed=4, val_fraction=0.2,
                                       test_fraction=0.1)
    assert other.read_bytes() != generated.read_bytes()


def test_karpathy_format_and_splits(generated):
    data = load_karpathy_json(generated)
    assert data["dataset"] == "shapes"
    images = data["images"]
    assert [im["split"] for im in images] == ["train"] * 14 + ["val"] * 4 + ["test"] * 2
    sentids = [s["sentid"] for im in images for s in im["sentences"]]
    assert len(set(sentids)) == len(sentids) == 100
    for i, im in enumerate(images):
        assert im["imgid"] == i and (generated.parent / "images" / im["filename"]).exists()
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == i and s["tokens"] == tokenize(s["raw"])
        with Image.open(generated.parent / "images" / im["filename"]) as picture:
            assert picture.size == (96, 96) and picture.mode == "RGB"


def test_rebuild_replaces_root_atomically(tmp_path):
    root = tmp_path / "s"
    shapes.make_shapes_dataset(root, 12, 64, seed=0)
    shapes.make_shapes_dataset(root, 10, 64, seed=0)
    assert len(list((root / "images").iterdir())) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_objects_count_size_inside_and_apart(scenes):
    counts = set()
    for objects, _, _ in scenes:
        counts.add(len(objects))
        for k, obj in enumerate(objects):
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
            assert min(x1 - x0, y1 - y0) >= 28, "small objects must span >= 1.5 cells of 14x14"
            for other in objects[k + 1:]:
                ox0, oy0, ox1, oy1 = other["box"]
                assert x1 <= ox0 or ox1 <= x0 or y1 <= oy0 or oy1 <= y0, (obj, other)
    assert counts == {1, 2, 3}


def test_variety_of_shapes_colours_sizes_positions(scenes):
    objects = [o for objs, _, _ in scenes for o in objs]
    assert len({o["shape"] for o in objects}) >= 5
    assert len({o["colour"] for o in objects}) >= 6
    assert {o["size"] for o in objects} == {"small", "large"}
    centres = np.array([[(o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2]
                        for o in objects])
    assert centres.min() < 40 and centres.max() > 184, "objects must reach the whole frame"


def test_five_distinct_truthful_captions(scenes):
    templates = set()
    for objects, captions, _ in scenes:
        assert len(captions) == 5 and len(set(captions)) == 5, captions
        for caption in captions:
            words = tokenize(caption)
            assert 2 <= len(words) <= 20, caption
            named = [shapes.OBJECT_WORDS[w] for w in words if w in shapes.OBJECT_WORDS]
            for attribute, value in named:
                assert value in {o[attribute] for o in objects}, (caption, objects)
            templates.add(words[0] + " " + words[1])
    assert len(templates) >= 8, "captions should come from several templates"
    words = {w for _, captions, _ in scenes for c in captions for w in tokenize(c)}
    assert {"two", "three", "left", "right", "above", "below", "big", "little", "box"} <= words


def test_relation_words_match_the_boxes():
    a = {"box": [0, 100, 30, 130]}
    b = {"box": [100, 90, 160, 150]}
    c = {"box": [90, 0, 130, 40]}
    assert shapes.relation(a, b) == "to the left of"
    assert shapes.relation(b, a) == "to the right of"
    assert shapes.relation(c, b) == "above"
    assert shapes.relation(b, c) == "below"


def test_relation_captions_agree_with_the_scene(scenes):
    checked = 0
    for objects, captions, _ in scenes:
        if len(objects) != 2 or objects[0]["shape"] == objects[1]["shape"]:
            continue
        for caption in captions:
            words = tokenize(caption)
            for phrase in ("to the left of", "to the right of", "above", "below"):
                text = " ".join(words)
                if f" {phrase} " in text:
                    first = next(w for w in words if shapes.OBJECT_WORDS.get(w, "-")[0] == "shape")
                    a = next(o for o in objects if o["shape"] == shapes.OBJECT_WORDS[first][1])
                    b = next(o for o in objects if o is not a)
                    assert shapes.relation(a, b) == phrase, (caption, objects)
                    checked += 1
    assert checked > 50


def test_pixels_show_the_described_colours(scenes):
    palette = np.array(list(shapes.COLOURS.values()), dtype=float)
    names = list(shapes.COLOURS)
    for objects, _, image in scenes[:60]:
        pixels = np.asarray(image, dtype=float)
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            if obj["shape"] == "triangle":
                cy = (y0 + 2 * y1) // 3
            mean = pixels[cy - 2: cy + 3, cx - 2: cx + 3].reshape(-1, 3).mean(0)
            nearest = names[int(np.argmin(((palette - mean) ** 2).sum(1)))]
            assert nearest == obj["colour"], (obj, mean)


def test_background_is_textured(scenes):
    for _, _, image in scenes[:20]:
        pixels = np.asarray(image, dtype=float)
        assert pixels.std() > 8
    assert json.dumps(scenes[0][0])  # objects are plain JSON data


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real, calls = shapes.render, []

    def flaky(*args):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args)

    monkeypatch.setattr(shapes, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        shapes.make_shapes_dataset(tmp_path / "s", 10, 64, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="no training images"):
        shapes.make_shapes_dataset(tmp_path / "x", 4, 64, val_fraction=0.5, test_fraction=0.5)
    assert not (tmp_path / "x").exists()
