"""The two editions: notebooks/ holds checked exercises with solutions, student/ the same without.

The student edition is generated (``make student``); these tests fail when it is out of sync,
when a solution leaks into it, or when anything but its exercises fails to run.
"""

import copy
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from sat_helpers import check
from sat_helpers.editions import CODE_STUB, COLAB, is_check, is_exercise, student_text

ROOT = Path(__file__).resolve().parent.parent
TEACHER = sorted((ROOT / "notebooks").glob("*.ipynb"))
STUDENT = ROOT / "student"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"])


def exercises(nb: dict) -> list[tuple[int, dict, dict]]:
    """(index, solution cell, check cell) of every exercise."""
    cells = nb["cells"]
    return [(i, c, cells[i + 1]) for i, c in enumerate(cells) if is_exercise(c)]


def solution_lines(cell: dict) -> list[str]:
    text = source(cell)
    region = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    return [line.strip() for line in region.splitlines() if line.strip()]


@pytest.fixture(params=TEACHER, ids=lambda p: p.name)
def teacher(request):
    return request.param, load(request.param)


def is_appendix(path: Path) -> bool:
    """An appendix notebook (NN_appendix_name.ipynb) holds a lesson's second idea: no exercises."""
    return "_appendix_" in path.name


def test_every_notebook_has_two_to_four_checked_exercises(teacher):
    path, nb = teacher
    found = exercises(nb)
    if is_appendix(path):
        assert not found, f"{path.name}: an appendix holds no exercises; move them to a lesson"
        return
    assert 2 <= len(found) <= 4, f"{path.name}: {len(found)} exercises; the course asks 2 to 4"
    for i, solution, check_cell in found:
        task = nb["cells"][i - 1]
        assert task["cell_type"] == "markdown" and source(task).startswith("**Exercise"), \
            f"{path.name} cell {i}: an exercise starts with a Markdown task '**Exercise …'"
        text = source(solution)
        assert text.count(BEGIN) == 1 and text.count(END) == 1 and solution_lines(solution), \
            f"{path.name} cell {i}: one solution between {BEGIN} and {END}"
        function = re.search(r"^def (\w+)\(", text, re.M).group(1)
        call = re.search(r"check\.(\w+)\((\w+)\)", source(check_cell))
        assert is_check(check_cell) and call, \
            f"{path.name} cell {i + 1}: the cell after an exercise is its check, check.<name>(fn)"
        name, argument = call.groups()
        assert hasattr(check, name) and argument == function, \
            f"{path.name} cell {i + 1}: check.{name}({argument}) must check {function}"


@pytest.mark.parametrize("path", TEACHER, ids=lambda p: p.name)
def test_student_edition_is_in_sync(path):
    target = STUDENT / path.name
    assert target.exists(), f"student/{path.name} is missing: run `make student`"
    assert target.read_text(encoding="utf-8") == student_text(path), \
        f"student/{path.name} is out of sync with notebooks/{path.name}: run `make student`"


def test_student_edition_has_only_the_course_notebooks():
    assert sorted(p.name for p in STUDENT.glob("*.ipynb")) == [p.name for p in TEACHER], \
        "student/ and notebooks/ hold different notebooks: run `make student`"


def test_student_edition_holds_no_solution(teacher):
    path, nb = teacher
    student = load(STUDENT / path.name)
    assert len(student["cells"]) == len(nb["cells"])
    for (i, solution, _), (_, stub, _) in zip(exercises(nb), exercises(student), strict=True):
        text = source(stub)
        assert BEGIN not in text and CODE_STUB.splitlines()[-1] in text, \
            f"student/{path.name} cell {i}: the solution must be replaced by the stub"
        stub_lines = {line.strip() for line in text.splitlines()}
        leaked = [line for line in solution_lines(solution) if line in stub_lines]
        assert not leaked, f"student/{path.name} cell {i} shows solution lines {leaked}"
    others = [(c, s) for c, s in zip(nb["cells"], student["cells"], strict=True)
              if not is_exercise(c)][1:]
    assert all(c == s for c, s in others), "only the title and the exercise cells may differ"


def test_student_title_cell_links_itself_and_explains_the_checks(teacher):
    path, _ = teacher
    title = source(load(STUDENT / path.name)["cells"][0])
    link = COLAB.format(folder="student", name=path.name)
    assert f"]({link})" in title, f"student/{path.name}: no Colab link to {link}"
    assert "/notebooks/" not in title, f"student/{path.name} links to the teacher edition"
    if is_appendix(path):
        assert "ExerciseError" not in title, f"student/{path.name}: no exercises to explain"
        return
    assert "check" in title and "ExerciseError" in title and "NotImplementedError" in title
    assert "not written yet" in title and "nbgrader" in title


def errors_by_cell(nb) -> dict[int, list[str]]:
    """Executed notebook -> {cell index: the names of the errors it raised}."""
    return {i: [o["ename"] for o in cell.get("outputs", []) if o["output_type"] == "error"]
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}


def execute(nb, cwd: Path):
    client = NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


@pytest.mark.parametrize("path", TEACHER, ids=lambda p: p.name)
def test_student_edition_runs_to_the_end_unsolved(path, monkeypatch):
    """"Run all" on the quick profile: no cell may fail; each check says "not written yet"."""
    monkeypatch.setenv("SAT_PROFILE", "quick")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    nb = execute(nbformat.read(STUDENT / path.name, as_version=4), STUDENT)
    errors = {i: e for i, e in errors_by_cell(nb).items() if e}
    assert not errors, f"student/{path.name}: cells raised {errors}"
    for i, cell in enumerate(nb.cells):
        if is_check(cell):
            printed = "".join(o.get("text", "") for o in cell.outputs)
            assert "not written yet" in printed, f"student/{path.name} cell {i}: {printed!r}"


def test_a_wrong_answer_in_a_notebook_gets_a_message_that_names_it():
    """Plant `>` for `>=` in notebook 01's vocabulary exercise; run its two cells."""
    nb = load(TEACHER[0])
    _, solution, check_cell = exercises(nb)[0]
    wrong = copy.deepcopy(solution)
    text = source(wrong)
    assert "c >= min_freq" in text
    wrong["source"] = text.replace("c >= min_freq", "c > min_freq")
    cells = [nbformat.from_dict(c) for c in (wrong, copy.deepcopy(check_cell))]
    for c in cells:
        c.source = source(c) if isinstance(c.source, list) else c.source
    run = execute(nbformat.v4.new_notebook(cells=cells, metadata=nb["metadata"]), ROOT)
    error = next(o for o in run.cells[1].outputs if o["output_type"] == "error")
    assert error["ename"] == "ExerciseError"
    assert "drops" in error["evalue"] and "exactly min_freq times" in error["evalue"], error
    shown = "\n".join(error["traceback"])
    assert shown.startswith("ExerciseError: vocabulary:") and "sat_helpers" not in shown, shown
