"""make book's site in headless Chromium: every page's images load, its math is typeset by the
site's own MathJax, its local links resolve, its Colab links point at the configured repository,
nothing is missing from the site, and search works offline.

`make test-book` runs it after `sat course --out build/quick` (the `quick` profile's executed
notebooks); elsewhere it is skipped. The book is built from that run here (`build_book`, the
function `make book` calls) into build/quick/book/, and each page's screenshot is saved in
build/browser/.
"""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_browser import CHROMIUM_FLAGS

from book.build import build_book, folder_megabytes
from sat_helpers.editions import COLAB

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "build" / "quick"
SHOTS = ROOT / "build" / "browser"
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["index"] + [f"notebooks/{name.removesuffix('.ipynb')}" for name in NOTEBOOKS]
BOOK_MB = 30
"""The whole site stays under this many MB (issue 28: pages stay light)."""
COLAB_PREFIX = COLAB.split("{folder}")[0]

pytestmark = pytest.mark.skipif(not os.environ.get("SAT_BROWSER"),
                                reason="make test-book runs it (Sphinx and Chromium)")

# The text of the page without code, scripts and styles: where raw TeX would show if untypeset.
PROSE_JS = """
const body = document.querySelector('main') || document.body;
const copy = body.cloneNode(true);
copy.querySelectorAll('pre, code, script, style, .highlight').forEach(e => e.remove());
return copy.textContent;
"""
IMAGES_JS = ("return [...document.images].map(i => [i.src.slice(0, 80), i.complete, "
             "i.naturalWidth]);")
MATH_JS = """
const math = [...document.querySelectorAll('.math.notranslate')];  // Sphinx's, not MathJax's
return {math: math.length,
        untypeset: math.filter(m => !m.querySelector('.MathJax, .MathJax_Display')).length,
        display: document.querySelectorAll('.MathJax_Display').length,
        errors: document.querySelectorAll('.merror, .MathJax_Error').length};
"""
MATHJAX_DONE_JS = """
const [url, done] = arguments;
const deadline = Date.now() + 60000;
const typeset = () => (window.MathJax && MathJax.Hub && MathJax.Hub.Register)
    ? MathJax.Hub.Register.StartupHook('End', () => { MathJax.Hub.Queue(() => done('typeset')); })
    : Date.now() > deadline ? done('MathJax did not load') : setTimeout(typeset, 50);
const loaded = () => {
    if (location.href !== url || document.readyState !== 'complete') { setTimeout(loaded, 50); }
    else if (document.querySelector('script[src*="mathjax/MathJax.js"]')) { typeset(); }
    else { done('no MathJax'); }
};
loaded();
"""


@pytest.fixture(scope="module")
def site():
    """The book built from the `quick` run in build/quick (run here when it is missing)."""
    if not (RUN / "course-results.json").exists():
        subprocess.run([str(Path(sys.executable).parent / "sat"), "course", "--profile",
                        "quick", "--out", str(RUN)], check=True)
    seconds = build_book(RUN, RUN / "book")
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "book.json").write_text(json.dumps(
        {"seconds": round(seconds, 1), "megabytes": round(folder_megabytes(RUN / "book"), 1)}))
    return RUN / "book"


# Asked for without being needed: the browser's icon, and MathJax's TeX fonts, which
# jupyter-server-mathjax does not ship (the page uses STIX-Web), named by the styles of the
# hidden MathML copy that MathJax adds for screen readers.
UNNEEDED = re.compile(r"/favicon\.ico|/_static/mathjax/fonts/HTML-CSS/TeX/otf/MathJax_\w+-\w+\.otf")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the book; remembers every path it could not find."""

    missing: list[str] = []

    def send_error(self, code, message=None, explain=None):
        if code == 404 and not UNNEEDED.fullmatch(self.path):
            self.missing.append(self.path)
        super().send_error(code, message, explain)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
        options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


def open_page(browser, url: str) -> str:
    """Load `url`, wait for MathJax to finish; say whether the page had MathJax."""
    Handler.missing.clear()
    browser.get(url)
    return browser.execute_async_script(MATHJAX_DONE_JS, url)


def ids_of(url: str) -> set[str]:
    html = urllib.request.urlopen(url, timeout=10).read().decode("utf-8")
    return {urllib.parse.unquote(i) for i in re.findall(r'\bid="([^"]+)"', html)}


def broken_local_links(browser, base: str) -> list[str]:
    """Every link into the site whose page is missing or whose #anchor is not on it."""
    hrefs = browser.execute_script("return [...document.links].map(a => a.href);")
    broken, pages = [], {}
    for href in sorted({h for h in hrefs if h.startswith(base)}):
        page, _, anchor = href.partition("#")
        try:
            if page not in pages:
                pages[page] = ids_of(page) if page.endswith(".html") else (
                    urllib.request.urlopen(page, timeout=10).close() or set())
        except OSError as err:
            broken.append(f"{href}: {err}")
            continue
        if anchor and urllib.parse.unquote(anchor) not in pages[page]:
            broken.append(f"{href}: no element with that id")
    return broken


def executed(page: str) -> dict | None:
    """The executed notebook a chapter page shows (None for the landing page)."""
    path = RUN / (page + ".ipynb")
    return json.loads(path.read_text()) if page != "index" else None


def markdown_of(nb: dict) -> str:
    return "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def png_outputs(nb: dict) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb["cells"]
               for out in c.get("outputs", []))


def test_book_is_light(site):
    size = folder_megabytes(site)
    assert size < BOOK_MB, f"the book is {size:.1f} MB; figures should be PNGs sized for the page"


@pytest.mark.parametrize("page", PAGES)
def test_page(page, site, server, browser):
    from selenium.webdriver.common.by import By

    mathjax = open_page(browser, server + page + ".html")
    browser.save_screenshot(str(SHOTS / f"book_{page.replace('/', '_')}.png"))
    nb = executed(page)

    images = browser.execute_script(IMAGES_JS)
    assert all(done and width > 0 for _, done, width in images), images
    if nb is not None:
        assert len(images) >= png_outputs(nb), "a figure of the notebook is not on the page"

    math = browser.execute_script(MATH_JS)
    assert math["untypeset"] == 0 and math["errors"] == 0, (mathjax, math)
    prose = browser.execute_script(PROSE_JS)
    for raw in ("$$", "\\(", "\\["):
        assert raw not in prose, f"{page}: raw TeX {raw!r} left on the page"
    if nb is not None and "$$" in markdown_of(nb):
        assert mathjax == "typeset" and math["display"] > 0, math

    assert broken_local_links(browser, server) == []
    assert Handler.missing == [], f"{page} asked the site for files it lacks"

    colab = {a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")
             if "colab.research.google.com" in (a.get_attribute("href") or "")}
    expected = {COLAB.format(folder=folder, name=name) for folder in ("notebooks", "student")
                for name in (NOTEBOOKS if nb is None else [page.split("/")[1] + ".ipynb"])}
    assert expected <= colab, f"missing Colab links: {expected - colab}"
    assert all(href.startswith(COLAB_PREFIX) for href in colab), colab

    text = browser.find_element(By.TAG_NAME, "body").text
    assert "These pages show the run of" in text, "the footer with the run's commit is missing"
    if nb is not None:
        assert browser.find_elements(By.CSS_SELECTOR, ".prev-next-area a"), "no prev/next links"
        for widget in browser.find_elements(By.CSS_SELECTOR, ".sat-widget-note"):
            parent = widget.find_element(By.XPATH, "..")
            browser.execute_script("arguments[0].scrollIntoView()", parent)
            parent.screenshot(str(SHOTS / f"book_{page.split('/')[1]}_explorer.png"))


def test_search_works_offline(site, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server + "search.html?q=attention")
    WebDriverWait(browser, 60).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#search-results li"))
    browser.save_screenshot(str(SHOTS / "book_search.png"))
    assert Handler.missing == []
