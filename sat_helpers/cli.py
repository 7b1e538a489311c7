"""The `sat` command: sat data | train | caption | evaluate | course."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
SET_HELP = ("profile fields to change, e.g. --set epochs=2 batch_size=16 (a variant: its data "
            "and runs get folders of their own)")


def _profile(args: argparse.Namespace, default: str | None = None):
    """The profile of ``--profile`` (else ``default``, else $SAT_PROFILE) with ``--set``'s fields.

    Raises ValueError naming an unknown profile or field, or a value its field cannot take.
    """
    from .config import get_profile, parse_overrides

    return get_profile(args.profile or default, **parse_overrides(args.set))


def _data(args: argparse.Namespace) -> int:
    """Build (or reuse) the profile's prepared dataset and print where it is.

    With ``--captions FILE --images DIR``: your own photos and captions become the dataset
    of the ``custom`` profile first.
    """
    from .data import DatasetError, ensure_dataset, make_custom_dataset

    if (args.captions is None) != (args.images is None):
        return _fail("data", "--captions FILE and --images DIR go together: the CSV or TSV of "
                     "(image file, caption) rows and the folder its image paths start from")
    try:
        profile = _profile(args, "custom" if args.captions else None)
        if args.captions:
            if profile.dataset != "custom":
                return _fail("data", f"--captions makes the 'custom' dataset, but profile "
                             f"{profile.name!r} uses {profile.dataset!r}; pass --profile custom")
            print(f"wrote {make_custom_dataset(args.captions, args.images, args.seed)}")
        print(ensure_dataset(profile))
    except (DatasetError, ValueError) as err:
        return _fail("data", str(err))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train (or resume) the profile's decoder; under torchrun, every rank runs this."""
    import os

    import torch.distributed as dist

    from .train import run_dir, train

    try:
        profile = _profile(args)
    except ValueError as err:
        return _fail("train", str(err))
    log = train(profile, attention=args.attention, resume=args.resume, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(log.to_string(index=False))
        print(f"checkpoints and log.csv in {run_dir(profile, args.attention)}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _fail(command: str, message: str) -> int:
    """Print a `sat <command>` error to stderr and return the exit status 1."""
    print(f"sat {command}: error: {message}", file=sys.stderr)
    return 1


def _caption(args: argparse.Namespace) -> int:
    """Caption image files with a trained checkpoint: one line per image, optional figures."""
    import torch

    from .checkpoint import load_encoder, load_model, run_dir
    from .config import get_profile
    from .data import DatasetError, Vocab
    from .images import annotation_vectors, image_tensor, model_view, open_image
    from .search import beam_search

    if args.beam < 1:
        return _fail("caption", f"--beam must be at least 1, got {args.beam}")
    try:
        images = [open_image(path)[0] for path in args.images]
    except DatasetError as err:
        return _fail("caption", str(err))
    path = Path(args.checkpoint or run_dir(get_profile(args.profile), "soft") / "best.pt")
    try:
        decoder, vocab, profile, ckpt = load_model(path)
        encoder = load_encoder(ckpt, profile)
    except (OSError, ValueError) as err:  # missing or unloadable checkpoint: say which
        return _fail("caption", str(err))
    if args.vocab:
        try:
            vocab = Vocab.load(args.vocab)
        except (OSError, ValueError) as err:
            return _fail("caption", f"could not load vocabulary {args.vocab}: {err}")
    problem = _mismatch(path, vocab, decoder, encoder, profile)
    if problem:
        return _fail("caption", problem)
    with torch.no_grad():  # each image as the datasets hold it, then as training encoded it
        pixels = torch.stack([image_tensor(image, profile.image_size, profile.resize)
                              for image in images])
        feats = annotation_vectors(encoder, pixels)
    captions = beam_search(decoder.eval(), feats, args.beam, args.max_len or
                           profile.decode_max_len, vocab=vocab,
                           length_penalty=args.length_penalty)
    for name, image, caption in zip(args.images, images, captions, strict=True):
        print(f"{name}: {' '.join(caption.words)}")
        if args.plot:
            from .viz import plot_attention

            out = Path(args.plot)
            if len(images) > 1:
                out = out.with_name(f"{out.stem}_{Path(name).stem}{out.suffix}")
            shown = model_view(image, profile.resize)  # the part the model attended over
            plot_attention(shown, caption.words, caption.alphas).savefig(out, dpi=100)
            print(f"  attention figure: {out}")
    return 0


def _mismatch(path: Path, vocab, decoder, encoder, profile) -> str | None:
    """What does not fit between a checkpoint's decoder, its vocabulary and its encoder."""
    if len(vocab) != decoder.config["vocab_size"]:
        return (f"the vocabulary has {len(vocab)} entries but the model in {path} predicts "
                f"{decoder.config['vocab_size']} words: use the vocabulary the model was trained "
                "with (the one stored in its checkpoint)")
    if encoder.channels != decoder.config["enc_dim"]:
        return (f"the checkpoint's encoder {profile.encoder} gives {encoder.channels}-d "
                f"annotations but its decoder expects {decoder.config['enc_dim']}")
    return None


def _evaluate(args: argparse.Namespace) -> int:
    """Caption a split with a checkpoint; print the first rows and the corpus metrics."""
    import pandas as pd

    from .checkpoint import run_dir
    from .evaluate import TABLE_COLUMNS, evaluate

    if args.beam < 1:
        return _fail("evaluate", f"--beam must be at least 1, got {args.beam}")
    if args.checkpoint and args.set:
        return _fail("evaluate", "--set picks the default checkpoint (of a variant); a "
                     "--checkpoint's own stored profile picks the data: give one or the other")
    try:
        path = Path(args.checkpoint or run_dir(_profile(args), args.attention) / "best.pt")
        table, metrics = evaluate(path, args.split, args.beam, device=args.device,
                                  meteor=args.meteor)
    except (OSError, ValueError) as err:  # unloadable checkpoint, mismatched data: say which
        return _fail("evaluate", str(err))
    with pd.option_context("display.max_colwidth", 70, "display.width", 160):
        print(table[[c for c in TABLE_COLUMNS if c in table]].head(args.rows).to_string())
    print(f"\n{args.split} split, beam {args.beam}, {path}:")
    values = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(pd.Series(values, name="value", dtype=object).to_frame().to_string())
    return 0


def _course(args: argparse.Namespace) -> int:
    """Run every notebook in order and write build/course-results.json."""
    from .course import run_course

    ok = run_course(Path(args.notebooks), Path(args.out), args.profile)
    return 0 if ok else 1


def _add_caption(sub) -> None:
    """`sat caption`: caption image files with a trained checkpoint."""
    p = sub.add_parser("caption", help="caption image files with a trained checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint to use (default: the profile's runs/<profile>-soft/best.pt)")
    p.add_argument("--profile", default=None, help="profile of the default checkpoint")
    p.add_argument("--vocab", default=None, help="vocabulary JSON (default: the checkpoint's)")
    p.add_argument("--beam", type=int, default=5, help="beam size (1 = greedy)")
    p.add_argument("--max-len", type=int, default=None,
                   help="words per caption at most, <end> on top (default: the profile's)")
    p.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha, 0 = none")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also save the attention figure (one file per image)")
    p.set_defaults(func=_caption)


def _add_evaluate(sub) -> None:
    """`sat evaluate`: caption a split with a checkpoint and score it."""
    p = sub.add_parser("evaluate", help="caption a split with a checkpoint and score it")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint to evaluate (default: runs/<profile>-<attention>/best.pt); "
                        "its stored profile picks the data")
    p.add_argument("--profile", default=None, help="profile of the default checkpoint")
    p.add_argument("--attention", default="soft", choices=["soft", "hard"],
                   help="run of the default checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy)")
    p.add_argument("--rows", type=int, default=10, help="per-image rows to print")
    p.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=True,
                   help="METEOR (a Java start of tens of seconds); --no-meteor skips it")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if any)")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="fields of the default checkpoint's profile variant, as `sat train "
                        "--set` made it")
    p.set_defaults(func=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="sat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate/download and prepare the profile's dataset")
    p.add_argument("--profile", default=None, help="profile name (default: $SAT_PROFILE or "
                   "shapes; custom with --captions)")
    p.add_argument("--captions", default=None, metavar="FILE",
                   help="your own CSV or TSV of (image file, caption) rows")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="the folder the image files of --captions are in")
    p.add_argument("--seed", type=int, default=0, help="seed of the --captions split")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help=SET_HELP)
    p.set_defaults(func=_data)

    p = sub.add_parser("train", help="train the profile's decoder (resumes; works under torchrun)")
    p.add_argument("--profile", default=None, help="profile name (default: $SAT_PROFILE or shapes)")
    p.add_argument("--attention", default="soft", choices=["soft", "hard"])
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from a matching last.pt (default); --no-resume starts afresh")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help=SET_HELP)
    p.set_defaults(func=_train)

    _add_caption(sub)
    _add_evaluate(sub)

    p = sub.add_parser("course", help="run every notebook in order (make course)")
    p.add_argument("--profile", default=None)
    p.add_argument("--notebooks", default=str(CHECKOUT / "notebooks"))
    p.add_argument("--out", default="build")
    p.set_defaults(func=_course)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sat` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
