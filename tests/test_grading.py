"""nbgrader's autograde scores the exercises: 0 unsolved, wrong or calling the package, full
points right. One real notebook (03, three exercises) goes through nbgrader itself:
``generate_assignment`` from the teacher edition, then ``autograde`` of three submissions."""

import json
import os
import subprocess
import sys
from pathlib import Path

from sat_helpers.editions import student_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "03_attention.ipynb"
WRONG = ("alpha = e.softmax(dim=1)                                                # (B, L)  eq. 5",
         "alpha = e.softmax(dim=0)                                                # (B, L)  eq. 5")
CHEAT = ("    real = torch.arange(alphas.shape[1]) < lengths[:, None]   # (B, T): real steps",
         "    return doubly_stochastic_penalty(alphas, lengths, lam)")


def planted(teacher: str) -> str:
    """The teacher's solutions with a wrong attention_step (softmax over the batch) and a
    penalty that calls the package's own function."""
    for old, new in (WRONG, CHEAT):
        assert old in teacher, f"notebooks/{NOTEBOOK} changed: update the planted answers"
        teacher = teacher.replace(old, new)
    return teacher


def scores(course: Path, student: str) -> dict[str, float]:
    """grade_id -> points of one autograded submission, read from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        notebook = gradebook.find_submission_notebook(NOTEBOOK[:-6], "ps", student)
        return {grade.name: grade.score for grade in notebook.grades}


def test_autograde_scores_unsolved_wrong_cheating_and_right(tmp_path, monkeypatch):
    course = tmp_path / "course"
    (course / "source" / "ps").mkdir(parents=True)
    teacher = (ROOT / "notebooks" / NOTEBOOK).read_text(encoding="utf-8")
    (course / "source" / "ps" / NOTEBOOK).write_text(teacher, encoding="utf-8")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'sat'\n"
        "c.Execute.timeout = 900\nc.Execute.allow_errors = True\n")
    submissions = {"unsolved": student_text(ROOT / "notebooks" / NOTEBOOK), "right": teacher,
                   "planted": planted(teacher)}
    for student, text in submissions.items():
        folder = course / "submitted" / student / "ps"
        folder.mkdir(parents=True)
        (folder / NOTEBOOK).write_text(text, encoding="utf-8")
    env = {**os.environ, "SAT_PROFILE": "quick", "SAT_DATA": os.environ.get(
        "SAT_DATA", str(ROOT / "data")), "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        # nbgrader runs `alembic` (its database migrations) from PATH: the venv's own
        "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ["PATH"]))}
    for command in (["generate_assignment", "ps"], ["autograde", "ps"]):
        run = subprocess.run([sys.executable, "-m", "nbgrader", *command, "--force"], cwd=course,
                             env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    checks = ["check_ex03_attention_step", "check_ex03_attention", "check_ex03_penalty"]
    assert scores(course, "unsolved") == dict.fromkeys(checks, 0.0)
    assert scores(course, "right") == dict.fromkeys(checks, 1.0)
    assert scores(course, "planted") == {"check_ex03_attention_step": 0.0,
                                         "check_ex03_attention": 1.0, "check_ex03_penalty": 0.0}
    graded = json.loads((course / "autograded" / "planted" / "ps" / NOTEBOOK).read_text())
    errors = {c["metadata"]["nbgrader"]["grade_id"]: o["evalue"] for c in graded["cells"]
              for o in c.get("outputs", []) if o["output_type"] == "error"
              and c["metadata"].get("nbgrader", {}).get("grade")}
    assert "over the batch" in errors["check_ex03_attention_step"]
    assert "called sat_helpers.attention.doubly_stochastic_penalty" in errors["check_ex03_penalty"]
