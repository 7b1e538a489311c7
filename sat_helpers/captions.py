"""Captions as the model sees them: tokens, the vocabulary, and the Karpathy JSON they come in.

Every dataset (Shapes, Flickr8k/30k, COCO, your own) arrives as a Karpathy-format JSON:
``images[]`` with ``filename``, ``split`` and ``sentences[]`` (``raw`` text or ``tokens``).
:func:`load_karpathy_json` checks it record by record; :func:`tokenize` turns a sentence into
words; :class:`Vocab` maps words to ids with the four specials first.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class DatasetError(ValueError):
    """A dataset input (JSON, caption or image) is wrong; the message says where and what to do."""


def tokenize(text: str) -> list[str]:
    """Lower-case words (letters and digits, with inner apostrophes); punctuation is dropped."""
    return _TOKEN.findall(text.lower())


class Vocab:
    """Word <-> id: the four specials (<pad>=0, <start>, <end>, <unk>) first, then ``words``."""

    def __init__(self, words: list[str]):
        words = list(words)
        clash = set(words) & set(SPECIALS)
        if clash or len(set(words)) != len(words):
            raise ValueError(f"Vocab words must be unique and not specials; got {sorted(clash)} "
                             "or duplicates.")
        self.words = words
        self.itos = list(SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.start_id, self.end_id, self.unk_id = range(4)

    @classmethod
    def build(cls, captions: list[list[str]], min_word_freq: int = 1) -> Vocab:
        """The words seen at least ``min_word_freq`` times, most frequent first (ties: a-z)."""
        counts = Counter(w for tokens in captions for w in tokens)
        kept = [w for w, c in counts.items() if c >= min_word_freq]
        return cls(sorted(kept, key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of the tokens (unknown words -> <unk>); no specials are added."""
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids) -> list[str]:
        """Words of the ids, stopping at <end> and skipping <pad> and <start>."""
        words = []
        for i in (int(i) for i in ids):
            if i == self.end_id:
                break
            if i not in (self.pad_id, self.start_id):
                words.append(self.itos[i])
        return words

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (the specials, then the words)."""
        Path(path).write_text(json.dumps({"specials": list(SPECIALS), "words": self.words}))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if data.get("specials") != list(SPECIALS):
            raise DatasetError(f"{path}: not a vocabulary of this course (specials differ).")
        return cls(data["words"])

    def __repr__(self) -> str:
        return f"Vocab({len(self)} entries: {self.itos[:8]}...)"


def encode_caption(tokens: list[str], vocab: Vocab, max_len: int) -> list[int]:
    """One row of ``{split}_captions.npy``: <start> ids <end>, padded to max_len + 2 ids."""
    if len(tokens) > max_len:
        raise ValueError(f"a caption of {len(tokens)} tokens is longer than max_len = {max_len}")
    ids = [vocab.start_id, *vocab.encode(tokens), vocab.end_id]
    return ids + [vocab.pad_id] * (max_len + 2 - len(ids))


def load_karpathy_json(path: str | Path) -> dict:
    """Read a Karpathy-format dataset JSON and check it; errors name the image index and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e}). Re-download or regenerate it.") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected an object with an 'images' list (Karpathy format).")
    for i, image in enumerate(data["images"]):
        _check_image(path, i, image)
    return data


def _check_image(path: Path, i: int, image) -> None:
    """Raise a DatasetError naming ``images[i]`` and the field if the record is malformed."""
    def fail(what: str):
        raise DatasetError(f"{path}: images[{i}] {what}")

    if not isinstance(image, dict):
        fail("is not an object.")
    for key, kind in (("filename", str), ("split", str), ("sentences", list)):
        if key not in image:
            fail(f"has no field {key!r}.")
        if not isinstance(image[key], kind):
            fail(f"field {key!r} should be a {kind.__name__}, not {type(image[key]).__name__}.")
    if image["split"] not in KARPATHY_SPLITS:
        fail(f"field 'split' is {image['split']!r}; expected one of {', '.join(KARPATHY_SPLITS)}.")
    for k, sentence in enumerate(image["sentences"]):
        raw, tokens = (sentence.get(f) if isinstance(sentence, dict) else None
                       for f in ("raw", "tokens"))
        if not isinstance(raw, str) and not (
                isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            fail(f"field 'sentences[{k}]' needs 'raw' text or a 'tokens' list of strings.")


def caption_of(sentence: dict) -> list[str]:
    """The tokens of one Karpathy sentence: tokenize(raw), else its lower-cased tokens."""
    if isinstance(sentence.get("raw"), str):
        return tokenize(sentence["raw"])
    return tokenize(" ".join(sentence["tokens"]))
