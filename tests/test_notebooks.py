"""Every course notebook is stored clean and opens the way the course promises."""

import json
import os
import re
from pathlib import Path

import pytest

from sat_helpers.config import COURSE_RELEASE, GITHUB_REPO

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
    names = [nb.name for nb in NOTEBOOKS]
    assert all(re.match(r"\d\d_[a-z0-9_]+\.ipynb$", n) for n in names), names


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request):
    path = request.param
    return path, json.loads(path.read_text(encoding="utf-8"))


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_stored_without_outputs(notebook):
    path, nb = notebook
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i}: execution count"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} stores widget state"


def test_title_cell_links_to_itself_on_colab(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be Markdown"
    text = source(first)
    number = path.name[:2]
    assert re.match(rf"# {number} · \S", text), f"{path.name}: first line '# {number} · Title'"
    link = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/notebooks/{path.name}"
    assert f"]({link})" in text, f"{path.name}: no 'Open in Colab' link to {link}"
    for part in ("**You will learn**", "**Time**", "**Needs**"):
        assert part in text, f"{path.name}: the title cell lacks {part}"


def test_second_cell_is_the_guarded_setup(notebook):
    path, nb = notebook
    second = nb["cells"][1]
    assert second["cell_type"] == "code", f"{path.name}: the second cell must be the setup code"
    text = source(second)
    guard = re.search(r'^if "google\.colab" in sys\.modules:.*\n((?:    .*\n?)+)', text, re.M)
    assert guard, f'{path.name}: the setup cell needs `if "google.colab" in sys.modules:`'
    pinned = f'git+https://github.com/{GITHUB_REPO}@{COURSE_RELEASE}"'
    assert "pip install" in guard.group(1) and pinned in guard.group(1), \
        f"{path.name}: on Colab the setup must pip install the release {pinned[:-1]}"
    assert len(re.findall(r"github\.com/", text)) == 1, f"{path.name}: one install, the release"
    outside = text.replace(guard.group(0), "")
    assert "pip install" not in outside and "apt-get" not in outside, \
        f"{path.name}: installs must stay inside the Colab guard"
    assert "import sys" in text and re.search(r"profile = get_profile\(\)", text), \
        f"{path.name}: the setup cell must read the profile with get_profile()"


def test_setup_cells_are_the_same_everywhere():
    cells = {path.name: source(json.loads(path.read_text(encoding="utf-8"))["cells"][1])
             for path in NOTEBOOKS}
    first = cells[NOTEBOOKS[0].name]
    differ = [name for name, text in cells.items() if text != first]
    assert not differ, f"setup cells of {differ} differ from {NOTEBOOKS[0].name}'s: make them equal"


def test_release_is_the_package_version():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and f"v{version.group(1)}" == COURSE_RELEASE, \
        f"pyproject.toml's version {version and version.group(1)} is not COURSE_RELEASE's"


class FakeColab:
    """Stands in for get_ipython() and google.colab.drive: records what the setup cell runs."""

    def __init__(self):
        self.magics, self.shell, self.mounted = [], [], []

    def run_line_magic(self, name, line):
        self.magics.append(f"{name} {line}")

    def system(self, command):
        self.shell.append(command)

    def mount(self, where):
        self.mounted.append(where)


@pytest.mark.parametrize("use_drive, java", [(False, "/usr/bin/java"), (True, None)])
def test_setup_cell_on_colab(monkeypatch, use_drive, java):
    """Run cell 1 as Colab would: install the release, Java if missing, mount Drive if asked."""
    import shutil
    import sys
    import types

    from IPython.core.inputtransformer2 import TransformerManager

    text = source(json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))["cells"][1])
    assert "USE_DRIVE = False" in text, "the Drive option must be there, off by default"
    code = TransformerManager().transform_cell(
        text.replace("USE_DRIVE = False", f"USE_DRIVE = {use_drive}"))
    colab = FakeColab()
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    google.colab.drive = colab
    for name, module in {"google": google, "google.colab": google.colab,
                         "google.colab.drive": colab}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("SAT_DATA", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: java if name == "java" else None)
    namespace = {"get_ipython": lambda: colab}
    exec(code, namespace)
    assert colab.magics == [f'pip install -q "show-attend-tell-course[coco] @ '
                            f'git+https://github.com/{GITHUB_REPO}@{COURSE_RELEASE}"']
    java_installs = [c for c in colab.shell if "apt-get" in c and "openjdk-17-jre-headless" in c]
    assert len(java_installs) == (0 if java else 1) == len(colab.shell), colab.shell
    assert colab.mounted == (["/content/drive"] if use_drive else [])
    expected = "/content/drive/MyDrive/sat-course" if use_drive else None
    assert os.environ.get("SAT_DATA") == expected
    assert namespace["profile"].name == os.environ.get("SAT_PROFILE", "shapes")
