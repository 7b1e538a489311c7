"""Attention figures and the explorer, driven programmatically (no browser)."""

import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from sat_helpers.data import Vocab
from sat_helpers.decoder import AttentionDecoder
from sat_helpers.search import beam_search
from sat_helpers.viz import attention_maps, explore, plot_attention, uploaded_files

matplotlib.use("Agg")


class TinyEncoder(torch.nn.Module):
    """uint8 (B, 3, 16, 16) -> a 2x2 grid of 3-d annotation vectors; frozen, like a real one."""

    input_size, trainable_blocks, resize = 16, [], "squash"

    def preprocess(self, images):
        return torch.nn.functional.interpolate(images.float() / 255, size=(16, 16))

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)


def model():
    torch.manual_seed(0)
    vocab = Vocab(["red", "blue", "circle", "star"])
    dec = AttentionDecoder(len(vocab), 3, embed_dim=4, dec_dim=6, att_dim=5)
    with torch.no_grad():
        dec.embedding.weight.normal_()  # words far apart (the init is 0.01): a caption of words
        dec.L_o.weight.mul_(4)
        dec.L_o.bias[vocab.end_id] -= 1.0
    return dec, vocab


def png(color, size=(40, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_attention_map_peaks_where_alpha_points(device):
    alpha = torch.zeros(2, 16, device=device)  # a Caption's alphas live on the decoder's device
    alpha[0, 1 * 4 + 3] = 1.0  # row 1, column 3 of a 4x4 grid
    alpha[1] = 1 / 16
    for smooth in (True, False):
        maps = attention_maps(alpha, (64, 64), smooth)
        assert maps.shape == (2, 64, 64) and np.allclose(maps.max(axis=(1, 2)), 1.0)
        row, col = np.unravel_index(maps[0].argmax(), (64, 64))
        assert 16 <= row < 32 and 48 <= col < 64
        assert np.allclose(maps[1], 1.0, atol=1e-5)  # uniform attention: a flat map
    assert not np.allclose(attention_maps(alpha, (64, 64), True)[0],
                           attention_maps(alpha, (64, 64), False)[0])


def test_plot_attention_one_panel_per_word(device):
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    fig = plot_attention(image, ["a", "red", "star"], torch.rand(4, 16, device=device).softmax(-1))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["image", "a", "red", "star", "<end>"]
    with pytest.raises(ValueError, match="attention maps"):
        plot_attention(image, ["a"], torch.rand(3, 16))


def test_uploaded_files_both_ipywidgets_formats():
    v8 = ({"name": "a.png", "type": "image/png", "size": 3, "content": memoryview(b"abc")},)
    v7 = {"a.png": {"metadata": {"name": "a.png"}, "content": b"abc"}}
    assert uploaded_files(v8) == uploaded_files(v7) == [("a.png", b"abc")]


def test_explorer_driven_by_its_widgets(device):
    dec, vocab = model()
    dec.to(device)  # the explorer encodes on the decoder's device
    quadrants = np.zeros((40, 40, 3), dtype=np.uint8)
    quadrants[:20, :20, 0], quadrants[20:, 20:, 2], quadrants[:20, 20:] = 250, 250, 120
    images = {"green": Image.fromarray(quadrants),
              "tensor": torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)}
    ex = explore(dec, vocab, TinyEncoder(), images, max_len=6, beam_size=2)
    feats = {name: ex.features(name) for name in images}
    assert all(f.device.type == device.type for f in feats.values())
    expected = beam_search(dec, feats["green"], 2, 6, vocab=vocab)[0]
    assert ex.caption.tokens == expected.tokens
    assert ex.word.max == expected.alphas.shape[0] - 1
    assert ex.picture.value[:4] == b"\x89PNG"
    assert ex.word.max > 0
    before = ex.picture.value
    ex.word.value = ex.word.max
    assert ex.picture.value != before and "<u>" in ex.text.value
    ex.beam.value = 4
    assert ex.caption.tokens == beam_search(dec, feats["green"], 4, 6, vocab=vocab)[0].tokens
    assert "beam 4," in ex.text.value
    ex.choose.value = "tensor"
    assert ex.caption.tokens == beam_search(dec, feats["tensor"], 4, 6, vocab=vocab)[0].tokens

    ex.add_uploads(({"name": "mine.png", "type": "image/png", "size": 1,
                     "content": memoryview(png((200, 0, 0)))},))
    assert ex.choose.value == "mine.png" and "mine.png" in ex.choose.options
    ex.add_uploads({"broken.jpg": {"metadata": {}, "content": b"not an image"}})
    assert "broken.jpg" in ex.status.value and ex.choose.value == "mine.png"


# ---------------------------------------------------------------- the `sat caption` command

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained checkpoint in the trainer's format (quick profile, real encoder)."""
    from sat_helpers.config import get_profile
    from sat_helpers.encoder import get_spec
    from sat_helpers.train import build_decoder

    profile = get_profile("quick")
    vocab = Vocab(["a", "red", "blue", "circle", "star"])
    torch.manual_seed(0)
    dec = build_decoder(profile, len(vocab), get_spec(profile.encoder).channels)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": dec.state_dict(), "decoder_config": dict(dec.config),
                "vocab": vocab.words, "profile": profile.to_dict()}, path)
    return path


def sample(name="chelsea.png"):
    from importlib.resources import files

    return str(files("sat_helpers") / "samples" / name)


def test_cli_captions_a_photo(checkpoint, tmp_path, capsys):
    from sat_helpers.cli import main

    plot = tmp_path / "att.png"
    assert main(["caption", sample(), "--checkpoint", str(checkpoint), "--beam", "2",
                 "--max-len", "4", "--plot", str(plot)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(sample() + ":")
    assert set(line.split(":", 1)[1].split()) <= {"a", "red", "blue", "circle", "star"}
    assert plot.stat().st_size > 0


def test_cli_errors_name_the_problem(checkpoint, tmp_path, capsys):
    from sat_helpers.cli import main

    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is no image")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    ckpt = torch.load(checkpoint, weights_only=True)
    wrong_vocab = tmp_path / "wrong_vocab.pt"
    torch.save({**ckpt, "vocab": ["a", "red"]}, wrong_vocab)
    no_profile = tmp_path / "no_profile.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "profile"}, no_profile)
    cases = [
        ([str(tmp_path / "missing.jpg")], checkpoint, "no such image file"),
        ([sample(), str(fake)], checkpoint, "cannot read it as an image"),
        ([sample()], tmp_path / "none.pt", "No checkpoint at"),
        ([sample()], garbage, "Could not load checkpoint"),
        ([sample()], no_profile, "stores no profile"),
        ([sample()], wrong_vocab, "vocabulary has 6 entries"),
    ]
    for images, path, message in cases:
        assert main(["caption", *images, "--checkpoint", str(path)]) == 1
        captured = capsys.readouterr()
        assert message in captured.err and not captured.out
