"""`make book`: the executed notebooks of `make course` as a static website, built offline.

    python -m book.build [--executed build] [--out build/book]

reads `<executed>/notebooks/*.ipynb` and `<executed>/course-results.json`, stages the pages
(pages.py, landing.py) beside the output folder, and runs Sphinx (myst-nb, sphinx-book-theme;
settings in book/conf.py) on them. It never executes a notebook. MathJax comes from the pip
package jupyter-server-mathjax into the site itself, and the build fails if a page would load
a script, a style sheet or an image from the network.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .landing import Chapter, footer, landing_page
from .pages import chapter, title_and_summary

CONF_DIR = Path(__file__).resolve().parent
MATHJAX_SKIPPED = ("localization", "SVG", "a11y")
"""MathJax's translations, its SVG output and its accessibility explorer: the pages use none."""
REMOTE_TAG = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)""", re.I)
REMOTE_CSS = re.compile(r"""(?:url\(|@import\s+)["']?((?:https?:)?//[^"')\s]+)""", re.I)


def read_summary(executed: Path) -> dict:
    """The run's course-results.json; its file date stands in for a run that did not record it."""
    path = executed / "course-results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make course` (or `sat course --out "
                                f"{executed}`) first; the book shows what it ran")
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary.setdefault("finished", time.strftime("%Y-%m-%d %H:%M UTC",
                                                 time.gmtime(path.stat().st_mtime)))
    return summary


def stage(executed: Path, src: Path) -> tuple[list[Chapter], dict]:
    """Write the book's sources into `src`: index.md and one prepared notebook per chapter."""
    paths = sorted((executed / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no executed notebooks in {executed / 'notebooks'}: run "
                                "`make course` first; the book shows what it ran")
    summary = read_summary(executed)
    shutil.rmtree(src, ignore_errors=True)
    (src / "notebooks").mkdir(parents=True)
    chapters = []
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        chapters.append(Chapter(path.name, *title_and_summary(nb)))
        (src / "notebooks" / path.name).write_text(json.dumps(chapter(nb, path.name)),
                                                   encoding="utf-8")
    (src / "index.md").write_text(landing_page(summary, chapters), encoding="utf-8")
    return chapters, summary


def copy_mathjax(static: Path) -> None:
    """MathJax 2.7 from jupyter-server-mathjax into the site's _static/mathjax."""
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(source, static / "mathjax", dirs_exist_ok=True,
                    ignore=lambda _, names: [n for n in names if n in MATHJAX_SKIPPED])


def drop_source_maps(static: Path) -> None:
    """The theme's *.map files (source maps): only a browser's developer tools read them."""
    for path in static.rglob("*.map"):
        path.unlink()


def remote_assets(out: Path) -> list[str]:
    """Every script, style sheet, font or image the site would fetch from the network."""
    found = []
    for suffix, pattern in ((".html", REMOTE_TAG), (".css", REMOTE_CSS)):
        found += [f"{path.relative_to(out)}: {url}" for path in sorted(out.rglob("*" + suffix))
                  for url in pattern.findall(path.read_text(encoding="utf-8", errors="replace"))]
    return found


def build_book(executed: Path, out: Path) -> float:
    """Build the site into `out` from the run in `executed`; return the seconds it took."""
    from sphinx.cmd.build import build_main

    start = time.perf_counter()
    src = out.with_name(out.name + "-src")
    _, summary = stage(executed, src)
    shutil.rmtree(out, ignore_errors=True)
    args = ["-b", "html", "-q", "-E", "-c", str(CONF_DIR), "-d", str(src / ".doctrees"),
            "-D", f"html_theme_options.extra_footer={footer(summary)}", str(src), str(out)]
    if build_main(args) != 0:
        raise RuntimeError(f"Sphinx failed to build the book from {src}; its messages are above")
    copy_mathjax(out / "_static")
    drop_source_maps(out / "_static")
    remote = remote_assets(out)
    if remote:
        raise RuntimeError("pages that would load from the network (the book must work "
                           "offline):\n  " + "\n  ".join(remote))
    return time.perf_counter() - start


def folder_megabytes(folder: Path) -> float:
    """The size of everything under `folder`, in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.build", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--executed", default="build",
                        help="folder of `make course`'s output (notebooks/, course-results.json)")
    parser.add_argument("--out", default="build/book", help="where the site is written")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        seconds = build_book(Path(args.executed), out)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"make book: {err}", file=sys.stderr)
        return 1
    print(f"book: {out / 'index.html'} ({folder_megabytes(out):.1f} MB, built in "
          f"{seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
