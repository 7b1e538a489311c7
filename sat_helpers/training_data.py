"""What a training run reads: its datasets and loader, and the model that turns them into outputs.

:class:`TrainingData` wires a profile's prepared data to a DataLoader: cached features for a
frozen encoder, else the uint8 images and the :class:`~sat_helpers.encoder.Encoder` that
encodes them on the device; one or all captions of each image per epoch
(:func:`epoch_captions`), served caption by caption (:class:`EpochCaptions`) or, when the run
encodes images, image by image so that each is encoded once an epoch (:class:`EpochImages`);
a DistributedSampler so that under DDP rank r gets every N-th sample of the global order.
:class:`CaptionModel` is the one module a run trains.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .config import Profile
from .data import CaptionDataset, caption_collate, ensure_dataset
from .decoder import AttentionDecoder, DecoderOutput
from .encoder import Encoder
from .features import FeatureDataset, ensure_features
from .images import annotation_vectors


def epoch_captions(n_images: int, cpi: int, one_per_image: bool, seed: int,
                   epoch: int) -> Tensor:
    """The caption indices (n_images, c) an epoch trains on: each image's ``cpi`` captions, or
    one seeded random one (c = 1). A function of the seed and the epoch only."""
    if not one_per_image:
        return torch.arange(n_images * cpi).view(n_images, cpi)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    pick = torch.randint(cpi, (n_images,), generator=g)
    return (torch.arange(n_images) * cpi + pick)[:, None]


class EpochCaptions(Dataset):
    """One epoch's training pairs, one item per caption (``epoch_captions``)."""

    def __init__(self, dataset: Dataset, one_per_image: bool, seed: int):
        self.dataset, self.one_per_image, self.seed = dataset, one_per_image, seed
        self.cpi, self.n_images = dataset.captions_per_image, len(dataset.meta)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's caption of each image (a function of seed and epoch only)."""
        self.index = epoch_captions(self.n_images, self.cpi, self.one_per_image, self.seed,
                                    epoch).flatten()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.dataset[int(self.index[i])]


class EpochImages(EpochCaptions):
    """The same pairs as :class:`EpochCaptions`, one item per image: (image, its c captions
    (c, T), their lengths (c,)). Batches of these encode each image once, however many
    captions it has (:func:`image_collate`, :meth:`CaptionModel.forward`)."""

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's captions of each image (a function of seed and epoch only)."""
        self.index = epoch_captions(self.n_images, self.cpi, self.one_per_image, self.seed, epoch)

    def __getitem__(self, j: int):
        rows = self.index[j]
        return self.dataset.row(j), self.dataset.captions[rows], self.dataset.lengths[rows]


def image_collate(batch: list[tuple]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack :class:`EpochImages` items: images (k, ...), captions (k·c, T), lengths (k·c,),
    the captions image by image."""
    images, captions, lengths = zip(*batch, strict=True)
    return torch.stack(images), torch.cat(captions), torch.cat(lengths)


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
        return x if self.encoder is None else annotation_vectors(self.encoder, x)

    def forward(self, x: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced outputs of the batch's features or images.

        ``x`` may hold fewer rows than there are captions (a batch of :class:`EpochImages`):
        then each row is encoded once and serves the same number of consecutive captions.
        """
        features = self.annotations(x)
        if len(captions) % len(features):
            raise ValueError(f"{len(captions)} captions for {len(features)} images: each image "
                             "needs the same number of consecutive captions.")
        repeats = len(captions) // len(features)
        return self.decoder(features.repeat_interleave(repeats, dim=0) if repeats > 1
                            else features, captions, lengths)


class TrainingData:
    """A run's datasets, vocabulary, loader and (when it encodes images) encoder.

    Rank 0 builds what is missing (dataset, feature cache); the other ranks wait, then reuse
    it. The loader serves ``batch_size // world`` captions per process; when the run encodes
    images, as whole images with all their captions of the epoch (:class:`EpochImages`):
    ``batch_size // world // c`` images of c captions each (c = 5: 30 captions at 32).
    """

    def __init__(self, profile: Profile, rank: int, world: int, device: torch.device,
                 one_per_image: bool):
        if profile.batch_size % world:
            raise ValueError(f"batch_size={profile.batch_size} is the global batch; it must be "
                             f"divisible by the {world} processes.")
        p, encode = profile, profile.fine_tune or not profile.feature_cache
        if rank == 0:
            ensure_dataset(p)
            if not encode:
                ensure_features(p, device=device)
        if world > 1:
            dist.barrier()
        self.dataset_dir = ensure_dataset(p)
        self.encoder = None
        if encode:
            self.encoder = Encoder(p.encoder, grid=p.grid, fine_tune=p.fine_tune,
                                   image_size=p.image_size)
            self.train_set = CaptionDataset(self.dataset_dir, "train")
            self.val_set = CaptionDataset(self.dataset_dir, "val")
        else:
            features = ensure_features(p, device=device)
            self.train_set = FeatureDataset(features, self.dataset_dir, "train")
            self.val_set = FeatureDataset(features, self.dataset_dir, "val")
        self.vocab = self.train_set.vocab
        self.enc_dim = self.encoder.channels if self.encoder else self.train_set.features.shape[-1]
        batch_size, collate = p.batch_size // world, caption_collate
        if encode:  # batches of whole images: each is encoded once per epoch
            self.epoch_set = EpochImages(self.train_set, one_per_image, p.seed)
            captions = self.epoch_set.index.shape[1]
            batch_size, collate = max(1, batch_size // captions), image_collate
        else:
            self.epoch_set = EpochCaptions(self.train_set, one_per_image, p.seed)
        self.sampler = DistributedSampler(self.epoch_set, num_replicas=world, rank=rank,
                                          shuffle=True, seed=p.seed)
        self.loader = DataLoader(self.epoch_set, batch_size=batch_size, sampler=self.sampler,
                                 collate_fn=collate, num_workers=p.num_workers,
                                 persistent_workers=False)

    def set_epoch(self, epoch: int) -> None:
        """This epoch's captions and shuffled order (both functions of the seed and epoch)."""
        self.epoch_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
