"""The `sat` command: sat data | train | caption | evaluate | course."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def _data(args: argparse.Namespace) -> int:
    """Build (or reuse) the profile's prepared dataset and print where it is."""
    from .config import get_profile
    from .data import ensure_dataset

    print(ensure_dataset(get_profile(args.profile)))
    return 0


def _course(args: argparse.Namespace) -> int:
    """Run every notebook in order and write build/course-results.json."""
    from .course import run_course

    ok = run_course(Path(args.notebooks), Path(args.out), args.profile)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="sat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate/download and prepare the profile's dataset")
    p.add_argument("--profile", default=None, help="profile name (default: $SAT_PROFILE or shapes)")
    p.set_defaults(func=_data)

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
