"""Notebook 01's checks: the vocabulary and one encoded caption."""

from __future__ import annotations

from collections import Counter

from ..data import Vocab, encode_caption
from .machinery import Answer, exercise, fail

# "red" occurs 5 times in 3 captions, "star" 4 times in 4: counting captions instead of
# occurrences keeps other words and orders them otherwise
_CORPUS = [["a", "red", "circle", "and", "a", "red", "star"], ["a", "blue", "star"],
           ["a", "red", "star"], ["two", "red", "red", "squares"], ["a", "tiny", "green", "star"],
           ["big", "blue", "star"]]


def _vocabulary(captions: list[list[str]], min_freq: int) -> list[str]:
    return Vocab.build(captions, min_freq).words


@exercise("vocabulary", blocked=(Vocab.build,), stand_in=_vocabulary,
          code_hint="counts = Counter(w for tokens in captions for w in tokens); keep "
                    "[w for w, c in counts.items() if c >= min_freq], then "
                    "sorted(kept, key=lambda w: (-counts[w], w)).",
          write_from="the operations the task names (a Counter of the words, then sorted)")
def vocabulary(answer: Answer) -> int:
    """fn(captions, min_freq) -> the vocabulary's words (no specials), as ``Vocab.build``."""
    name = "vocabulary"
    counts = Counter(w for c in _CORPUS for w in c)
    in_captions = Counter(w for c in _CORPUS for w in set(c))
    for min_freq in (1, 2, 3):
        want = Vocab.build(_CORPUS, min_freq).words
        inputs = f"min_freq={min_freq} on {len(_CORPUS)} captions"
        got = answer([list(c) for c in _CORPUS], min_freq, inputs=inputs)
        if not isinstance(got, list) or not all(isinstance(w, str) for w in got):
            fail(name, f"returned {type(got).__name__}, expected a list of words ({inputs}).",
                 "return a list of str.")
        specials = [w for w in got if w.startswith("<")]
        if specials:
            fail(name, f"the list holds specials {specials} ({inputs}).",
                 "return only the words: Vocab(words) puts <pad>, <start>, <end>, <unk> first.")
        by_caption = sorted((w for w, c in in_captions.items() if c >= min_freq),
                            key=lambda w: (-in_captions[w], w))
        if got != want and (got == by_caption or set(got) == set(by_caption) != set(want)):
            fail(name, f"got {got}, expected {want} ({inputs}): you counted the captions that "
                 "contain each word.", "a word's frequency counts every occurrence: 'a red "
                 "circle and a red star' adds 2 to 'red'.")
        extra = sorted(set(got) - set(want))
        if extra:
            fail(name, f"keeps {extra}, seen {[counts[w] for w in extra]} times ({inputs}).",
                 "keep a word only if it occurs at least min_freq times in the captions.")
        missing = sorted(set(want) - set(got))
        if missing:
            fail(name, f"drops {missing}, seen {[counts[w] for w in missing]} times "
                 f"({inputs}).", "a word seen exactly min_freq times stays (at least).")
        if len(got) != len(set(got)):
            fail(name, f"some words appear twice: {got} ({inputs}).", "list each word once.")
        if got != want:
            fail(name, f"the right words in another order: {got}, expected {want} ({inputs}).",
                 "most frequent first; words seen equally often in alphabetical order.",
                 "sorted(kept, key=lambda w: (-counts[w], w)): the count descending, then a-z.")
    return 3


def _encode(tokens: list[str], vocab: Vocab, max_len: int) -> list[int]:
    return encode_caption(tokens, vocab, max_len)


@exercise("encode", blocked=(encode_caption, Vocab.encode), stand_in=_encode,
          code_hint="ids = [vocab.start_id] + [vocab.stoi.get(t, vocab.unk_id) for t in tokens] "
                    "+ [vocab.end_id]; then ids + [vocab.pad_id] * (max_len + 2 - len(ids)).",
          write_from="the vocabulary's ids the task lists (vocab.stoi, vocab.start_id, "
                      "vocab.end_id, vocab.pad_id, vocab.unk_id)")
def encode(answer: Answer) -> int:
    """fn(tokens, vocab, max_len) -> one caption row, as ``data.encode_caption``."""
    name = "encode"
    vocab = Vocab.build(_CORPUS, 1)
    cases = [(["a", "red", "circle"], 5), (["a", "purple", "star"], 3), ([], 2),
             (["two", "red", "squares"], 3)]
    for tokens, max_len in cases:
        want = encode_caption(tokens, vocab, max_len)
        inputs = f"tokens={tokens}, max_len={max_len}"
        got = answer(list(tokens), vocab, max_len, inputs=inputs)
        got = got.tolist() if hasattr(got, "tolist") else got
        if not isinstance(got, list):
            fail(name, f"returned {type(got).__name__}, expected a list of ints ({inputs}).",
                 "return a list of ids.")
        if len(got) != max_len + 2:
            fail(name, f"returned {len(got)} ids, expected max_len + 2 = {max_len + 2} "
                 f"({inputs}).", "every row has the same width: <start>, the words, <end>, "
                 "then <pad> (id 0) up to max_len + 2 ids.")
        if got != want:
            i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            unknown = [t for t in tokens if t not in vocab]
            concept = {0: "a row starts with <start> (vocab.start_id)."}.get(i, (
                f"{unknown[0]!r} is not in the vocabulary: it becomes <unk> (vocab.unk_id)."
                if unknown and want[i] == vocab.unk_id else
                "after the last word comes <end> (vocab.end_id), then <pad> (vocab.pad_id)."))
            word = vocab.itos[got[i]] if isinstance(got[i], int) and 0 <= got[i] < len(vocab) \
                else "no word"
            fail(name, f"id {i} is {got[i]} ({word}), expected {want[i]} "
                 f"({vocab.itos[want[i]]}); got {got}, expected {want} ({inputs}).", concept)
    return len(cases)
