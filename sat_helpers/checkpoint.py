"""Runs on disk: where a run lives, what it was trained with, and every read of a checkpoint.

``train`` writes, under ``run_dir(profile, attention)``: ``last.pt`` after every epoch,
``best.pt`` whenever the validation BLEU-4 improves (both with :func:`save_atomic`: a
temporary file renamed into place), and ``log.csv``. A checkpoint holds only plain data and
tensors (state dicts, epoch, RNG states, the vocabulary as a word list, the profile and the
decoder config as dicts, a fine-tuned encoder's weights), so ``torch.load(path,
weights_only=True)`` reads it. :func:`is_current` is the one test of whether a checkpoint
belongs to a configuration and a build of the data; :func:`load_model` and
:func:`load_encoder` are the one way ``evaluate``, ``sat caption`` and the explorer read one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch

from .config import (
    HARD_ONLY_FIELDS,
    RENAMED,
    SOFT_ONLY_FIELDS,
    Profile,
    data_root,
    variant_name,
)
from .data import Vocab, dataset_hash, ensure_dataset
from .decoder import AttentionDecoder
from .encoder import Encoder

# Profile fields that do not change what training produces (decoding, expectations, speed),
# or only how it is computed (precision, kernels: like the device, which no run is keyed on).
NOT_TRAINING = ("name", "beam_size", "decode_max_len", "expect_bleu4", "expect_pointing",
                "expect_hard_over_soft", "ci_scale", "num_workers", "feature_batch_size", "amp",
                "deterministic")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def training_fields(profile: Profile, attention: str) -> list[str]:
    """The profile fields a run of this attention depends on (none of the other's only).

    A hard run that starts from the soft run (``hard_warm_start``) depends on all of them.
    """
    other = HARD_ONLY_FIELDS if attention == "soft" else SOFT_ONLY_FIELDS
    if attention == "hard" and profile.hard_warm_start:
        other = ()
    return [f for f in profile.to_dict() if f not in NOT_TRAINING and f not in other]


def run_dir(profile: Profile, attention: str = "soft") -> Path:
    """Where a profile's run lives: data_root()/runs/<variant name>-<attention>/.

    The course's run is ``<profile>-<attention>``; a profile with other training fields
    (``training_fields``) gets ``<profile>-<hash>-<attention>`` beside it, never over it.
    """
    name = variant_name(profile, training_fields(profile, attention))
    return data_root() / "runs" / f"{name}-{attention}"


def training_config(profile: Profile, attention: str, one_per_image: bool | None = None) -> dict:
    """What a checkpoint must match to be reused: the training fields of the profile."""
    fields = {k: getattr(profile, k) for k in training_fields(profile, attention)}
    if one_per_image is None:
        one_per_image = profile.dataset == "shapes"
    return {"attention": attention, "one_per_image": one_per_image, **fields}


def is_current(ckpt: dict, config: dict, dataset_dir: str | Path, vocab: Vocab) -> bool:
    """Whether a checkpoint comes from this configuration and this build of the data."""
    return (ckpt.get("config") == config
            and ckpt.get("dataset_hash") == dataset_hash(dataset_dir)
            and ckpt.get("vocab") == list(vocab.words))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def set_aside(out_dir: Path, why: str) -> None:
    """Move an existing run folder to <name>.replaced-<time> (never delete a model)."""
    if any(out_dir.glob("*.pt")):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        old = out_dir.with_name(f"{out_dir.name}.replaced-{stamp}")
        shutil.move(str(out_dir), old)
        print(f"{out_dir}: {why}; moved the old run to {old} and starting afresh.")


def finished_run(profile: Profile, attention: str = "soft") -> Path | None:
    """best.pt of a finished run of this profile's configuration and data, else None."""
    folder = run_dir(profile, attention)
    last, best = folder / "last.pt", folder / "best.pt"
    if not (last.exists() and best.exists()):
        return None
    ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    dataset_dir = ensure_dataset(profile)
    vocab = Vocab.load(Path(dataset_dir) / "vocab.json")
    current = is_current(ckpt, training_config(profile, attention), dataset_dir, vocab)
    return best if current and ckpt.get("finished") else None


def warm_start_path(soft_dir: str | Path, epoch: int) -> Path:
    """Where a soft run keeps its state after ``epoch`` epochs for hard attention to start."""
    return Path(soft_dir) / f"epoch-{epoch}.pt"


def warm_start_state(soft_dir: Path, epoch: int, config: dict, dataset_dir: str | Path,
                     vocab: Vocab) -> dict:
    """The soft run's state after ``epoch`` epochs (:func:`warm_start_path`), where a hard run
    starts; checked to come from ``config`` (the soft run's) and this build of the data."""
    path = warm_start_path(soft_dir, epoch)
    if not path.exists():
        raise FileNotFoundError(
            f"The soft run in {soft_dir} ended before epoch {epoch} (its train_minutes ran out?), "
            f"so there is no {path.name} for hard attention to start from: raise train_minutes, "
            "lower hard_warm_start, or set it to 0 to train hard attention from scratch.")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not is_current(ckpt, config, dataset_dir, vocab):
        raise CheckpointError(f"{path} comes from another configuration or build of the data "
                              f"than this profile's soft run: delete {soft_dir} and train again")
    return ckpt


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[AttentionDecoder, Vocab, dict]:
    """(decoder in eval mode, vocabulary, the checkpoint dict) from a last.pt/best.pt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: train one with `sat train` (or "
                                "sat_helpers.train.train(profile)), or pass the path of a "
                                "best.pt/last.pt.")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    decoder = AttentionDecoder(**ckpt["decoder_config"])
    decoder.load_state_dict(ckpt["model"])
    return decoder.to(device).eval(), Vocab(ckpt["vocab"]), ckpt


def profile_from_dict(fields: dict) -> Profile:
    """The Profile a checkpoint stored as plain data (renamed fields under their new names,
    fields unknown to this version dropped)."""
    known = {f.name for f in dataclasses.fields(Profile)}
    fields = {RENAMED[k][0] if k in RENAMED else k: v for k, v in fields.items()}
    return Profile(**{k: v for k, v in fields.items() if k in known})


def load_model(path: str | Path, device: str = "cpu") -> tuple[AttentionDecoder, Vocab, Profile,
                                                                dict]:
    """(decoder, vocabulary, profile, checkpoint dict) of a best.pt/last.pt written by training.

    Errors name the file: a CheckpointError for one that is not a training checkpoint.
    """
    path = Path(path)
    try:
        decoder, vocab, ckpt = load_checkpoint(path, device)
    except FileNotFoundError:
        raise
    except KeyError as err:
        raise CheckpointError(f"Could not load checkpoint {path}: it has no {err} entry; is it "
                              "a best.pt/last.pt written by `sat train`?") from err
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"Could not load checkpoint {path} ({type(err).__name__}: "
                              f"{err}); is it a best.pt/last.pt written by `sat train`?") from err
    if "profile" not in ckpt:
        raise CheckpointError(f"Checkpoint {path} stores no profile: pass profile= (or "
                              "--profile) with the profile it was trained with.")
    return decoder, vocab, profile_from_dict(ckpt["profile"]), ckpt


def load_encoder(ckpt: dict, profile: Profile, device: str = "cpu") -> Encoder:
    """The encoder a run's decoder reads, in eval mode: the run's own when it fine-tuned one.

    A fine-tuning run (``profile.fine_tune``) is rebuilt from the checkpoint's encoder
    weights; any other gets the profile's frozen pretrained encoder.
    """
    if not profile.fine_tune:
        encoder = Encoder(profile.encoder, grid=profile.grid, image_size=profile.image_size,
                          resize=profile.resize)
        return encoder.to(device).eval()
    if ckpt.get("encoder") is None:
        raise CheckpointError(f"Profile {profile.name!r} fine-tunes the encoder but the "
                              "checkpoint holds no encoder weights; use the checkpoint of "
                              "that fine-tuning run.")
    encoder = Encoder(profile.encoder, pretrained=False, grid=profile.grid,
                      fine_tune=profile.fine_tune, image_size=profile.image_size,
                      resize=profile.resize)
    encoder.load_state_dict(ckpt["encoder"])
    return encoder.to(device).eval()
