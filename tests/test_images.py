"""One image path: a photo is captioned the same whichever way it comes in, by the run's encoder.

A phone stores a portrait photo sideways with an EXIF orientation tag; the datasets, ``sat
caption`` and the explorer's upload must all turn it upright. And a run that fine-tuned its
encoder must be captioned with that encoder, not the pretrained one.
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sat_helpers.checkpoint import load_encoder, load_model
from sat_helpers.cli import main
from sat_helpers.config import get_profile
from sat_helpers.data import Vocab
from sat_helpers.encoder import Encoder, sample_images
from sat_helpers.images import (
    ORIENTATION,
    annotation_vectors,
    image_tensor,
    load_image,
    model_view,
)
from sat_helpers.search import beam_search
from sat_helpers.train import build_decoder
from sat_helpers.viz import explore

SIZE = 96  # the model's image side: small, so the tests are quick


def profile(**fields):
    return get_profile("quick", image_size=SIZE, grid=3, **fields)


def write_checkpoint(path, prof, encoder_state=None):
    """An untrained decoder whose words depend strongly on the image, saved as training does."""
    vocab = Vocab([f"w{i}" for i in range(40)])
    torch.manual_seed(0)
    dec = build_decoder(prof, len(vocab), Encoder(prof.encoder, pretrained=False).channels)
    with torch.no_grad():  # sharp attention over the 3 x 3 grid, a context that picks the word
        dec.attention.W_a.weight.mul_(20.0)
        dec.attention.w.weight.mul_(10.0)
        dec.L_z.weight.mul_(20.0)
        dec.L_o.weight.mul_(4.0)
    torch.save({"model": dec.state_dict(), "decoder_config": dict(dec.config),
                "vocab": vocab.words, "profile": prof.to_dict(), "encoder": encoder_state}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(a JPEG stored sideways with EXIF orientation 6, its upright copy as a PNG, the sideways
    pixels as a PNG without the tag)."""
    folder = tmp_path_factory.mktemp("photos")
    upright = Image.open(sample_images()["chelsea"]).convert("RGB").resize((150, 100))
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # displayed turned 90 degrees clockwise
    rotated = folder / "portrait.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, "JPEG", quality=90, exif=exif)
    with Image.open(rotated) as stored:
        ImageOps.exif_transpose(stored).save(folder / "upright.png")
        stored.convert("RGB").save(folder / "sideways.png")  # what ignoring the tag sees
    return rotated, folder / "upright.png", folder / "sideways.png"


def captions_of(paths, checkpoint, capsys):
    assert main(["caption", *map(str, paths), "--checkpoint", str(checkpoint), "--beam", "2"]) == 0
    return [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()]


def test_an_exif_rotated_jpeg_is_captioned_as_its_upright_copy(photos, tmp_path, capsys):
    rotated, upright, sideways = photos
    checkpoint = write_checkpoint(tmp_path / "best.pt", profile())
    got = captions_of([rotated, upright, sideways], checkpoint, capsys)
    assert got[2] != got[1]  # the test can tell: sideways pixels caption differently
    assert got[0] == got[1]  # sat caption turns the photo upright
    # the datasets' path (prepare, then evaluate) reads the same pixels
    assert (load_image(rotated, SIZE)[0] == load_image(upright, SIZE)[0]).all()
    assert torch.equal(image_tensor(rotated, SIZE), image_tensor(upright, SIZE))
    # and so does the explorer's upload
    decoder, vocab, prof, ckpt = load_model(checkpoint)
    ex = explore(decoder, vocab, load_encoder(ckpt, prof), max_len=prof.decode_max_len)
    for path in (rotated, upright):
        ex.add_uploads(({"name": path.name, "content": path.read_bytes()},))
    assert torch.equal(ex.features(rotated.name), ex.features(upright.name))


def test_a_fine_tuned_run_is_captioned_with_its_own_encoder(photos, tmp_path, capsys):
    _, upright, _ = photos
    prof = profile(fine_tune=1)
    tuned = Encoder(prof.encoder, grid=prof.grid, fine_tune=1, image_size=SIZE)
    with torch.no_grad():  # what fine-tuning changed: the last block's weights
        for p in tuned.blocks[tuned.trainable_blocks[0]].parameters():
            p.mul_(-1.5)
    checkpoint = write_checkpoint(tmp_path / "best.pt", prof, tuned.state_dict())
    decoder, vocab, _, ckpt = load_model(checkpoint)
    pixels = image_tensor(upright, SIZE)[None]
    frozen = Encoder(prof.encoder, grid=prof.grid, image_size=SIZE).eval()
    with torch.no_grad():
        want, other = (" ".join(beam_search(decoder, annotation_vectors(e.eval(), pixels), 2,
                                            prof.decode_max_len, vocab=vocab)[0].words)
                       for e in (tuned, frozen))
    assert want != other  # the test can tell the two encoders apart
    assert captions_of([upright], checkpoint, capsys) == [want]
    ex = explore(decoder, vocab, load_encoder(ckpt, prof), {"photo": Image.open(upright)},
                 max_len=prof.decode_max_len, beam_size=2)
    assert " ".join(ex.caption.words) == want


def test_shorter_side_crop_keeps_the_centre_and_the_aspect(tmp_path):
    """The paper's resize: shorter side to S, centre S x S kept; squash keeps the whole width."""
    wide = np.zeros((60, 180, 3), dtype=np.uint8)  # a red third, a green centre, a blue third
    wide[:, :60, 0], wide[:, 60:120, 1], wide[:, 120:, 2] = 255, 255, 255
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    crop, size = load_image(path, 30, "shorter_side_crop")
    assert size == (180, 60) and crop.shape == (30, 30, 3)
    assert (crop[..., 1] > 250).all() and (crop[..., [0, 2]] < 5).all()  # only the centre
    squashed = load_image(path, 30)[0]
    assert squashed[:, :5, 0].min() > 250 and squashed[:, -5:, 2].min() > 250  # all of it
    by_hand = Image.fromarray(wide).resize((90, 30), Image.Resampling.BICUBIC).crop((30, 0, 60, 30))
    difference = np.abs(crop.astype(int) - np.asarray(by_hand, dtype=int))
    assert difference[:, 1:-1].max() <= 2  # only the filter's reach over the cut edges differs
    assert torch.equal(image_tensor(path, 30, "shorter_side_crop"),
                       torch.from_numpy(crop).permute(2, 0, 1))
    assert model_view(Image.fromarray(wide), "shorter_side_crop").size == (60, 60)
    encoder = Encoder("efficientnet_lite0_s16", pretrained=False, image_size=32,
                      resize="shorter_side_crop")
    assert torch.equal(encoder.transform(Image.open(path)),
                       encoder.preprocess(image_tensor(path, 32, "shorter_side_crop")[None])[0])
    with pytest.raises(ValueError, match="resize='crop'.*shorter_side_crop"):
        load_image(path, 30, "crop")
