"""Evaluate a trained model on a split: one row per image and the corpus metrics of the papers.

``evaluate(checkpoint_or_model, split, beam_size)`` captions every image of the split (all
images through the search in chunks), then scores the captions: corpus BLEU-1..4 always, with
and without the brevity penalty (``metrics.bleu_scores``), METEOR, ROUGE-L and CIDEr when the
COCO caption toolkit and Java are there (``metrics.coco_scores``), and, on data whose images
know their objects (Shapes), the pointing game with its centre and uniform baselines. The
per-image table keeps each ``Caption`` (words and attention maps) so a notebook can draw it
without decoding again.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import (  # noqa: F401 - CheckpointError, profile_from_dict re-exported
    CheckpointError,
    load_encoder,
    load_model,
    profile_from_dict,
)
from .config import Profile
from .data import CaptionDataset, Vocab, dataset_hash, ensure_dataset
from .decoder import AttentionDecoder
from .encoder import Encoder
from .features import FeatureDataset, ensure_features
from .images import annotation_vectors
from .metrics import CocoToolkitMissing, bleu_scores, coco_scores
from .pointing import pointing_game, pointing_summary, scale_objects
from .search import Caption, beam_search, greedy_search

POINTING_NAMES = {"pointing_phrase": "pointing_noun_phrase",
                  "pointing_shape": "pointing_shape_word",
                  "pointing_colour": "pointing_colour_word",
                  "pointing_size": "pointing_size_word",
                  "baseline_centre": "pointing_baseline_centre",
                  "baseline_uniform": "pointing_baseline_uniform"}
"""``pointing.pointing_summary`` keys renamed for the metrics dict (the others keep theirs)."""
TABLE_COLUMNS = ["id", "hypothesis", "bleu1", "bleu4", "named_objects", "phrase_hits",
                 "shape_hits"]
"""The columns worth printing (the table also has references, log_prob, objects, caption)."""


@functools.cache
def _say_once(message: str) -> None:
    """Print a note the first time it comes up in this process only."""
    print(message)


def split_annotations(profile: Profile, split: str, batch_size: int, device: str,
                      encoder: Encoder | None = None) -> tuple[list[dict], Iterator[Tensor]]:
    """(the split's meta, chunks of its annotation vectors): cached features, or ``encoder``'s."""
    dataset_dir = ensure_dataset(profile)
    if encoder is None:
        data = FeatureDataset(ensure_features(profile, device, splits=(split,)), dataset_dir,
                              split)
        source, n = data.features, len(data.meta)
    else:
        data = CaptionDataset(dataset_dir, split)
        source, n = data.images, len(data.meta)

    def chunks() -> Iterator[Tensor]:
        for start in range(0, n, batch_size):
            block = np.asarray(source[start:start + batch_size])
            if encoder is None:
                yield torch.from_numpy(block.astype(np.float32)).to(device)
            else:
                with torch.no_grad():
                    images = torch.from_numpy(block).to(device).permute(0, 3, 1, 2)
                    yield annotation_vectors(encoder, images)

    return data.meta, chunks()


def caption_split(decoder: AttentionDecoder, vocab: Vocab, profile: Profile, split: str = "test",
                  beam_size: int = 3, *, batch_size: int = 100, device: str | None = None,
                  encoder: Encoder | None = None, length_penalty: float = 0.0,
                  ) -> tuple[list[Caption], list[dict]]:
    """Captions of every image of a split (beam 1 = greedy), decoded in chunks; and its meta."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
    if len(vocab) != decoder.config["vocab_size"]:
        raise ValueError(f"The vocabulary has {len(vocab)} entries but the decoder predicts "
                         f"{decoder.config['vocab_size']} words: pass the vocabulary the model "
                         "was trained with (the one in its checkpoint).")
    device = device or str(next(decoder.parameters()).device)
    meta, chunks = split_annotations(profile, split, batch_size, device, encoder)
    captions: list[Caption] = []
    with tqdm(total=len(meta), desc=f"captioning {split} (beam {beam_size})", unit="img",
              leave=False) as bar:
        for feats in chunks:
            if feats.shape[-1] != decoder.config["enc_dim"]:
                raise ValueError(
                    f"Profile {profile.name!r} gives {feats.shape[-1]}-d annotation vectors "
                    f"({profile.encoder}) but the decoder expects {decoder.config['enc_dim']}-d"
                    ": pass the profile the model was trained with.")
            if beam_size == 1:
                captions += greedy_search(decoder, feats, profile.decode_max_len, vocab=vocab)
            else:
                captions += beam_search(decoder, feats, beam_size, profile.decode_max_len,
                                        vocab=vocab, length_penalty=length_penalty)
            bar.update(len(feats))
    return captions, meta


def pointing_records(table: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """The pointing game of every caption of an ``evaluate`` table: one row per object/mention."""
    if "objects" not in table:
        raise ValueError("This table has no object boxes (only Shapes data has them): the "
                         "pointing game needs them.")
    records = []
    for j, row in table.iterrows():
        records += pointing_game(row["caption"].alphas.cpu(), row["caption"].words,
                                 row["objects"], profile.grid, profile.image_size, image_id=j)
    return pd.DataFrame(records)


def _corpus_scores(references: list, hypotheses: list, coco: bool, meteor: bool) -> dict:
    """BLEU-1..4 (nltk) with and without the brevity penalty (the paper's Table 1 is without:
    "BLEU-n (no BP)") and, when the toolkit is there, METEOR, ROUGE-L and CIDEr."""
    scores = dict(bleu_scores(references, hypotheses))
    no_bp = bleu_scores(references, hypotheses, with_brevity_penalty=False)
    scores.update({f"{k} (no BP)": v for k, v in no_bp.items()})
    if coco:
        try:
            extra = coco_scores(references, hypotheses, meteor=meteor)
        except CocoToolkitMissing as err:
            _say_once(f"Note: METEOR, ROUGE-L and CIDEr left out. {err}")
        else:
            scores.update({k: extra[k] for k in ("METEOR", "ROUGE-L", "CIDEr") if k in extra})
    return scores


def _image_rows(captions: list[Caption], meta: list[dict], profile: Profile) -> pd.DataFrame:
    """One row per image: the caption, its references, its sentence BLEU (and boxes)."""
    rows = []
    for caption, m in zip(captions, meta, strict=True):
        sentence = bleu_scores([m["references"]], [caption.words])
        row = {"id": m["id"], "filename": m.get("filename"),
               "hypothesis": " ".join(caption.words),
               "references": [" ".join(r) for r in m["references"]],
               "bleu1": sentence["BLEU-1"], "bleu4": sentence["BLEU-4"],
               "log_prob": caption.score, "caption": caption}
        if "objects" in m:
            row["objects"] = scale_objects(m["objects"], m["width"], m["height"],
                                           profile.image_size)
        rows.append(row)
    return pd.DataFrame(rows)


def _add_pointing(table: pd.DataFrame, profile: Profile) -> dict:
    """Per-image pointing hits into ``table``; the corpus pointing metrics as a dict."""
    records = pointing_records(table, profile)
    hits = records.reindex(columns=["image_id", "status", "hit_phrase", "hit_shape"])
    named = hits[hits["status"] == "named"]
    per_image = named.groupby("image_id").agg(named_objects=("status", "size"),
                                              phrase_hits=("hit_phrase", "sum"),
                                              shape_hits=("hit_shape", "sum"))
    per_image = per_image.reindex(table.index, fill_value=0)
    for column in per_image:
        table[column] = per_image[column]
    return {POINTING_NAMES.get(k, k): v for k, v in pointing_summary(records).items()}


def _resolve(checkpoint_or_model: str | Path | tuple[AttentionDecoder, Vocab],
             profile: Profile | None, device: str | None, encoder: Encoder | None,
             ) -> tuple[AttentionDecoder, Vocab, Profile, Encoder | None]:
    """(decoder, vocab, profile, fine-tuned encoder or None) from a checkpoint path or a pair."""
    if isinstance(checkpoint_or_model, (str, Path)):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        decoder, vocab, stored, ckpt = load_model(checkpoint_or_model, device)
        profile = profile or stored
        if profile.fine_tune and encoder is None:
            encoder = load_encoder(ckpt, profile, device)
        if ckpt.get("dataset_hash") not in (None, dataset_hash(ensure_dataset(profile))):
            warnings.warn(f"The {profile.name!r} dataset was rebuilt after this model was "
                          "trained: the scores are on the current split.", stacklevel=3)
    else:
        decoder, vocab = checkpoint_or_model
        if profile is None:
            raise ValueError("evaluate((decoder, vocab), ...) needs profile=: the profile the "
                             "model was trained with (it says which data and features to use).")
    if profile.fine_tune and encoder is None:
        raise ValueError(f"Profile {profile.name!r} fine-tunes the encoder: pass encoder= (the "
                         "fine-tuned Encoder) or evaluate the checkpoint path instead.")
    return decoder, vocab, profile, encoder


def evaluate(checkpoint_or_model: str | Path | tuple[AttentionDecoder, Vocab],
             split: str = "test", beam_size: int = 3, *, profile: Profile | None = None,
             batch_size: int = 100, device: str | None = None, coco: bool = True,
             meteor: bool = True, encoder: Encoder | None = None, length_penalty: float = 0.0,
             ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Caption every image of ``split`` and score it: (one row per image, corpus metrics).

    ``checkpoint_or_model``: a best.pt/last.pt path (its stored profile is used unless
    ``profile`` is given) or a ``(decoder, vocab)`` pair with ``profile``. ``coco=False``
    skips the Java toolkit (BLEU only); ``meteor=False`` only METEOR, whose Java start costs
    tens of seconds; ``length_penalty`` goes to ``beam_search`` (beam > 1). Table columns:
    id, filename, hypothesis, references, bleu1, bleu4 (sentence level), log_prob, caption
    (the search's Caption: words and attention maps) and, on Shapes, objects (boxes in the
    model's pixels), named_objects, phrase_hits, shape_hits.
    """
    decoder, vocab, profile, encoder = _resolve(checkpoint_or_model, profile, device, encoder)
    captions, meta = caption_split(decoder, vocab, profile, split, beam_size,
                                   batch_size=batch_size, device=device, encoder=encoder,
                                   length_penalty=length_penalty)
    table = _image_rows(captions, meta, profile)
    metrics = {"images": len(table),
               **_corpus_scores([m["references"] for m in meta], [c.words for c in captions],
                                coco, meteor)}
    if "objects" in table:
        metrics.update(_add_pointing(table, profile))
    return table, metrics
