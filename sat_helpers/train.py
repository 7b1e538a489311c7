"""Training the decoder: the loss, the loop, checkpoints that resume exactly, and DDP.

``train(profile)`` learns a caption model on the profile's data and writes, under
``run_dir(profile, attention)``: ``last.pt`` after every epoch, ``best.pt`` whenever the
validation BLEU-4 improves (both written atomically: a temporary file renamed into place),
and ``log.csv``, one row per epoch. A checkpoint holds only plain data and tensors (state
dicts, epoch, RNG states, the vocabulary as a word list, the profile and the decoder config
as dicts), so ``torch.load(path, weights_only=True)`` reads it. ``train(..., resume=True)``
continues from ``last.pt``. How exactly depends on the device: on the CPU the resumed run
ends with the weights of an uninterrupted run bit for bit. On CUDA some kernels (the
embedding's and gather's backward, cuBLAS reductions) add in a varying order, so a resumed
run equals an uninterrupted one up to floating-point order, unless ``profile.deterministic``
is set: then :func:`use_deterministic` makes those kernels deterministic (slower) and the
resume exact there too.

Precision (``profile.amp``): float32 on the CPU; on CUDA, bfloat16 autocast where the GPU
has it (Ampere and later; no loss scaling needed), else float16 autocast with a GradScaler.

The same code runs under ``torchrun --nproc_per_node N`` (one machine or several):
DistributedDataParallel over one module that holds the decoder and, when fine-tuning, the
encoder (:class:`CaptionModel`, so both are averaged); a DistributedSampler that gives rank
r every N-th sample of the global order (so one step sees the same B samples as one
process at batch B); rank-0 validation, logging and checkpointing; resume as above. The
process group is gloo on the CPU and ``cpu:gloo,cuda:nccl`` on CUDA, so a reduction works
on whichever device its tensor lives.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .attention import doubly_stochastic_penalty
from .config import HARD_ONLY_FIELDS, SOFT_ONLY_FIELDS, Profile, data_root, variant_name
from .data import CaptionDataset, Vocab, caption_collate, ensure_dataset
from .decoder import AttentionDecoder, DecoderOutput
from .encoder import Encoder, FeatureDataset, dataset_hash, ensure_features
from .hard import HardAttentionLoss
from .metrics import bleu_scores
from .search import greedy_search

LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_bleu4", "lr", "seconds"]
# Profile fields that do not change what training produces (decoding, expectations, speed),
# or only how it is computed (precision, kernels: like the device, which no run is keyed on).
NOT_TRAINING = ("name", "beam_size", "decode_max_len", "expect_bleu4", "expect_pointing",
                "expect_hard_over_soft", "ci_scale", "num_workers", "feature_batch_size", "amp",
                "deterministic")
AMP_MODES = ("auto", "bf16", "fp16", "off")
LOG_EVERY = 50  # steps between progress-bar loss updates (each one waits for the GPU)


class NonFiniteLossError(FloatingPointError):
    """The training loss became inf or NaN; the message names the epoch, batch and causes."""


def training_fields(profile: Profile, attention: str) -> list[str]:
    """The profile fields a run of this attention depends on (none of the other's only)."""
    other = HARD_ONLY_FIELDS if attention == "soft" else SOFT_ONLY_FIELDS
    return [f for f in profile.to_dict() if f not in NOT_TRAINING and f not in other]


def run_dir(profile: Profile, attention: str = "soft") -> Path:
    """Where a profile's run lives: data_root()/runs/<variant name>-<attention>/.

    The course's run is ``<profile>-<attention>``; a profile with other training fields
    (``training_fields``) gets ``<profile>-<hash>-<attention>`` beside it, never over it.
    """
    return data_root() / "runs" / f"{variant_name(profile, training_fields(profile, attention))}" \
                                  f"-{attention}"


# ------------------------------------------------------------------------------ the loss

def caption_loss(output: DecoderOutput, captions: Tensor, lengths: Tensor, profile: Profile,
                 n_tokens: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy over the real words + the doubly stochastic penalty (paper eq. 14).

    ``captions`` (B, T) start with <start>; ``lengths`` count <start> and <end>. The
    cross-entropy is summed over real target tokens and divided by ``n_tokens`` (default:
    their number here; under DDP the global number / world size, so that DDP's averaging of
    gradients gives the mean over every token of the global batch). Returns the loss and
    its parts as detached tensors (``float()`` them to print; reading them every step
    would make the CPU wait for the GPU). A hard-attention loss replaces this function
    (``LOSSES``).
    """
    steps = output.scores.shape[1]
    targets = captions[:, 1:steps + 1]
    real = torch.arange(steps, device=targets.device) < (lengths.to(targets.device) - 1)[:, None]
    ce = F.cross_entropy(output.scores[real].float(), targets[real], reduction="sum")
    ce = ce / (real.sum() if n_tokens is None else n_tokens)
    penalty = doubly_stochastic_penalty(output.alphas.float(), lengths - 1, profile.lam)
    return ce + penalty, {"ce": ce.detach(), "penalty": penalty.detach()}


# A class is a loss with state (the hard-attention baseline): each Trainer makes its own.
LOSSES: dict[str, Callable] = {"soft": caption_loss, "hard": HardAttentionLoss}


# ------------------------------------------------------------------------------ the data

class EpochCaptions(Dataset):
    """One epoch's training pairs: every caption, or one seeded random caption per image."""

    def __init__(self, dataset: Dataset, one_per_image: bool, seed: int):
        self.dataset, self.one_per_image, self.seed = dataset, one_per_image, seed
        self.cpi, self.n_images = dataset.captions_per_image, len(dataset.meta)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's caption of each image (a function of seed and epoch only)."""
        if self.one_per_image:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            pick = torch.randint(self.cpi, (self.n_images,), generator=g)
            self.index = torch.arange(self.n_images) * self.cpi + pick
        else:
            self.index = torch.arange(self.n_images * self.cpi)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.dataset[int(self.index[i])]


# ------------------------------------------------------------------------------ helpers

def _save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                  "gauss": np_state["gauss"]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    """Restore what :func:`_rng_state` saved."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world size): joins torchrun's process group when WORLD_SIZE > 1.

    On CUDA the group has both backends, NCCL for CUDA tensors and gloo for CPU ones (and
    for the pickled objects of ``all_gather_object``), so no reduction meets a backend that
    cannot hold its tensor.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if str(device).startswith("cuda")
                                else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def autocast_dtype(profile: Profile, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``profile.amp`` asks for on ``device``; None means float32.

    "auto": bfloat16 on a CUDA GPU that has it natively (compute capability 8.0 and later,
    Ampere), else float16 on CUDA; float32 on the CPU.
    "bf16" and "fp16" force one ("bf16" also runs on the CPU; "fp16" needs CUDA); "off": float32.
    """
    if profile.amp not in AMP_MODES:
        raise ValueError(f"amp={profile.amp!r}: use one of {', '.join(AMP_MODES)}.")
    cuda = device.type == "cuda"
    if profile.amp == "off" or (profile.amp == "auto" and not cuda):
        return None
    if profile.amp == "fp16" and not cuda:
        raise ValueError("amp='fp16' needs a CUDA device; on the CPU use 'bf16' or 'off'.")
    # not the emulated bf16 of older GPUs (a T4 says True with emulation, and is slow at it)
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if profile.amp == "bf16" or (profile.amp == "auto" and native_bf16):
        return torch.bfloat16
    return torch.float16


def use_deterministic() -> None:
    """Deterministic kernels everywhere (process-wide), and cuBLAS's fixed workspace for them.

    CUBLAS_WORKSPACE_CONFIG only counts when set before the process's first CUDA matrix
    product, hence first thing in Trainer; in a session that already used the GPU (a notebook),
    set it in the environment before starting it.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


class CaptionModel(nn.Module):
    """The decoder and, when fine-tuning, the encoder as one module: images or features in.

    DistributedDataParallel wraps this, so the gradients of a fine-tuned encoder are
    averaged over the processes with the decoder's, and every rank's encoder stays the same.
    """

    def __init__(self, decoder: AttentionDecoder, encoder: Encoder | None = None,
                 fine_tune: bool | int = False):
        super().__init__()
        self.decoder, self.encoder, self.fine_tune = decoder, encoder, fine_tune

    def annotations(self, x: Tensor) -> Tensor:
        """Cached features (B, P, E) as they are, or uint8 images (B, 3, H, W) encoded."""
        if self.encoder is None:
            return x
        features = self.encoder(self.encoder.preprocess(x))
        return features if self.fine_tune else features.half().float()  # as the cache holds

    def forward(self, x: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced outputs of the batch's features or images."""
        return self.decoder(self.annotations(x), captions, lengths)


def training_config(profile: Profile, attention: str, one_per_image: bool | None = None) -> dict:
    """What a checkpoint must match to be reused: the training fields of the profile."""
    fields = {k: getattr(profile, k) for k in training_fields(profile, attention)}
    if one_per_image is None:
        one_per_image = profile.dataset == "shapes"
    return {"attention": attention, "one_per_image": one_per_image, **fields}


def build_decoder(profile: Profile, vocab_size: int, enc_dim: int,
                  attention: str = "soft") -> AttentionDecoder:
    """The profile's AttentionDecoder."""
    return AttentionDecoder(vocab_size, enc_dim, profile.embed_dim, profile.dec_dim,
                            profile.att_dim, profile.dropout, attention, profile.gate,
                            profile.deep_output)


# ------------------------------------------------------------------------------ the trainer

class Trainer:
    """Everything one training run holds: data, model, optimiser, scheduler, counters, log.

    Frozen encoder (``profile.fine_tune`` false): trains on the cached features, or, when
    ``profile.feature_cache`` is off, runs the frozen encoder on the device over the uint8
    images (rounded to float16 as the cache stores them: the same features). Otherwise
    the images go through the ``Encoder`` every step and its trainable blocks learn at
    ``profile.encoder_lr``. ``one_per_image`` (default: the Shapes data) draws one of the
    five captions of each image per epoch instead of all of them.
    """

    def __init__(self, profile: Profile, attention: str = "soft", out_dir: str | Path | None = None,
                 device: str | None = None, one_per_image: bool | None = None):
        if attention not in LOSSES:
            raise ValueError(f"attention={attention!r}: no loss for it; use one of {list(LOSSES)}.")
        self.profile, self.attention, self.loss_fn = profile, attention, LOSSES[attention]
        if isinstance(self.loss_fn, type):
            self.loss_fn = self.loss_fn(profile)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if profile.deterministic:
            use_deterministic()
        self.rank, self.world = _distributed(self.device.type)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        if profile.batch_size % self.world:
            raise ValueError(f"batch_size={profile.batch_size} is the global batch; it must be "
                             f"divisible by the {self.world} processes.")
        self.out_dir = Path(out_dir) if out_dir is not None else run_dir(profile, attention)
        self.one_per_image = training_config(profile, attention, one_per_image)["one_per_image"]
        self._load_data()
        _seed_everything(profile.seed)
        enc_dim = self.encoder.channels if self.encoder else self.train_set.features.shape[-1]
        self.model = build_decoder(profile, len(self.vocab), enc_dim, attention).to(self.device)
        _seed_everything(profile.seed + self.rank)  # each rank its own dropout masks
        groups = [{"params": self.model.parameters(), "lr": profile.lr}]
        if self.encoder is not None:
            self.encoder.to(self.device)
            if profile.fine_tune:
                groups.append({"params": [p for p in self.encoder.parameters()
                                          if p.requires_grad], "lr": profile.encoder_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=profile.lr_decay,
            patience=max(0, profile.lr_patience - 1), threshold=0.0)
        self.amp = autocast_dtype(profile, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.caption_model = CaptionModel(self.model, self.encoder, profile.fine_tune)
        self.ddp = (nn.parallel.DistributedDataParallel(self.caption_model) if self.world > 1
                    else self.caption_model)
        self.epoch, self.best_bleu4, self.bad_epochs = 0, -1.0, 0
        self.train_seconds, self.finished, self.log = 0.0, False, []

    # -- data ---------------------------------------------------------------------------
    def _load_data(self) -> None:
        """Datasets (features or images), the vocabulary, and the encoder when fine-tuning."""
        p = self.profile
        if self.rank == 0:  # rank 0 builds what is missing, the others wait, then reuse it
            ensure_dataset(p)
            if not p.fine_tune and p.feature_cache:
                ensure_features(p, device=self.device)
        if self.world > 1:
            dist.barrier()
        self.dataset_dir = ensure_dataset(p)
        if p.fine_tune or not p.feature_cache:
            self.encoder = Encoder(p.encoder, grid=p.grid, fine_tune=p.fine_tune,
                                   image_size=p.image_size)
            self.train_set = CaptionDataset(self.dataset_dir, "train")
            self.val_set = CaptionDataset(self.dataset_dir, "val")
        else:
            self.encoder = None
            features = ensure_features(p, device=self.device)
            self.train_set = FeatureDataset(features, self.dataset_dir, "train")
            self.val_set = FeatureDataset(features, self.dataset_dir, "val")
        self.vocab = self.train_set.vocab
        self.epoch_set = EpochCaptions(self.train_set, self.one_per_image, p.seed)
        self.sampler = DistributedSampler(self.epoch_set, num_replicas=self.world,
                                          rank=self.rank, shuffle=True, seed=p.seed)
        self.loader = DataLoader(self.epoch_set, batch_size=p.batch_size // self.world,
                                 sampler=self.sampler, collate_fn=caption_collate,
                                 num_workers=p.num_workers, persistent_workers=False)

    def annotations(self, x: Tensor) -> Tensor:
        """The batch's annotation vectors: cached features as they are, or images encoded."""
        return self.caption_model.annotations(x.to(self.device, non_blocking=True))

    # -- checkpoints ----------------------------------------------------------------------
    def config(self) -> dict:
        return training_config(self.profile, self.attention, self.one_per_image)

    def state(self, rng: list[dict]) -> dict:
        """The whole run as plain data and tensors (torch.load(weights_only=True) reads it)."""
        return {
            "format_version": 1, "epoch": self.epoch, "finished": self.finished,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "encoder": self.encoder.state_dict() if self.encoder is not None else None,
            "rng": rng, "vocab": list(self.vocab.words),
            "decoder_config": dict(self.model.config), "config": self.config(),
            "profile": self.profile.to_dict(), "dataset_hash": dataset_hash(self.dataset_dir),
            "best_bleu4": self.best_bleu4, "bad_epochs": self.bad_epochs,
            "train_seconds": self.train_seconds, "log": list(self.log),
            "loss_state": self.loss_fn.state_dict() if hasattr(self.loss_fn, "state_dict") else {},
        }

    def matches(self, ckpt: dict) -> bool:
        """Whether a checkpoint comes from this configuration and this build of the data."""
        return (ckpt.get("config") == self.config()
                and ckpt.get("dataset_hash") == dataset_hash(self.dataset_dir)
                and ckpt.get("vocab") == list(self.vocab.words))

    def resume(self) -> bool:
        """Continue from last.pt when it matches; set a mismatching run aside. True if resumed."""
        path = self.out_dir / "last.pt"
        if not path.exists():
            return False
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not self.matches(ckpt):
            if self.rank == 0:
                self.set_aside("its configuration or data differ from this profile's")
            return False
        self.model.load_state_dict(ckpt["model"])
        if self.encoder is not None:
            self.encoder.load_state_dict(ckpt["encoder"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when saved without float16 (on a CPU, or under bfloat16)
            self.scaler.load_state_dict(ckpt["scaler"])
        if hasattr(self.loss_fn, "load_state_dict"):
            self.loss_fn.load_state_dict(ckpt["loss_state"])
        self.epoch, self.finished, self.log = ckpt["epoch"], ckpt["finished"], ckpt["log"]
        self.best_bleu4, self.bad_epochs = ckpt["best_bleu4"], ckpt["bad_epochs"]
        self.train_seconds = ckpt["train_seconds"]
        rng = ckpt["rng"]
        _set_rng_state(rng[self.rank] if len(rng) == self.world else rng[0])
        return True

    def set_aside(self, why: str) -> None:
        """Move an existing run folder to <name>.replaced-<time> (never delete a model)."""
        if any(self.out_dir.glob("*.pt")):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            old = self.out_dir.with_name(f"{self.out_dir.name}.replaced-{stamp}")
            shutil.move(str(self.out_dir), old)
            print(f"{self.out_dir}: {why}; moved the old run to {old} and starting afresh.")

    def save(self, improved: bool) -> None:
        """last.pt (and best.pt when improved) and log.csv; RNG states of every rank."""
        rng = [_rng_state()]
        if self.world > 1:
            rng = [None] * self.world
            dist.all_gather_object(rng, _rng_state())
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self.state(rng)
        _save_atomic(state, self.out_dir / "last.pt")
        if improved:
            _save_atomic(state, self.out_dir / "best.pt")
        tmp = self.out_dir / ".log.csv.tmp"
        self.log_frame().to_csv(tmp, index=False)
        os.replace(tmp, self.out_dir / "log.csv")

    def log_frame(self) -> pd.DataFrame:
        """The epoch table."""
        return pd.DataFrame(self.log, columns=LOG_COLUMNS)

    # -- one step, one epoch ----------------------------------------------------------------
    def train_step(self, x: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        """One optimiser step on one batch (loss, backward, clipping, Adam); the batch's loss.

        The loss comes back detached, as a tensor on the device: ``.item()`` reads it (and on a
        GPU waits for the step). The model's train/eval mode is the caller's: ``train_epoch``
        sets train mode.
        """
        captions = captions.to(self.device)
        n_tokens = (lengths - 1).sum().to(self.device, torch.float32)
        if self.world > 1:
            dist.all_reduce(n_tokens)
            n_tokens = n_tokens / self.world
        if hasattr(self.loss_fn, "before_batch"):  # hard attention: sample or expect
            self.loss_fn.before_batch(self.model)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.ddp(x.to(self.device, non_blocking=True), captions, lengths)
        loss, _ = self.loss_fn(out, captions, lengths, self.profile, n_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.profile.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def train_epoch(self) -> float:
        """One pass over the epoch's captions; the mean loss over all ranks' batches."""
        self.epoch_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.ddp.train()  # the decoder and, when fine-tuning, the encoder's trainable blocks
        loss_sum, steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        # On the CPU every loss is checked as it comes; on a GPU every LOG_EVERY steps (one wait
        # instead of fifty), still naming the first non-finite batch of the window.
        window, check_every = [], 1 if self.device.type == "cpu" else LOG_EVERY
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}", leave=False,
                   disable=self.rank != 0)
        for x, captions, lengths in bar:
            loss = self.train_step(x, captions, lengths)
            loss_sum += loss
            window.append(loss)
            steps += 1
            if steps % check_every == 0 or steps == len(self.loader):
                self._check_finite(window, steps)  # reading the loss waits for the GPU
                window = []
                bar.set_postfix(loss=f"{float(loss_sum) / steps:.3f}")
        total = torch.stack([loss_sum, loss_sum.new_tensor(steps)])
        if self.world > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1])

    def _check_finite(self, window: list[Tensor], steps: int) -> None:
        """Raise NonFiniteLossError at the first inf or NaN loss of the last ``window`` steps."""
        losses = torch.stack(window).float().cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            batch = steps - len(window) + i + 1
            raise NonFiniteLossError(self.non_finite_message(float(losses[i]), batch))

    def non_finite_message(self, value: float, batch: int) -> str:
        """Why training stopped at a non-finite loss, where, and what to try."""
        p = self.profile
        return (
            f"The training loss is {value} at epoch {self.epoch + 1}, batch {batch} of "
            f"{len(self.loader)} (run {self.out_dir}): training stops at the first non-finite "
            f"loss, and nothing of this epoch is saved (last.pt, if any, holds epoch "
            f"{self.epoch}). Likely causes: (1) a learning rate too high (lr={p.lr:g}"
            f"{f', encoder_lr={p.encoder_lr:g}' if p.fine_tune else ''}): lower it ten-fold; "
            "(2) overflowing or non-finite features (an encoder with wrong weights; check "
            "np.isfinite on the cached features, or the images); (3) float16 overflow under "
            f"mixed precision (on here: {self.amp}): run on the CPU or without autocast to "
            "see if it is that.")

    @torch.no_grad()
    def validate(self, dataset: Dataset | None = None) -> tuple[float, float]:
        """(loss on each image's first caption, BLEU-4 of greedy captions vs all references)."""
        dataset = dataset if dataset is not None else self.val_set
        self.model.eval()
        if self.encoder is not None:
            self.encoder.eval()
        loader = DataLoader(dataset, batch_size=2 * self.profile.batch_size,
                            collate_fn=caption_collate, num_workers=self.profile.num_workers)
        loss_sum, n, hypotheses = 0.0, 0, []
        for x, captions, lengths, _ in tqdm(loader, desc="validating", leave=False,
                                            disable=self.rank != 0):
            captions = captions.to(self.device)
            on_gpu = self.amp is not None and self.device.type == "cuda"
            with torch.autocast(self.device.type, dtype=self.amp, enabled=on_gpu):
                feats = self.annotations(x)
                out = self.model(feats, captions, lengths)
                caps = greedy_search(self.model, feats, self.profile.decode_max_len,
                                     vocab=self.vocab)
            loss, _ = self.loss_fn(out, captions, lengths, self.profile)
            loss_sum, n = loss_sum + float(loss) * len(lengths), n + len(lengths)
            hypotheses += [c.words for c in caps]
        references = [m["references"] for m in dataset.meta]
        return loss_sum / n, bleu_scores(references, hypotheses)["BLEU-4"]

    def end_epoch(self, train_loss: float, seconds_so_far: float) -> bool:
        """Validate (rank 0), step the scheduler, log, checkpoint; True if it improved."""
        result = [0.0, 0.0]
        if self.rank == 0:
            result = list(self.validate())
        if self.world > 1:
            dist.broadcast_object_list(result, src=0)
        val_loss, bleu4 = result
        improved = bleu4 > self.best_bleu4
        self.best_bleu4 = max(self.best_bleu4, bleu4)
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(bleu4)
        self.epoch += 1
        seconds = time.perf_counter() - seconds_so_far
        self.train_seconds += seconds
        self.log.append({"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "val_bleu4": bleu4, "lr": lr, "seconds": round(seconds, 2)})
        self.finished = self.should_stop()
        self.save(improved)
        return improved

    def should_stop(self) -> bool:
        """Stop on the epoch count, early stopping, or the time budget (after the epoch)."""
        p = self.profile
        over_time = self.train_seconds > 60 * p.train_minutes
        if self.world > 1:  # ranks must agree: rank 0's clock decides
            flag = [over_time]
            dist.broadcast_object_list(flag, src=0)
            over_time = flag[0]
        return self.epoch >= p.epochs or self.bad_epochs >= p.early_stop_patience or over_time

    def fit(self, callback: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
        """Train until the run is finished; ``callback(log)`` after every epoch (rank 0)."""
        bar = tqdm(total=self.profile.epochs, initial=self.epoch, desc="training", unit="epoch",
                   disable=self.rank != 0)
        while not self.finished:
            start = time.perf_counter()
            train_loss = self.train_epoch()
            self.end_epoch(train_loss, start)
            row = self.log[-1]
            bar.update()
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", bleu4=f"{row['val_bleu4']:.3f}")
            if callback is not None and self.rank == 0:
                callback(self.log_frame())
        bar.close()
        return self.log_frame()


# ------------------------------------------------------------------------------ public API

def train(profile: Profile, attention: str = "soft", resume: bool = True, *,
          out_dir: str | Path | None = None, device: str | None = None,
          one_per_image: bool | None = None,
          callback: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Train (or, with ``resume``, continue or reuse) the profile's run; return its epoch log.

    ``out_dir`` defaults to ``run_dir(profile, attention)``. A finished run that matches the
    profile returns its log at once; one that does not match, or any run when ``resume`` is
    False, is moved aside (``<dir>.replaced-<time>``) and training starts afresh. A resumed
    run ends with the weights of an uninterrupted one bit for bit on the CPU; on CUDA up to
    floating-point order, or exactly with ``profile.deterministic`` (module docstring).
    """
    trainer = Trainer(profile, attention, out_dir, device, one_per_image)
    if not (resume and trainer.resume()) and trainer.rank == 0:
        trainer.set_aside("resume=False" if not resume else "no last.pt to resume from")
    if trainer.world > 1:
        dist.barrier()
    return trainer.fit(callback)


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


def finished_run(profile: Profile, attention: str = "soft") -> Path | None:
    """best.pt of a finished run of this profile's configuration and data, else None."""
    folder = run_dir(profile, attention)
    last, best = folder / "last.pt", folder / "best.pt"
    if not (last.exists() and best.exists()):
        return None
    ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    dataset_dir = ensure_dataset(profile)
    vocab = Vocab.load(Path(dataset_dir) / "vocab.json")
    current = (ckpt.get("config") == training_config(profile, attention)
               and ckpt.get("dataset_hash") == dataset_hash(dataset_dir)
               and ckpt.get("vocab") == list(vocab.words))
    return best if current and ckpt.get("finished") else None


def ensure_trained(profile: Profile, attention: str = "soft",
                   device: str = "cpu") -> tuple[AttentionDecoder, Vocab]:
    """The profile's trained decoder and vocabulary: best.pt of a matching run, else trained."""
    best = finished_run(profile, attention)
    if best is None:
        train(profile, attention, resume=True)
        best = run_dir(profile, attention) / "best.pt"
    decoder, vocab, _ = load_checkpoint(best, device)
    return decoder, vocab
