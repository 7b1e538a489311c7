"""Every course notebook is stored clean and opens the way the course promises."""

import json
import re
from pathlib import Path

import pytest

from sat_helpers.config import GITHUB_REPO

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


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
    assert "pip install" in guard.group(1) and f"github.com/{GITHUB_REPO}" in guard.group(1), \
        f"{path.name}: on Colab the setup must pip install the course from {GITHUB_REPO}"
    assert "pip install" not in text.replace(guard.group(0), ""), \
        f"{path.name}: installs must stay inside the Colab guard"
    assert "import sys" in text and re.search(r"profile = get_profile\(\)", text), \
        f"{path.name}: the setup cell must read the profile with get_profile()"
