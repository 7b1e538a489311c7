"""Scoring captions: corpus BLEU (nltk) and the COCO caption toolkit.

BLEU here is the one the COCO caption toolkit (coco-caption, ``pycocoevalcap``) computes:
corpus-level, modified (clipped) n-gram precisions combined by a geometric mean, no smoothing,
times the brevity penalty from the reference length closest to each hypothesis. Xu et al.
(2015, Table 1) report BLEU without a brevity penalty, so their numbers are upper bounds of
this one's; ``bleu_scores(..., with_brevity_penalty=False)`` computes theirs. ``bleu_scores``
needs only nltk; ``coco_scores`` adds METEOR, ROUGE-L and CIDEr through ``pycocoevalcap`` (the
``coco`` extra, which needs Java).

Where the attention points while a caption names an object is :mod:`sat_helpers.pointing`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence

from nltk.translate.bleu_score import brevity_penalty, closest_ref_length, modified_precision

Tokens = Sequence[str]

COCO_INSTALL_HINT = (
    'Install the COCO caption toolkit with `pip install "show-attend-tell-course[coco]"` '
    "(or `pip install pycocoevalcap`)"
)
JAVA_INSTALL_HINT = (
    "pycocoevalcap runs Java for its tokeniser and METEOR, and no `java` is on PATH. Install a "
    "Java runtime (JRE 8 or newer: `sudo apt-get install default-jre`, `brew install openjdk`, "
    "or https://adoptium.net), then restart the kernel. On Colab the setup cell installs it"
)


class CocoToolkitMissing(ImportError):
    """pycocoevalcap or the Java it runs is not available; the message says how to get it."""


# ---------------------------------------------------------------------------------- BLEU


def _check_corpus(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> None:
    """Raise a clear error unless there is one non-empty reference list per hypothesis."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference lists but {len(hypotheses)} hypotheses: "
                         "give one list of reference token lists per hypothesis.")
    if not hypotheses:
        raise ValueError("The corpus is empty: give at least one hypothesis.")
    for i, (refs, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        if not refs:
            raise ValueError(f"Image {i} has no reference captions.")
        if isinstance(hyp, str) or any(isinstance(r, str) for r in refs):
            raise TypeError(f"Image {i}: captions must be token lists (e.g. 'a red circle'.split()"
                            "), not strings; references are a list of token lists per image.")


def bleu_counts(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                max_n: int = 4) -> dict[str, object]:
    """Corpus totals for BLEU: clipped n-gram matches, n-gram counts, lengths (nltk's helpers)."""
    _check_corpus(references, hypotheses)
    matches, totals, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
    for refs, hyp in zip(references, hypotheses, strict=True):
        refs, hyp = [list(r) for r in refs], list(hyp)
        for n in range(1, max_n + 1):
            matches[n - 1] += modified_precision(refs, hyp, n).numerator
            totals[n - 1] += max(0, len(hyp) - n + 1)
        hyp_len += len(hyp)
        ref_len += closest_ref_length(refs, len(hyp))
    return {"matches": matches, "totals": totals, "hyp_len": hyp_len, "ref_len": ref_len}


def bleu_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], *,
                with_brevity_penalty: bool = True) -> dict[str, float]:
    """Corpus BLEU-1..4 on token lists, as the COCO toolkit computes it (no smoothing).

    BLEU-n = BP · (p_1 ··· p_n)^(1/n), p_k = clipped k-gram matches / k-grams over the corpus,
    BP = min(1, exp(1 - r/c)) with r the sum of the reference lengths closest to each
    hypothesis and c the hypotheses' length. Unlike nltk's ``corpus_bleu``, a hypothesis
    shorter than k adds no k-grams (nltk counts one, which lowers BLEU-3/4 of short captions).
    ``with_brevity_penalty=False`` leaves BP out (BP = 1), as the paper's Table 1 does.
    """
    counts = bleu_counts(references, hypotheses)
    bp = brevity_penalty(counts["ref_len"], counts["hyp_len"]) if with_brevity_penalty else 1.0
    scores, log_sum = {}, 0.0
    pairs = zip(counts["matches"], counts["totals"], strict=True)
    for n, (match, total) in enumerate(pairs, start=1):
        log_sum += math.log(match / total) if match > 0 else -math.inf
        scores[f"BLEU-{n}"] = bp * math.exp(log_sum / n) if log_sum > -math.inf else 0.0
    return scores


# ------------------------------------------------------------------------ COCO toolkit


def _coco_toolkit() -> dict:
    """The pycocoevalcap scorers, or CocoToolkitMissing saying how to get what is missing."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as err:
        raise CocoToolkitMissing(f"coco_scores needs the COCO caption toolkit ({err}). "
                                 f"{COCO_INSTALL_HINT}. bleu_scores works without it.") from err
    if shutil.which("java") is None:
        raise CocoToolkitMissing(f"{JAVA_INSTALL_HINT}. bleu_scores works without it.")
    return {"Bleu": Bleu, "Meteor": Meteor, "Rouge": Rouge, "Cider": Cider,
            "PTBTokenizer": PTBTokenizer}


@contextlib.contextmanager
def _child_stderr_held() -> Iterator[None]:
    """Hold what child processes write to fd 2 (Java's "PTBTokenizer tokenized ..." line, a
    red box in a notebook); pass it on only when the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def ptb_tokenize(captions: dict[object, list[str]], tokenizer_class: type) -> dict:
    """Captions re-tokenised by the toolkit's PTB tokeniser in one Java call; '' stays ''."""
    non_empty = {k: [{"caption": c} for c in cs if c.strip()] for k, cs in captions.items()}
    with _child_stderr_held():
        tokens = tokenizer_class().tokenize({k: v for k, v in non_empty.items() if v})
    return {k: tokens.get(k, []) + [""] * (len(cs) - len(non_empty[k]))
            for k, cs in captions.items()}


def coco_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], *,
                meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr as the COCO caption toolkit computes them.

    Each token list is joined with spaces and re-tokenised by the toolkit's Stanford PTB
    tokeniser (lower-cased, punctuation dropped), as in the papers. Needs pycocoevalcap and
    Java. METEOR loads a 60 MB paraphrase table in Java first (tens of seconds, minutes on
    a busy 2-core CPU), once per session (:func:`meteor_scorer`); ``meteor=False`` leaves it
    out.
    """
    _check_corpus(references, hypotheses)
    kit = _coco_toolkit()
    captions = {("ref", i): [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    captions |= {("hyp", i): [" ".join(h)] for i, h in enumerate(hypotheses)}
    tokens = ptb_tokenize(captions, kit["PTBTokenizer"])
    gts = {i: tokens["ref", i] for i in range(len(references))}
    res = {i: tokens["hyp", i] for i in range(len(hypotheses))}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its counts
        bleu, _ = kit["Bleu"](4).compute_score(gts, res)
    scores = {f"BLEU-{n}": float(b) for n, b in enumerate(bleu, start=1)}
    if meteor:
        scorer = meteor_scorer(kit["Meteor"])
        try:
            scores["METEOR"] = float(scorer.compute_score(gts, res)[0])
        except BaseException:  # a broken Java process is not kept for the next call
            meteor_scorer.cache_clear()
            _close_meteor(scorer)
            raise
    scores["ROUGE-L"] = float(kit["Rouge"]().compute_score(gts, res)[0])
    scores["CIDEr"] = float(kit["Cider"]().compute_score(gts, res)[0])
    return scores


@functools.cache
def meteor_scorer(meteor_class: type) -> object:
    """One METEOR process for the session, closed at exit: its start (Java, a 60 MB paraphrase
    table) costs seconds to tens of seconds, and a notebook may score several caption sets."""
    scorer = meteor_class()
    atexit.register(_close_meteor, scorer)
    return scorer


def _close_meteor(meteor: object) -> None:
    """End METEOR's Java process now rather than at garbage collection."""
    with meteor.lock:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
