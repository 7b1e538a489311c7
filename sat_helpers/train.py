"""Training the decoder: the loop of notebook 04, with checkpoints that resume exactly, and DDP.

``train(profile)`` learns a caption model on the profile's data and writes its run under
``checkpoint.run_dir(profile, attention)`` (last.pt, best.pt, log.csv; :mod:`checkpoint`).
``train(..., resume=True)`` continues from ``last.pt``. On the CPU a resumed run ends with
the weights of an uninterrupted run bit for bit. On CUDA some kernels (the embedding's and
gather's backward, cuBLAS reductions) add in a varying order, so a resumed run equals an
uninterrupted one up to floating-point order, unless ``profile.deterministic`` is set
(``runtime.use_deterministic``: slower, and exact there too).

The same code runs under ``torchrun --nproc_per_node N`` (:mod:`runtime`): DDP over one
module that holds the decoder and, when fine-tuning, the encoder (:class:`CaptionModel`, so
both are averaged); a DistributedSampler that gives rank r every N-th sample of the global
order (one step sees the B samples of one process at batch B); rank-0 validation and files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (  # noqa: F401 - NOT_TRAINING, training_fields re-exported
    NOT_TRAINING,
    finished_run,
    is_current,
    load_checkpoint,
    run_dir,
    save_atomic,
    set_aside,
    training_config,
    training_fields,
    warm_start_path,
    warm_start_state,
)
from .config import Profile
from .data import Vocab, caption_collate, dataset_hash, ensure_dataset  # noqa: F401
from .decoder import AttentionDecoder, build_decoder
from .losses import LOSSES, caption_loss, make_loss  # noqa: F401 - LOSSES, caption_loss re-exported
from .metrics import bleu_scores
from .runtime import (  # noqa: F401 - AMP_MODES re-exported
    AMP_MODES,
    all_ranks_rng_state,
    autocast_dtype,
    default_device,
    distributed,
    keep_freed_memory,
    seed_everything,
    set_rng_state,
    use_deterministic,
)
from .search import greedy_search
from .training_data import CaptionModel, EpochCaptions, TrainingData  # noqa: F401 - re-exported

LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_bleu4", "lr", "seconds"]
LR_SCHEDULES = ("plateau", "cosine")
LOG_EVERY = 50  # steps between progress-bar loss updates (each one waits for the GPU)


class NonFiniteLossError(FloatingPointError):
    """The training loss became inf or NaN; the message names the epoch, batch and causes."""


def lr_scheduler(optimizer: torch.optim.Optimizer,
                 profile: Profile) -> torch.optim.lr_scheduler.LRScheduler:
    """The profile's learning-rate schedule, stepped once an epoch.

    "plateau": × ``lr_decay`` after ``lr_patience`` epochs without a better validation BLEU-4.
    "cosine": down a half cosine from ``lr`` towards 0 over the ``epochs`` budget, so that the
    last epochs take small steps and the model settles instead of jumping around its optimum.
    """
    if profile.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=profile.lr_decay,
            patience=max(0, profile.lr_patience - 1), threshold=0.0)
    if profile.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=profile.epochs)
    raise ValueError(f"Profile {profile.name!r}: lr_schedule={profile.lr_schedule!r} is not one "
                     f"of {LR_SCHEDULES}; set lr_schedule to one of them.")


class Trainer:
    """One training run: its data (``TrainingData``), model, optimiser, loss, counters and log.

    A fine-tuned encoder's trainable blocks learn at ``profile.encoder_lr``. ``one_per_image``
    (default: the Shapes data) draws one of each image's captions per epoch instead of all.
    """

    def __init__(self, profile: Profile, attention: str = "soft", out_dir: str | Path | None = None,
                 device: str | None = None, one_per_image: bool | None = None):
        self.profile, self.attention = profile, attention
        self.loss_fn = make_loss(profile, attention)
        if profile.deterministic:
            use_deterministic()
        self.rank, self.world, self.device = distributed(torch.device(device or default_device()))
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for each step's tensors (runtime.py)
        self.out_dir = Path(out_dir) if out_dir is not None else run_dir(profile, attention)
        self.one_per_image = training_config(profile, attention, one_per_image)["one_per_image"]
        self.data = TrainingData(profile, self.rank, self.world, self.device, self.one_per_image)
        d = self.data
        self.vocab, self.train_set, self.loader = d.vocab, d.train_set, d.loader
        self.epoch_set, self.sampler = d.epoch_set, d.sampler
        seed_everything(profile.seed)
        decoder = build_decoder(profile, len(self.vocab), self.data.enc_dim, attention)
        seed_everything(profile.seed + self.rank)  # each rank its own dropout masks
        model = CaptionModel(decoder, self.data.encoder, profile.fine_tune).to(self.device)
        self.net = nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        groups = [{"params": decoder.parameters(), "lr": profile.lr}]
        if profile.fine_tune:
            groups.append({"params": [p for p in self.encoder.parameters() if p.requires_grad],
                           "lr": profile.encoder_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = lr_scheduler(self.optimizer, profile)
        self.amp = autocast_dtype(profile, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.epoch, self.best_bleu4, self.bad_epochs = 0, -1.0, 0
        self.train_seconds, self.finished, self.log = 0.0, False, []

    @property
    def caption_model(self) -> CaptionModel:
        """``self.net`` (the one model handle) without DDP's wrapper."""
        return getattr(self.net, "module", self.net)

    @property
    def model(self) -> AttentionDecoder:
        return self.caption_model.decoder  # the decoder being trained

    @property
    def encoder(self) -> nn.Module | None:
        return self.caption_model.encoder  # run on the device (fine-tuned, or uncached), or None

    def config(self) -> dict:
        return training_config(self.profile, self.attention, self.one_per_image)

    def resume(self) -> bool:
        """Continue from last.pt when it matches; set a mismatching run aside. True if resumed."""
        return resume_run(self)

    def save(self, improved: bool) -> None:
        """last.pt (and best.pt when improved) and log.csv; RNG states of every rank."""
        save_run(self, improved)

    def log_frame(self) -> pd.DataFrame:
        """The epoch table."""
        return pd.DataFrame(self.log, columns=LOG_COLUMNS)

    def train_step(self, x: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        """One optimiser step on one batch (loss, backward, clipping, Adam); the batch's loss,
        detached, on the device (``.item()`` waits for the GPU). Train/eval mode: the caller's."""
        captions = captions.to(self.device)
        n_tokens = (lengths - 1).sum().to(self.device, torch.float32)
        if self.world > 1:
            dist.all_reduce(n_tokens)
            n_tokens = n_tokens / self.world
        self.loss_fn.before_batch(self.model)  # hard attention: sample or expect
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.net(x.to(self.device, non_blocking=True), captions, lengths)
        loss, _ = self.loss_fn(out, captions, lengths, n_tokens)
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
        self.data.set_epoch(self.epoch)
        self.net.train()  # the decoder and, when fine-tuning, the encoder's trainable blocks
        loss_sum, steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        # On the CPU every loss is checked as it comes; on a GPU every LOG_EVERY steps (one wait
        # instead of fifty), still naming the first non-finite batch of the window.
        window, check_every = [], 1 if self.device.type == "cpu" else LOG_EVERY
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}", leave=False, disable=self.rank != 0)
        for x, captions, lengths in bar:
            loss = self.train_step(x, captions, lengths)
            loss_sum, steps = loss_sum + loss, steps + 1
            window.append(loss)
            if steps % check_every == 0 or steps == len(self.loader):
                check_finite(self, window, steps)  # reading the loss waits for the GPU
                window = []
                bar.set_postfix(loss=f"{float(loss_sum) / steps:.3f}")
        total = torch.stack([loss_sum, loss_sum.new_tensor(steps)])
        if self.world > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1])

    def end_epoch(self, train_loss: float, seconds: float) -> bool:
        """Validate (rank 0), step the scheduler, log ``seconds`` (the epoch's training time),
        checkpoint; True if BLEU-4 improved."""
        result = list(validate(self)) if self.rank == 0 else [0.0, 0.0]
        if self.world > 1:
            dist.broadcast_object_list(result, src=0)
        val_loss, bleu4 = result
        improved = bleu4 > self.best_bleu4
        self.best_bleu4 = max(self.best_bleu4, bleu4)
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(bleu4)
        else:
            self.scheduler.step()
        self.epoch, self.train_seconds = self.epoch + 1, self.train_seconds + seconds
        self.log.append({"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "val_bleu4": bleu4, "lr": lr, "seconds": round(seconds, 2)})
        self.finished = self.should_stop()
        self.save(improved)
        return improved

    def should_stop(self) -> bool:
        """Stop on the epochs, the time or early stopping (a soft run's after hard's start)."""
        p, over_time = self.profile, [self.train_seconds > 60 * self.profile.train_minutes]
        if self.world > 1:  # ranks must agree: rank 0's clock decides
            dist.broadcast_object_list(over_time, src=0)
        warming = self.attention == "soft" and self.epoch < p.hard_warm_start
        early = self.bad_epochs >= p.early_stop_patience and not warming
        return self.epoch >= p.epochs or early or over_time[0]

    def fit(self, callback: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
        """Train until the run is finished; ``callback(log)`` after every epoch (rank 0)."""
        bar = tqdm(total=self.profile.epochs, initial=self.epoch, desc="training", unit="epoch",
                   disable=self.rank != 0)
        while not self.finished:
            start = time.perf_counter()
            train_loss = self.train_epoch()
            self.end_epoch(train_loss, time.perf_counter() - start)
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.3f}", bleu4=f"{self.log[-1]['val_bleu4']:.3f}")
            if callback is not None and self.rank == 0:
                callback(self.log_frame())
        bar.close()
        return self.log_frame()


def resume_run(trainer: Trainer) -> bool:
    """``Trainer.resume``: restore last.pt when it is current, else set the run aside."""
    t, path = trainer, trainer.out_dir / "last.pt"
    if not path.exists():
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not is_current(ckpt, t.config(), t.data.dataset_dir, t.vocab):
        if t.rank == 0:
            set_aside(t.out_dir, "its configuration or data differ from this profile's")
        return False
    restore_state(t, ckpt)
    return True


def save_run(trainer: Trainer, improved: bool) -> None:
    """``Trainer.save``: every rank's RNG state gathered, then rank 0 writes the files."""
    t, rng = trainer, all_ranks_rng_state(trainer.world)
    if t.rank != 0:
        return
    t.out_dir.mkdir(parents=True, exist_ok=True)
    state = run_state(t, rng)
    save_atomic(state, t.out_dir / "last.pt")
    if improved:
        save_atomic(state, t.out_dir / "best.pt")
    if t.attention == "soft" and t.epoch == t.profile.hard_warm_start:
        save_atomic(state, warm_start_path(t.out_dir, t.epoch))  # hard attention starts here
    tmp = t.out_dir / ".log.csv.tmp"
    t.log_frame().to_csv(tmp, index=False)
    os.replace(tmp, t.out_dir / "log.csv")


def run_state(trainer: Trainer, rng: list[dict]) -> dict:
    """The whole run as plain data and tensors (torch.load(weights_only=True) reads it)."""
    t = trainer
    return {
        "format_version": 1, "epoch": t.epoch, "finished": t.finished,
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
        "encoder": t.encoder.state_dict() if t.encoder is not None else None,
        "rng": rng, "vocab": list(t.vocab.words),
        "decoder_config": dict(t.model.config), "config": t.config(),
        "profile": t.profile.to_dict(), "dataset_hash": dataset_hash(t.data.dataset_dir),
        "best_bleu4": t.best_bleu4, "bad_epochs": t.bad_epochs,
        "train_seconds": t.train_seconds, "log": list(t.log),
        "loss_state": t.loss_fn.state_dict(),
    }


def restore_state(trainer: Trainer, ckpt: dict, rng: bool = True) -> None:
    """Put a run saved by :func:`run_state` back into ``trainer``; its RNG states if ``rng``."""
    t = trainer
    t.model.load_state_dict(ckpt["model"])
    if t.encoder is not None:
        t.encoder.load_state_dict(ckpt["encoder"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # empty when saved without float16 (on a CPU, or under bfloat16)
        t.scaler.load_state_dict(ckpt["scaler"])
    t.loss_fn.load_state_dict(ckpt["loss_state"])
    t.epoch, t.finished, t.log = ckpt["epoch"], ckpt["finished"], ckpt["log"]
    t.best_bleu4, t.bad_epochs = ckpt["best_bleu4"], ckpt["bad_epochs"]
    t.train_seconds = ckpt["train_seconds"]
    if rng:  # each rank its own state, if the run had as many ranks
        set_rng_state(ckpt["rng"][t.rank] if len(ckpt["rng"]) == t.world else ckpt["rng"][0])


@torch.no_grad()
def validate(trainer: Trainer, dataset: Dataset | None = None) -> tuple[float, float]:
    """(loss on each image's first caption, BLEU-4 of greedy captions vs all references)."""
    t = trainer
    dataset = dataset if dataset is not None else t.data.val_set
    t.caption_model.eval()
    loader = DataLoader(dataset, batch_size=2 * t.profile.batch_size,
                        collate_fn=caption_collate, num_workers=t.profile.num_workers)
    loss_sum, n, hypotheses = 0.0, 0, []
    on_gpu = t.amp is not None and t.device.type == "cuda"
    for x, captions, lengths, _ in tqdm(loader, desc="validating", leave=False,
                                        disable=t.rank != 0):
        captions = captions.to(t.device)
        with torch.autocast(t.device.type, dtype=t.amp, enabled=on_gpu):
            feats = t.caption_model.annotations(x.to(t.device, non_blocking=True))
            out = t.model(feats, captions, lengths)
            caps = greedy_search(t.model, feats, t.profile.decode_max_len, vocab=t.vocab)
        loss, _ = t.loss_fn(out, captions, lengths)
        loss_sum, n = loss_sum + float(loss) * len(lengths), n + len(lengths)
        hypotheses += [c.words for c in caps]
    references = [m["references"] for m in dataset.meta]
    return loss_sum / n, bleu_scores(references, hypotheses)["BLEU-4"]


def check_finite(trainer: Trainer, window: list[Tensor], steps: int) -> None:
    """Raise NonFiniteLossError at the first inf or NaN loss of the last ``window`` steps."""
    losses = torch.stack(window).float().cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    if not len(bad):
        return
    i = int(bad[0])
    t, p, batch = trainer, trainer.profile, steps - len(window) + i + 1
    raise NonFiniteLossError(
        f"The training loss is {float(losses[i])} at epoch {t.epoch + 1}, batch {batch} of "
        f"{len(t.loader)} (run {t.out_dir}): training stops at the first non-finite "
        f"loss, and nothing of this epoch is saved (last.pt, if any, holds epoch "
        f"{t.epoch}). Likely causes: (1) a learning rate too high (lr={p.lr:g}"
        f"{f', encoder_lr={p.encoder_lr:g}' if p.fine_tune else ''}): lower it ten-fold; "
        "(2) overflowing or non-finite features (an encoder with wrong weights; check "
        "np.isfinite on the cached features, or the images); (3) float16 overflow under "
        f"mixed precision (on here: {t.amp}): run on the CPU or without autocast to "
        "see if it is that.")


def train(profile: Profile, attention: str = "soft", resume: bool = True, *,
          out_dir: str | Path | None = None, device: str | None = None,
          one_per_image: bool | None = None,
          callback: Callable[[pd.DataFrame], None] | None = None,
          soft_dir: str | Path | None = None) -> pd.DataFrame:
    """Train (or, with ``resume``, continue or reuse) the profile's run; return its epoch log.

    ``out_dir`` defaults to ``run_dir(profile, attention)``. A finished run that matches the
    profile returns its log at once; one that does not match, or any run when ``resume`` is
    False, is moved aside (``<dir>.replaced-<time>``) and training starts afresh. ``soft_dir``:
    the soft run a hard run with ``profile.hard_warm_start`` starts from (:func:`start_from_soft`).
    """
    trainer = Trainer(profile, attention, out_dir, device, one_per_image)
    if not (resume and trainer.resume()) and trainer.rank == 0:
        set_aside(trainer.out_dir, "resume=False" if not resume else "no last.pt to resume from")
    if trainer.world > 1:
        dist.barrier()
    if trainer.epoch == 0 and attention == "hard" and profile.hard_warm_start:  # a new hard run
        start_from_soft(trainer, soft_dir)
    return trainer.fit(callback)


def start_from_soft(trainer: Trainer, soft_dir: str | Path | None = None) -> None:
    """Hard attention's start: the soft run (``soft_dir``, default the profile's) as it was
    after ``profile.hard_warm_start`` epochs (weights, optimiser, schedule, log, time), trained
    first when its epoch-<K>.pt is missing. The best hard model is chosen among hard epochs."""
    t, k, one = trainer, trainer.profile.hard_warm_start, trainer.one_per_image
    soft_dir = Path(soft_dir) if soft_dir is not None else run_dir(t.profile, "soft")
    if not warm_start_path(soft_dir, k).exists():
        train(t.profile, "soft", out_dir=soft_dir, device=str(t.device), one_per_image=one)
    ckpt = warm_start_state(soft_dir, k, training_config(t.profile, "soft", one),
                            t.data.dataset_dir, t.vocab)
    own = {"loss_state": t.loss_fn.state_dict(), "best_bleu4": -1.0, "bad_epochs": 0}  # hard's
    restore_state(t, {**ckpt, **own, "finished": False}, rng=False)  # its RNG stays as it is


def ensure_trained(profile: Profile, attention: str = "soft",
                   device: str = "cpu") -> tuple[AttentionDecoder, Vocab]:
    """The profile's trained decoder and vocabulary: best.pt of a matching run, else trained."""
    best = finished_run(profile, attention)
    if best is None:
        train(profile, attention, resume=True)
        best = run_dir(profile, attention) / "best.pt"
    decoder, vocab, _ = load_checkpoint(best, device)
    return decoder, vocab
