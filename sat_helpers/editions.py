"""The student edition: notebooks/ with every exercise's solution replaced by a stub.

``notebooks/`` is the teacher edition: each exercise's solution sits between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` in a cell marked as an nbgrader solution
cell. nbgrader's ClearSolutions preprocessor (the ``teach`` extra) replaces each such region
by :data:`CODE_STUB`; the title cell then links to the student notebook's own Colab page and
says how the checks work. ``make student`` (``python -m sat_helpers.editions``) writes
``student/``; the same function regenerates it in memory for the test that keeps it in sync.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .config import GITHUB_REPO

CODE_STUB = "# YOUR CODE HERE (then run the check cell below)\nraise NotImplementedError()"
COLAB = "https://colab.research.google.com/github/" + GITHUB_REPO + "/blob/main/{folder}/{name}"
ROOT = Path(__file__).resolve().parent.parent
HOW_CHECKS_WORK = """

**Student edition.** This notebook has {n} exercises (look for **Exercise**). In each, write
your code where it says `# YOUR CODE HERE`, delete the `raise NotImplementedError()` line, run
the cell, then run the check cell under it. `check.<name>(your_function)` calls your function
on several small inputs and compares the results with the course package's own version, which
it blocks while yours runs (calling it is reported, not accepted): it prints ✓ when they
agree, or stops with an `ExerciseError` that names the mistake and the idea to revisit;
`check.hint("<name>")` then shows a code-level hint. An exercise you skip stops nothing: its
check says it is not written yet, and the cells after it use the package's version, so "Run
all" reaches the end. Graded with nbgrader, an exercise not written or wrong scores 0."""


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def is_exercise(cell: dict) -> bool:
    """An exercise's solution cell (nbgrader metadata ``solution: true``)."""
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def is_check(cell: dict) -> bool:
    """An exercise's check cell (nbgrader metadata ``grade: true``)."""
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("grade"))


def student_notebook(teacher: dict, name: str) -> dict:
    """The student edition of one teacher notebook (a dict in nbformat 4, sources as lines)."""
    import nbformat
    from nbgrader.preprocessors import ClearSolutions

    nb = copy.deepcopy(teacher)
    for cell in nb["cells"]:
        cell["source"] = _source(cell)
    node = nbformat.from_dict(nb)
    node, _ = ClearSolutions(code_stub={"python": CODE_STUB}).preprocess(node, {})
    out = json.loads(json.dumps(node))  # NotebookNode -> plain dicts, the teacher's key order
    title = out["cells"][0]
    teacher_link = COLAB.format(folder="notebooks", name=name)
    if teacher_link not in title["source"]:
        raise ValueError(f"notebooks/{name}: the title cell has no Colab link {teacher_link}")
    exercises = sum(is_exercise(c) for c in out["cells"])
    title["source"] = title["source"].replace(teacher_link, COLAB.format(folder="student",
                                                                         name=name))
    if exercises:  # an appendix notebook has none: nothing to explain
        title["source"] += HOW_CHECKS_WORK.format(n=exercises)
    for cell in out["cells"]:
        cell["source"] = _lines(cell["source"])
    return out


def student_text(teacher_path: Path) -> str:
    """The student notebook of ``teacher_path`` as the text ``make student`` writes."""
    teacher = json.loads(teacher_path.read_text(encoding="utf-8"))
    return json.dumps(student_notebook(teacher, teacher_path.name), indent=1,
                      ensure_ascii=False) + "\n"


def build(notebooks: Path = ROOT / "notebooks", student: Path = ROOT / "student") -> list[Path]:
    """Write student/ from notebooks/ (and remove student notebooks with no teacher)."""
    student.mkdir(exist_ok=True)
    teachers = sorted(notebooks.glob("*.ipynb"))
    written = []
    for path in teachers:
        target = student / path.name
        text = student_text(path)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        written.append(target)
    for stale in set(student.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written


def main() -> None:
    """``python -m sat_helpers.editions``: regenerate student/."""
    for path in build():
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
