"""The encoder: right weights, right shapes, truly frozen, honest errors, a faithful cache."""

import json
import pickle
import warnings
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sat_helpers import encoder as enc
from sat_helpers import features as feat
from sat_helpers.config import get_profile
from sat_helpers.data import Vocab
from sat_helpers.encoder import (
    Encoder,
    FeatureDataset,
    WeightsUnavailableError,
    cache_features,
    ensure_features,
    imagenet_top_k,
    list_encoders,
    lite0_weights_path,
    load_by_position,
    sample_images,
)
from sat_helpers.images import load_image

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_lite0_weights_load_by_position_and_see_a_cat():
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = enc._build_lite0(pretrained=True)  # raises on any count or shape mismatch
    assert len(state) == len(model.state_dict()) == 296
    for (name, loaded), source in zip(model.state_dict().items(), state.values(), strict=True):
        assert torch.equal(loaded, source), name
    top = imagenet_top_k("efficientnet_lite0", sample_images()["chelsea"], k=5)
    assert top.class_id[0] in CAT_CLASSES and top.probability[0] >= 0.5, top
    assert top.probability.is_monotonic_decreasing


def test_load_by_position_refuses_a_misfit():
    model = nn.Linear(2, 3)
    with pytest.raises(WeightsUnavailableError, match="mismatch"):
        load_by_position(model, {"w": torch.zeros(2, 3), "b": torch.zeros(3)}, "bad.pth")
    with pytest.raises(WeightsUnavailableError, match="holds 1 tensors"):
        load_by_position(model, {"w": torch.zeros(3, 2)}, "short.pth")


@pytest.mark.parametrize("name, size, grid, expected, native", [
    ("resnet18", 224, 7, (2, 49, 512), 7),
    ("resnet34", 224, None, (2, 196, 512), 7),
    ("resnet50", 96, 6, (2, 36, 2048), 6),  # the big ones at small sizes: CPU time
    ("resnet101", 64, 4, (2, 16, 2048), 4),  # dilated: stride 16
    ("resnet101_s32", 128, 4, (2, 16, 2048), 4),
    ("resnet152", 64, 1, (2, 1, 2048), 4),
    ("vgg16", 112, 7, (2, 49, 512), 7),
    ("vgg19", 64, 4, (2, 16, 512), 4),
    ("efficientnet_lite0_s16", 224, 14, (2, 196, 112), 14),
    ("efficientnet_lite0_s32", 224, 7, (2, 49, 320), 7),
    ("efficientnet_lite0", 224, 7, (2, 49, 112), 14),
])
def test_output_shapes_with_random_weights(name, size, grid, expected, native):
    encoder = Encoder(name, pretrained=False, grid=grid, image_size=size).eval()
    images = torch.randint(0, 256, (2, 3, 100, 120), dtype=torch.uint8)
    x = encoder.preprocess(images)
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    with torch.inference_mode():
        fmap = encoder.feature_map(x)
        out = encoder(x)
    assert fmap.shape == (2, encoder.channels, native, native)
    assert out.shape == expected and encoder.grid ** 2 == expected[1]
    if encoder.grid == native:  # no pooling: cell (i, j) is annotation vector i * grid + j
        assert torch.equal(out[:, 2 * native + 3], fmap[:, :, 2, 3])


def test_registry_lists_every_encoder():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet101_s32", "resnet152",
            "vgg16", "vgg19", "efficientnet_lite0_s16", "efficientnet_lite0_s32",
            "efficientnet_lite0"} == set(list_encoders())
    with pytest.raises(ValueError, match="Unknown encoder 'resnet7'"):
        Encoder("resnet7", pretrained=False)


def batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_encoder_has_no_gradients_and_fixed_batchnorm():
    encoder = Encoder("efficientnet_lite0_s16", grid=4, image_size=64).train()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.training and not any(bn.training for bn in batchnorms(encoder))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder(torch.randn(4, 3, 64, 64) * 3 + 1)
    for key, value in encoder.state_dict().items():
        assert torch.equal(before[key], value), f"{key} moved in a train-mode forward"


def test_transform_matches_preprocess_and_pickles():
    encoder = Encoder("efficientnet_lite0_s16", pretrained=False, image_size=64)
    transform = pickle.loads(pickle.dumps(encoder.transform))  # DataLoader workers need this
    image = Image.open(sample_images()["coffee"])
    pixels = torch.from_numpy(load_image(sample_images()["coffee"], 64)[0])  # as datasets hold it
    expected = pixels.permute(2, 0, 1).float() / 127.5 - 1  # Lite0: mean = std = 0.5
    assert torch.allclose(transform(image), expected, atol=1e-5)
    assert torch.allclose(encoder.preprocess(pixels.permute(2, 0, 1)[None])[0], expected,
                          atol=1e-5)


def test_fine_tune_unfreezes_exactly_the_last_blocks():
    encoder = Encoder("resnet18", pretrained=False, grid=2, fine_tune=1)
    assert encoder.trainable_blocks == ["layer4"]
    for name, p in encoder.named_parameters():
        assert p.requires_grad == name.startswith("blocks.layer4."), name
    encoder.train()
    frozen_bn, tuned_bn = batchnorms(encoder.blocks.layer3)[0], batchnorms(encoder.blocks.layer4)[0]
    frozen_before, tuned_before = frozen_bn.running_mean.clone(), tuned_bn.running_mean.clone()
    encoder(torch.randn(2, 3, 64, 64))
    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert not torch.equal(tuned_bn.running_mean, tuned_before)  # the trained block does learn

    assert Encoder("resnet18", pretrained=False, fine_tune=True).trainable_blocks == \
        ["layer2", "layer3", "layer4"]  # as the seed's fine_tune(True)
    lite = Encoder("efficientnet_lite0_s16", pretrained=False, fine_tune=2)
    assert lite.trainable_blocks == ["stage4", "stage5"]
    assert {n.split(".")[1] for n, p in lite.named_parameters() if p.requires_grad} == \
        {"stage4", "stage5"}
    with pytest.raises(ValueError, match="fine_tune=9"):
        Encoder("efficientnet_lite0_s16", pretrained=False, fine_tune=9)


def test_missing_torchvision_weights_say_what_to_do(monkeypatch, tmp_path):
    def no_network(url, *args, **kwargs):
        raise URLError("no network (simulated)")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # nothing cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as error:
        Encoder("resnet18")  # the smallest: the error path is the same for every torchvision net
    message = str(error.value)
    for part in ("ResNet18_Weights.IMAGENET1K_V1", "no network (simulated)",
                 "efficientnet_lite0", "pretrained=False"):
        assert part in message


def make_prepared(root, size=48, counts=None, cpi=2, max_len=4):
    """A tiny prepared dataset in the layout of sat_helpers.data.prepare_dataset."""
    counts = counts or {"train": 3, "val": 2, "test": 2}
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    vocab = Vocab(["a", "red", "circle"])
    vocab.save(root / "vocab.json")
    (root / "manifest.json").write_text(json.dumps({"params": {"captions_per_image": cpi}}))
    for split, n in counts.items():
        np.save(root / f"{split}_images.npy", rng.integers(0, 256, (n, size, size, 3), np.uint8))
        captions = np.zeros((n * cpi, max_len + 2), np.int64)
        captions[:, :3] = [vocab.start_id, 4, vocab.end_id]
        captions[:, 1] = np.arange(n * cpi) % 3 + 4
        np.save(root / f"{split}_captions.npy", captions)
        np.save(root / f"{split}_lengths.npy", np.full(n * cpi, 3, np.int64))
        meta = [{"id": i, "filename": f"{i}.png", "width": size, "height": size,
                 "references": [["a", "red", "circle"]]} for i in range(n)]
        (root / f"{split}_meta.json").write_text(json.dumps(meta))
    return root


def test_cached_features_equal_a_direct_forward(tmp_path):
    dataset = make_prepared(tmp_path / "prepared")
    encoder = Encoder("efficientnet_lite0_s16", grid=2, image_size=48)
    path = cache_features(encoder, dataset, "val", tmp_path / "features", batch_size=1)
    cached = np.load(path)
    assert cached.dtype == np.float16 and cached.shape == (2, 4, 112)
    images = torch.from_numpy(np.load(dataset / "val_images.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        direct = encoder(encoder.preprocess(images)).numpy()
    np.testing.assert_allclose(cached.astype(np.float32), direct, rtol=2e-3,
                               atol=2e-3 * np.abs(direct).max())
    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    assert manifest["key"]["encoder"] == "efficientnet_lite0_s16"
    assert manifest["key"]["grid"] == 2 and manifest["splits"]["val"]["shape"] == [2, 4, 112]
    assert not list((tmp_path / "features").glob(".*tmp*"))

    items = FeatureDataset(tmp_path / "features", dataset, "val")
    features, caption, length, all_captions = pickle.loads(pickle.dumps(items))[1]
    captions = np.load(dataset / "val_captions.npy")
    assert features.dtype == torch.float32 and torch.equal(features, torch.from_numpy(
        cached[1].astype(np.float32)))
    assert torch.equal(caption, torch.from_numpy(captions[2])) and length == 3
    assert torch.equal(all_captions, torch.from_numpy(captions[2:4]))


def test_ensure_features_reuses_a_matching_cache(tmp_path, monkeypatch):
    dataset = make_prepared(tmp_path / "prepared", size=32)
    monkeypatch.setenv("SAT_DATA", str(tmp_path / "root"))
    monkeypatch.setattr(feat, "ensure_dataset", lambda profile: dataset)
    profile = get_profile("quick", image_size=32, grid=2)
    out = ensure_features(profile, device="cpu")
    assert out == enc.features_dir(profile) and out.name.endswith("-efficientnet_lite0_s16-2")
    train = FeatureDataset(out, dataset, "train")
    assert len(train) == 6 and train[5][0].shape == (4, 112) and train[5][2] == 3

    calls = []
    monkeypatch.setattr(feat, "cache_features", lambda *args, **kw: calls.append(args[2]))
    assert ensure_features(profile) == out and calls == []
    (dataset / "manifest.json").write_text(json.dumps({"params": {"rebuilt": True}}))
    ensure_features(profile)
    assert calls == ["train", "val", "test"]  # another build of the dataset: recompute
    with pytest.raises(FileNotFoundError, match="another build"):
        FeatureDataset(out, dataset, "train")


def test_a_grid_larger_than_the_map_warns_once(monkeypatch):
    monkeypatch.setattr(enc, "_WARNED", set())
    with pytest.warns(enc.UpsampledGridWarning, match=r"2x2 feature map \(stride 32\).*"
                      r"grid=4.*copies of 4 real regions.*image_size >= 128"):
        Encoder("resnet18", pretrained=False, grid=4, image_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning now fails the test
        Encoder("resnet18", pretrained=False, grid=4, image_size=64)  # once is enough
        Encoder("resnet18", pretrained=False, grid=2, image_size=64)  # a true 2 x 2


@pytest.mark.parametrize("name", ["flickr8k", "flickr30k", "coco", "custom"])
def test_real_data_profiles_attend_over_a_true_grid(name):
    profile = get_profile(name)
    spec = enc.get_spec(profile.encoder)
    assert profile.grid == 14 and profile.image_size / spec.stride >= profile.grid
    assert spec.name == "resnet101" and spec.stride == 16 and spec.channels == 2048


def test_the_dilated_resnet_loads_the_imagenet_weights_unchanged(monkeypatch, tmp_path):
    # test-made weights where torch's hub cache keeps the download: no network is touched
    weights = enc._torchvision_weights("resnet50")
    source = enc._build_torchvision("resnet50", pretrained=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / weights.url.split("/")[-1])
    encoder = Encoder("resnet50", pretrained=True, grid=4, image_size=64).eval()
    assert torch.equal(encoder.blocks.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    assert encoder.blocks.layer4[1].conv2.dilation == (2, 2)  # same weights, stride 16
    with torch.inference_mode():
        assert encoder.feature_map(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 4, 4)


def test_features_beyond_float16_are_an_error_and_nothing_is_cached(tmp_path):
    dataset = make_prepared(tmp_path / "prepared")
    encoder = Encoder("efficientnet_lite0_s16", grid=2, image_size=48)
    with torch.no_grad():
        batchnorms(encoder.blocks.stage5)[-1].weight.mul_(1e6)  # activations far above 65504
    with pytest.raises(enc.NonFiniteFeaturesError) as error:
        cache_features(encoder, dataset, "val", tmp_path / "features", batch_size=4)
    message = str(error.value)
    for part in ("'efficientnet_lite0_s16'", "2 image(s) of the val split", "#0 0.png",
                 "#1 1.png", "65504", "weights"):
        assert part in message, part
    assert not list((tmp_path / "features").glob("*.npy*")) and not list(
        (tmp_path / "features").glob(".*"))
    assert "val" not in feat._read_manifest(tmp_path / "features").get("splits", {})


def test_long_steps_check_the_free_disk_first(tmp_path, monkeypatch):
    from sat_helpers import download

    dataset = make_prepared(tmp_path / "prepared")
    usage = download.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    encoder = Encoder("efficientnet_lite0_s16", pretrained=False, grid=2, image_size=48)
    with pytest.raises(download.NotEnoughDiskError, match=r"val feature cache of "
                       r"efficientnet_lite0_s16 needs 1.8 kB free in .*features.*only 1.0 kB"):
        cache_features(encoder, dataset, "val", tmp_path / "features")
    assert not (tmp_path / "features" / "val.npy").exists()


def test_without_a_feature_cache_only_val_and_test_are_cached(tmp_path, monkeypatch):
    dataset = make_prepared(tmp_path / "prepared", size=32)
    monkeypatch.setenv("SAT_DATA", str(tmp_path / "root"))
    monkeypatch.setattr(feat, "ensure_dataset", lambda profile: dataset)
    assert enc.cached_splits(get_profile("coco")) == ("val", "test")  # 91 GB for train
    assert enc.cached_splits(get_profile("flickr8k")) == ("train", "val", "test")
    out = ensure_features(get_profile("quick", image_size=32, grid=2, feature_cache=False))
    assert sorted(p.name for p in out.glob("*.npy")) == ["test.npy", "val.npy"]


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm statistics and an affine map far from the identity."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _within_float16_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Features whose float16 values differ by at most one float16 step at the features' scale
    (their largest magnitude): the rounding error a float16 cache already has there."""
    a, b = a.half().float(), b.half().float()
    step = float(np.spacing(np.float16(b.abs().max().item())))
    return bool((a - b).abs().max() <= step) and not torch.equal(b, torch.zeros_like(b))


@pytest.mark.parametrize("name, pretrained", [("efficientnet_lite0_s16", True),
                                              ("resnet18", False)])
def test_folded_batchnorm_gives_the_same_features(name, pretrained):
    encoder = Encoder(name, pretrained=pretrained, grid=2, image_size=64).eval()
    if not pretrained:
        _randomise_batchnorm(encoder)
    folded = feat.fold_batchnorm(encoder)
    assert any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())  # untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # all folded
    x = encoder.preprocess(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    with torch.inference_mode():
        assert _within_float16_rounding(folded(x), encoder(x))


def test_an_encoder_that_does_not_fold_is_cached_as_it_is():
    class BatchNormOutOfOrder(nn.Module):  # registers conv2 between conv1 and conv1's norm
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.norm = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), \
                nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv2(self.norm(self.conv1(x)))

    model = _randomise_batchnorm(BatchNormOutOfOrder()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert not torch.allclose(feat.fold_batchnorm(model)(x), model(x), atol=1e-2)
        used, features = feat.fast_encoder(model, x, torch.contiguous_format)
        assert used is model and torch.equal(features, model(x))


def test_the_cache_holds_the_encoders_features_within_float16_rounding(tmp_path):
    dataset = make_prepared(tmp_path / "prepared", size=64, counts={"val": 5})
    encoder = Encoder("efficientnet_lite0_s16", grid=4, image_size=64)
    cached = np.load(cache_features(encoder, dataset, "val", tmp_path / "features", batch_size=2))
    images = torch.from_numpy(np.load(dataset / "val_images.npy")).permute(0, 3, 1, 2)
    with torch.inference_mode():
        direct = encoder.eval()(encoder.preprocess(images))
    assert _within_float16_rounding(torch.from_numpy(cached), direct)
