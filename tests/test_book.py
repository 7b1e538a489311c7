"""make book's pages: Colab links of both editions, widgets as static HTML, figures sized for
the page, a landing page and footer from the run's results, and nothing fetched from the network.

The site itself, opened in headless Chromium, is tests/test_book_browser.py.
"""

import base64
import io
import json
import subprocess

import nbformat
import pytest
from PIL import Image

from book import pages
from book.build import remote_assets, stage
from book.landing import Chapter, footer, landing_page
from book.pages import FIGURE_WIDTH, chapter, fit_png, title_and_summary
from book.widgets import STATE, VIEW
from sat_helpers.config import GITHUB_REPO
from sat_helpers.course import git_commit
from sat_helpers.editions import COLAB

NAME = "03_attention.ipynb"
TITLE = ("# 03 · Attention, derived\n\n"
         f"[Open in Colab]({COLAB.format(folder='notebooks', name=NAME)})\n\n"
         "**You will learn** why one vector is\nnot enough.\n**Time**: a minute.")


def png(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def model(name: str, **state) -> dict:
    return {"model_name": name + "Model", "state": state}


def widget_notebook() -> dict:
    """A notebook with a tqdm bar, an explorer (dropdown, slider, picture) and a closed widget."""
    models = {
        "bar": model("HBox", children=["IPY_MODEL_t", "IPY_MODEL_p"]),
        "t": model("HTML", value="Encoding train: 100%"),
        "p": model("FloatProgress", value=36.0, max=36.0),
        "ui": model("VBox", children=["IPY_MODEL_dd", "IPY_MODEL_sl", "IPY_MODEL_img"]),
        "dd": model("Dropdown", description="image", _options_labels=["test 0", "test 1"],
                    index=1),
        "sl": model("IntSlider", description="word", min=0, max=9, value=2),
        "img": {**model("Image", format="png", width="320"),
                "buffers": [{"path": ["value"], "data": png(4, 4), "encoding": "base64"}]},
    }

    def view(mid: str) -> dict:
        return nbformat.v4.new_output("display_data", data={
            VIEW: {"model_id": mid, "version_major": 2, "version_minor": 0},
            "text/plain": f"widget {mid}"})

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(TITLE),
        nbformat.v4.new_code_cell("x", outputs=[view("bar"), view("ui"), view("closed")]),
        nbformat.v4.new_code_cell("plot", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": png(2 * FIGURE_WIDTH, 300), "text/plain": "F"})]),
    ])
    nb.metadata["widgets"] = {STATE: {"state": models, "version_major": 2, "version_minor": 0}}
    return json.loads(json.dumps(nb))


def test_chapter_links_both_editions_in_place_of_the_teacher_link():
    page = chapter(widget_notebook(), NAME)
    title = page["cells"][0]["source"]
    for folder in ("notebooks", "student"):
        assert f"({COLAB.format(folder=folder, name=NAME)})" in title
    assert "[Open in Colab](" not in title


def test_chapter_without_its_colab_link_names_the_notebook():
    nb = widget_notebook()
    nb["cells"][0]["source"] = "# 03 · Attention"
    with pytest.raises(ValueError, match="03_attention.ipynb: the title cell has no Colab link"):
        chapter(nb, NAME)


def test_widgets_become_static_html_and_no_widget_state_is_left():
    nb = widget_notebook()
    page = chapter(nb, NAME)
    outputs = page["cells"][1]["outputs"]
    assert len(outputs) == 2, "the closed widget (no saved state) is dropped"
    assert all(VIEW not in out["data"] for out in outputs)
    bar, explorer = (out["data"]["text/html"] for out in outputs)
    assert "Encoding train: 100%" in bar and "<progress value='36.0' max='36.0'>" in bar
    assert "run it" not in bar.lower() and "Interactive explorer" in explorer
    assert "<option>test 1</option>" in explorer and "value='2'" in explorer
    assert "src='data:image/png;base64," in explorer and "width='320'" in explorer
    assert STATE not in page["metadata"]["widgets"], "widget state would pull in widget scripts"
    assert STATE in nb["metadata"]["widgets"], "the executed notebook itself is left unchanged"


def test_figures_wider_than_the_page_are_scaled_down():
    page = chapter(widget_notebook(), NAME)
    data = page["cells"][2]["outputs"][0]["data"]["image/png"]
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (FIGURE_WIDTH, 150)
    small = png(300, 200)
    assert fit_png(small) == small


@pytest.mark.parametrize("alpha, mode", [(255, "RGB"), (128, "RGBA")])
def test_scaled_figures_drop_an_alpha_channel_only_when_it_is_opaque(alpha, mode):
    out = io.BytesIO()
    Image.new("RGBA", (2 * FIGURE_WIDTH, 100), (200, 30, 30, alpha)).save(out, "PNG")
    scaled = fit_png(base64.b64encode(out.getvalue()).decode("ascii"))
    assert Image.open(io.BytesIO(base64.b64decode(scaled))).mode == mode


def test_title_and_summary_read_the_title_cell():
    assert title_and_summary(widget_notebook()) == ("03 · Attention, derived",
                                                    "why one vector is not enough.")


SUMMARY = {"profile": "quick", "total_minutes": 1.5, "commit": "0123456789abcdef+",
           "finished": "2031-04-05 06:07 UTC",
           "notebooks": [{"notebook": NAME, "status": "ok", "minutes": 0.25, "warnings": 0}],
           "results": {"03_attention": {"hoisting_speedup": 6.7412}, "99_other": {"n": 3}}}


def test_landing_page_maps_the_course_and_shows_the_results():
    text = landing_page(SUMMARY, [Chapter(NAME, "03 · Attention, derived", "why.")])
    assert "### [03 · Attention, derived](notebooks/03_attention.ipynb)" in text
    for folder in ("notebooks", "student"):
        assert COLAB.format(folder=folder, name=NAME) in text
    assert "make course" in text and "make test" in text
    assert "| hoisting_speedup | 6.74 |" in text and "### 99_other" in text
    assert "`quick` profile, the CI scale" in text
    assert "```{toctree}" in text and "\nnotebooks/03_attention\n" in text


def test_footer_names_the_commit_and_date_of_the_run():
    text = footer(SUMMARY)
    assert f"https://github.com/{GITHUB_REPO}/commit/0123456789abcdef'" in text
    assert "with uncommitted changes" in text and "2031-04-05 06:07 UTC" in text
    assert "with uncommitted" not in footer({**SUMMARY, "commit": "0123456789abcdef"})
    assert "did not record" in footer({"profile": "quick"})


def test_stage_says_to_run_the_course_when_nothing_ran(tmp_path):
    with pytest.raises(FileNotFoundError, match="make course"):
        stage(tmp_path, tmp_path / "src")


def test_remote_assets_finds_scripts_styles_and_fonts_but_not_links(tmp_path):
    (tmp_path / "a.html").write_text(
        '<script src="https://cdn.example/x.js"></script><link rel="stylesheet" '
        'href="//cdn.example/y.css"><a href="https://colab.research.google.com/x">Colab</a>'
        '<script src="_static/z.js"></script>')
    (tmp_path / "b.css").write_text("@font-face{src:url('https://fonts.example/f.woff')}")
    assert sorted(remote_assets(tmp_path)) == ["a.html: //cdn.example/y.css",
                                               "a.html: https://cdn.example/x.js",
                                               "b.css: https://fonts.example/f.woff"]


def test_git_commit_marks_uncommitted_changes(tmp_path):
    assert git_commit(tmp_path) is None

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@t", *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == head + "+"


def test_links_to_repository_files_point_at_github():
    """A notebook's link to docs/ or benchmarks/ leaves the book's pages: it goes to GitHub;
    links between notebooks and to the web stay as they are."""
    text = ("[d](../docs/departures.md), [s](../benchmarks/results/search.md#top), "
            "[n](03_attention.ipynb#Notation), [w](https://example.org/a.md)")
    assert pages.repo_links(text) == (
        f"[d]({pages.REPO_FILES}docs/departures.md), "
        f"[s]({pages.REPO_FILES}benchmarks/results/search.md#top), "
        "[n](03_attention.ipynb#Notation), [w](https://example.org/a.md)")
    assert pages.REPO_FILES.startswith(f"https://github.com/{GITHUB_REPO}/")
