"""Profiles (the course's sizes and hyper-parameters), where files live, and course results.

A profile is one named set of every size and hyper-parameter the course uses. Every
notebook reads ``SAT_PROFILE`` (default ``shapes``) through :func:`get_profile` and hands
the profile to the helpers, so the same code runs at CI scale, laptop scale and GPU scale.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import typing
from dataclasses import InitVar, asdict, dataclass, replace
from pathlib import Path

GITHUB_REPO = "sat-course/show-attend-tell"
"""OWNER/REPO of the course on GitHub: the Colab links and the Colab install use it."""
COURSE_RELEASE = "v0.2.0"
"""The git tag every notebook's Colab setup cell installs; pyproject.toml's version matches it."""

DATASETS = ("shapes", "flickr8k", "flickr30k", "coco", "custom")


@dataclass(frozen=True)
class Profile:
    """Every size and hyper-parameter of one scale of the course."""

    name: str
    dataset: str = "shapes"
    # Shapes generation (ignored for real datasets)
    shapes_images: int = 6000
    shapes_seed: int = 0
    shapes_val_fraction: float = 0.1
    shapes_test_fraction: float = 0.1
    # dataset preparation
    image_size: int = 224
    resize: str = "squash"  # or "shorter_side_crop": how an image becomes S x S (images.py)
    min_word_freq: int = 1
    max_len: int = 20
    captions_per_image: int = 5
    data_seed: int = 0  # picks the target captions; apart from `seed`: other seeds share the data
    # encoder
    encoder: str = "efficientnet_lite0_s16"
    grid: int = 14
    fine_tune: bool | int = False
    feature_batch_size: int = 32
    # frozen encoder: cache every split's features (False: only val and test are cached, and
    # training runs the encoder on the device from the uint8 image array; COCO's train cache
    # would be 91 GB)
    feature_cache: bool = True
    # decoder
    embed_dim: int = 128
    att_dim: int = 128
    dec_dim: int = 256
    dropout: float = 0.5
    gate: str | None = "scalar"
    deep_output: bool = True
    # training
    batch_size: int = 64
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    grad_clip: float = 5.0
    # λ of soft attention's doubly stochastic penalty, λ · mean_i (1 − Σ_t α_ti)² against the
    # per-word cross-entropy. Eq. 14 sums over the L positions against a caption's summed NLL,
    # so eq. 14's λ_paper is λ = λ_paper · L / (words per caption) here (attention.
    # paper_lam_to_package): λ_paper = 1 is λ ≈ 18 on a 14 x 14 grid with 11-word captions.
    lam: float = 1.0
    hard_lam: float = 0.0  # the same penalty for hard attention: Sec. 4.1 has none
    # λ_e, hard attention's entropy bonus per word. Eq. 12's λ_e (per caption, batch-averaged)
    # is the same number; the authors' alpha_entropy_c = 0.002 (summed over the batch, no 1/B)
    # is λ_e = 0.002 · batch_size (losses.authors_entropy_weight).
    entropy_weight: float = 0.01
    baseline_decay: float = 0.9  # b's moving average, as in capgen.py (0.9)
    expected_context_p: float = 0.5  # P(a hard minibatch uses the expected context Σ α_i a_i)
    # λ_r, the REINFORCE term's weight, in eq. 12's units under either reward (losses.REWARDS):
    # with "caption_sum" the reward is the caption's log-likelihood, as eq. 12 prints it; with
    # "authors" it is capgen.py's per-word mean / 10 per caption, and λ_r = 1 is their rule.
    reinforce_weight: float = 1.0
    reinforce_reward: str = "caption_sum"
    epochs: int = 24  # the budget: fixed epochs give the same model on any machine
    # Hard attention starts from the soft run's state after this many of its epochs and trains
    # the rest of the epochs with hard attention: both models get the same epoch budget, and
    # the soft run's first epochs serve both (0: hard attention from scratch, as in the paper).
    hard_warm_start: int = 0
    train_minutes: float = 60.0  # a safety cap only, for very slow machines
    lr_schedule: str = "plateau"  # or "cosine": how the learning rate falls (train.lr_scheduler)
    lr_decay: float = 0.8  # "plateau": the factor, after lr_patience epochs without progress
    lr_patience: int = 3
    early_stop_patience: int = 8
    num_workers: int = 0
    seed: int = 0
    amp: str = "auto"  # CUDA: "auto" = bf16 where the GPU has it, else fp16; "bf16", "fp16", "off"
    deterministic: bool = False  # CUDA: deterministic kernels, so that resume is exact there too
    # decoding and evaluation
    beam_size: int = 3
    decode_max_len: int = 20  # words of a decoded caption at most; its <end> comes on top
    # what the notebooks assert about learned quality at this scale
    expect_bleu4: float = 0.5
    expect_pointing: float = 0.7
    expect_hard_over_soft: float = 0.8  # hard BLEU-4 >= this x soft's, sharper maps (0: no claim)
    ci_scale: bool = False  # the tests' scale: notebooks skip METEOR's Java start, timing asserts
    semi_sampling_p: InitVar[None] = None  # renamed (RENAMED): only here to say what it became

    def __post_init__(self, semi_sampling_p):
        if semi_sampling_p is not None:
            raise ValueError(renamed_message("semi_sampling_p"))
        if not 0 <= self.hard_warm_start < self.epochs:
            raise ValueError(f"Profile {self.name!r}: hard_warm_start={self.hard_warm_start} "
                             "must be 0 (hard attention from scratch) or between 1 and epochs - 1 "
                             f"(epochs={self.epochs})")

    def to_dict(self) -> dict:
        """The profile as plain data (for manifests and checkpoints)."""
        return asdict(self)


RENAMED = {"semi_sampling_p": (
    "expected_context_p",
    "it was the probability that a hard-attention minibatch uses the expected context; the "
    "authors' code (capgen.py) uses the name semi_sampling_p for the opposite, the probability "
    "that a minibatch samples. expected_context_p = 1 - their semi_sampling_p")}
"""Old profile field names, each with its new name and why it changed."""


def renamed_message(old: str) -> str:
    """The error a renamed profile field gives: what it became and why."""
    new, why = RENAMED[old]
    return f"Profile field {old!r} is now {new!r}: {why}."


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        ci_scale=True,
        shapes_images=60,
        shapes_val_fraction=0.2,
        shapes_test_fraction=0.2,
        epochs=2,
        train_minutes=5.0,  # epochs=2 ends it; a time cut would make the run depend on load
        batch_size=16,
        embed_dim=32,
        att_dim=32,
        dec_dim=64,
        decode_max_len=12,
        expect_bleu4=0.0,
        expect_pointing=0.0,
        expect_hard_over_soft=0.0,
    ),
    # λ = 0 on Shapes: at the authors' λ (alpha_c = 1, eq. 14's λ = 0.327, λ = 6 here) test
    # BLEU-4 fell on every seed (0.550 ± 0.009 against 0.566 ± 0.015, 3 seeds), the maps spread
    # out (entropy 4.98 against 4.31 nats), pointing rose on two seeds of three:
    # benchmarks/soft_seeds.py, benchmarks/results/soft_seeds-shapes-e24.md.
    # Hard attention: λ_r = 0.01 with the summed reward ("caption_sum"), i.e. eq. 12's λ_r =
    # 0.01, and λ_e = 0. At λ_r = 1 with that reward every seed captioned worse (the reward is
    # a whole caption's log-likelihood, and its noise is all the attention hears in a sampled
    # minibatch), and with the baseline started at the first sampled minibatch's mean most
    # seeds' α never left uniform. Measured over seeds, 24 epochs: benchmarks/hard_seeds.py,
    # benchmarks/results/hard_seeds-*.md. The authors' rule (λ_r = 1 with
    # reinforce_reward="authors", λ_e = 0.002 · batch_size) left α uniform on every seed:
    # benchmarks/results/hard_seeds-shapes-e24.md.
    # Feature cache batches of 16: on a 2-core CPU they encode faster than 32
    # (benchmarks/bench_features.py).
    # Dropout 0.3, where the authors' code (and every other profile) drops 0.5 at both of its
    # sites: at 0.5 the soft model captioned worse on every seed within the 24 epochs (test
    # BLEU-4 0.538 ± 0.012 against 0.566 ± 0.015, 3 seeds) and pointed worse on two of three:
    # benchmarks/recipe_seeds.py, benchmarks/results/recipes-shapes-soft-dropout.md.
    # Hard attention continues the soft run after 20 of its 24 epochs (hard_warm_start): over 3
    # seeds it captioned and pointed at least as well as from scratch (and as after 16 epochs),
    # its maps less sharp than from scratch but sharper than soft's, in a sixth of the hard
    # training time: benchmarks/recipe_seeds.py, benchmarks/results/recipes-shapes-hard-warm.md.
    # No early stopping on Shapes (patience = the 24 epochs; best.pt is still the epoch of the
    # best validation BLEU-4): a stop on that noisy score ended 2 of 5 soft runs at epochs
    # 17-18 on an Intel Xeon, and all 24 captioned and pointed better on both (5 seeds:
    # benchmarks/results/recipes-shapes-soft-nostop.md).
    "shapes": Profile(name="shapes", dropout=0.3, lam=0.0, reinforce_weight=0.01,
                      entropy_weight=0.0, feature_batch_size=16, hard_warm_start=20,
                      early_stop_patience=24),
    # 224 px: the dilated ResNet-101's map is a true 14 x 14 (stride 16), never pooled up
    "flickr8k": Profile(
        name="flickr8k",
        dataset="flickr8k",
        image_size=224,
        min_word_freq=5,
        max_len=50,
        encoder="resnet101",
        embed_dim=512,
        att_dim=512,
        dec_dim=512,
        batch_size=32,
        lr=4e-4,
        epochs=20,
        train_minutes=240.0,
        lr_patience=8,
        early_stop_patience=20,
        num_workers=2,
        beam_size=3,
        decode_max_len=50,
        expect_bleu4=0.15,
        expect_pointing=0.0,
        expect_hard_over_soft=0.0,  # hard vs soft was measured on Shapes only
    ),
}
# The CI scale of the photo path: flickr8k's code path (download, ResNet-101, no boxes) at toy
# sizes. The tests run it on a tiny Flickr8k look-alike (tests/lookalike.py); on the real
# Flickr8k it would train a toy model, so it expects nothing.
PROFILES["photos_quick"] = replace(
    PROFILES["flickr8k"], name="photos_quick", image_size=64, grid=4, min_word_freq=1,
    max_len=20, embed_dim=32, att_dim=32, dec_dim=64, batch_size=16, lr=3e-3, epochs=2,
    train_minutes=5.0, num_workers=0, feature_batch_size=8, decode_max_len=12,
    expect_bleu4=0.0, ci_scale=True)
# The paper's setup on Flickr8k (Xu et al. 2015, Sec. 4-5): VGG-19 conv5_4 (14 x 14 x 512,
# frozen), each image's shorter side resized to 224 and the centre cropped. The paper gives no
# layer sizes: 512 (word embedding), 512 (attention) and 1800 (LSTM) are the authors' example
# script's (arctic-captions evaluate_coco.py; capgen.train's own defaults are 100/512/1000), as
# are the minibatch of 64, Adam at 2e-4 (their optimizers.adam's fixed step) and dropout. Their
# alpha_c = 1 (summed over the batch, averaged over positions) is λ = alpha_c · B / (words per
# caption) here, ≈ 5 on Flickr8k's ≈ 12-word captions (attention.paper_lam_to_package). Their
# 10,000-word vocabulary keeps every word of Flickr8k's training captions, as a minimum count
# of 1 does. Differences that remain: docs/departures.md. Evaluation reports BLEU with and
# without the brevity penalty (the paper's Table 1 is without).
PROFILES["paper"] = replace(
    PROFILES["flickr8k"], name="paper", encoder="vgg19", grid=14, image_size=224,
    resize="shorter_side_crop", fine_tune=False, min_word_freq=1, embed_dim=512, att_dim=512,
    dec_dim=1800, batch_size=64, lr=2e-4, dropout=0.5, lam=5.0)
# The paper profile's code path (VGG-19, centre crops, its decoder) at photos_quick's toy sizes.
PROFILES["paper_quick"] = replace(
    PROFILES["paper"], name="paper_quick", image_size=64, grid=4, max_len=20, embed_dim=32,
    att_dim=32, dec_dim=64, batch_size=16, lr=3e-3, epochs=2, train_minutes=5.0,
    num_workers=0, feature_batch_size=8, decode_max_len=12, expect_bleu4=0.0, ci_scale=True)
PROFILES["flickr30k"] = replace(PROFILES["flickr8k"], name="flickr30k", dataset="flickr30k")
PROFILES["coco"] = replace(PROFILES["flickr8k"], name="coco", dataset="coco", expect_bleu4=0.2,
                           feature_cache=False)
# your own photos and captions: `sat data --captions FILE --images DIR` (sat_helpers.data)
PROFILES["custom"] = replace(PROFILES["flickr8k"], name="custom", dataset="custom",
                             min_word_freq=1, expect_bleu4=0.0)


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The profile called ``name`` (default: ``$SAT_PROFILE``, else ``shapes``), with overrides."""
    name = name or os.environ.get("SAT_PROFILE", "shapes")
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r} (from SAT_PROFILE or the argument). "
            f"Valid profiles: {', '.join(PROFILES)}."
        )
    profile = PROFILES[name]
    renamed = sorted(set(overrides) & set(RENAMED))
    if renamed:
        raise ValueError(renamed_message(renamed[0]))
    unknown = set(overrides) - set(profile.to_dict())
    if unknown:
        raise ValueError(
            f"Unknown profile field(s) {sorted(unknown)}; see sat_helpers.config.Profile.")
    return replace(profile, **overrides)


TRUE, FALSE, NONE = ("true", "yes", "on"), ("false", "no", "off"), ("none", "null")


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=2", "lr=3e-4", "gate=None"]`` -> ``{"epochs": 2, "lr": 0.0003, "gate": None}``.

    Each value is parsed to its :class:`Profile` field's type (int, float, bool: true/false,
    str, None: none); ``get_profile(name, **overrides)`` then makes the variant. A ValueError
    names the item, the field and what it takes, or the valid fields.
    """
    types = typing.get_type_hints(Profile)
    fields = [f.name for f in dataclasses.fields(Profile) if f.name != "name"]
    overrides = {}
    for item in items:
        field, sep, text = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise ValueError(f"{item!r} is not FIELD=VALUE (e.g. epochs=2).")
        if field == "name":
            raise ValueError("'name' is the profile itself: choose it with --profile.")
        if field in RENAMED:
            raise ValueError(renamed_message(field))
        if field not in fields:
            close = difflib.get_close_matches(field, fields, n=1)
            raise ValueError(f"Unknown profile field {field!r}"
                             f"{f' (did you mean {close[0]!r}?)' if close else ''}. "
                             f"Valid fields: {', '.join(fields)}.")
        if field in overrides:
            raise ValueError(f"{field!r} is set twice ({field}={overrides[field]!r} and {item}).")
        overrides[field] = _parse_value(field, text.strip(), types[field])
    return overrides


def _parse_value(field: str, text: str, kind) -> object:
    """``text`` as the first of the field's types that reads it: None, bool, int, float, str."""
    kinds = typing.get_args(kind) or (kind,)
    low = text.lower()
    if type(None) in kinds and low in NONE:
        return None
    if bool in kinds and low in TRUE + FALSE:
        return low in TRUE
    for number in (int, float):
        if number in kinds:
            try:
                return number(text)
            except ValueError:
                pass
    if str in kinds:
        return text
    names = {type(None): "None", bool: "true/false", int: "a whole number",
             float: "a number", str: "text"}
    takes = " or ".join(names[k] for k in kinds)
    example = getattr(PROFILES["shapes"], field)
    raise ValueError(f"{field}={text!r}: {field} takes {takes} (e.g. {field}="
                     f"{str(example).lower() if isinstance(example, bool) else example}).")


DATA_FIELDS = ("dataset", "shapes_images", "shapes_seed", "shapes_val_fraction",
               "shapes_test_fraction", "image_size", "resize", "min_word_freq", "max_len",
               "captions_per_image", "data_seed")
"""The fields a prepared dataset (and so its feature cache) depends on; not ``seed``."""
HARD_ONLY_FIELDS = ("hard_lam", "entropy_weight", "baseline_decay", "expected_context_p",
                    "reinforce_weight", "reinforce_reward")
"""Fields only hard-attention training reads: they never reach a soft run's key."""
SOFT_ONLY_FIELDS = ("lam",)
"""Fields only soft-attention training reads: they never reach a hard run's key."""


def variant_name(profile: Profile, fields) -> str:
    """The profile's name when ``fields`` hold its named profile's values, else name-<hash>.

    The hash (6 hex digits) is over the changed fields only, so a learner's variant gets
    folders of its own beside the course's (``shapes`` vs ``shapes-1a2b3c``) and a change
    to a field an artefact does not depend on keeps sharing it.
    """
    base = PROFILES.get(profile.name) or Profile(name=profile.name)
    changed = {f: _plain(getattr(profile, f)) for f in sorted(fields)
               if getattr(profile, f) != getattr(base, f)}
    if not changed:
        return profile.name
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()
    return f"{profile.name}-{digest[:6]}"


def _plain(value):
    """A number as a float (so 1 and 1.0 name the same variant); anything else as it is."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number else value


def data_root() -> Path:
    """Where generated data lives: ``$SAT_DATA``, else a checkout's ``data/``, else a user cache."""
    if "SAT_DATA" in os.environ:
        root = Path(os.environ["SAT_DATA"])
    else:
        checkout = Path(__file__).resolve().parent.parent
        if (checkout / "pyproject.toml").exists() and (checkout / "notebooks").is_dir():
            root = checkout / "data"
        else:
            root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sat-course"
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_path(profile: Profile) -> Path:
    """The JSON file where notebooks record the headline numbers of a profile's course run.

    A variant (any field changed) records into a file of its own, never the course's.
    """
    fields = [f for f in profile.to_dict() if f != "name"]
    return data_root() / "results" / f"{variant_name(profile, fields)}.json"


def record_results(profile: Profile, section: str, values: dict) -> dict:
    """Merge ``values`` under ``section`` into the profile's results file; return the whole file."""
    path = results_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = {**results.get(section, {}), **values}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(path)
    return results
