"""Notebook 05's attention explorer in a real browser: JupyterLab, headless Chromium, selenium.

`make test-browser` runs it (it installs JupyterLab, selenium and Debian's chromium); elsewhere
it is skipped. Every control is driven as a learner would, and each step's screenshot is saved
in build/browser/.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "browser"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--window-size=1400,1000")
# The OS file dialog cannot be driven: FileUpload's click() on its (detached) file input puts
# the input into the page instead, where selenium hands it a file as a learner's dialog would.
EXPOSE_FILE_INPUT = """
const click = HTMLInputElement.prototype.click;
HTMLInputElement.prototype.click = function () {
  if (this.type !== "file") { return click.call(this); }
  this.id = "sat-upload";
  document.body.appendChild(this);
};
"""

pytestmark = pytest.mark.skipif(not os.environ.get("SAT_BROWSER"),
                                reason="make test-browser runs it (JupyterLab and Chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 over a copy of notebook 05 (so nothing is saved into notebooks/)."""
    shutil.copy(ROOT / "notebooks" / "05_search.ipynb", tmp_path)
    port, token = free_port(), secrets.token_hex(8)
    env = {**os.environ, "SAT_PROFILE": "quick", "OMP_NUM_THREADS": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
               "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={tmp_path}"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log_path = tmp_path / "jupyterlab.log"
    log = log_path.open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert server.poll() is None, log_path.read_text()
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer in 2 min:\n" + log_path.read_text())
        yield f"{url}/lab/tree/05_search.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def red_circle(path: Path) -> Path:
    """A drawing of a red circle, as the notebook suggests a learner uploads."""
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((50, 50, 170, 170), fill=(220, 20, 20))
    image.save(path)
    return path


def test_explorer_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(lab)
    wait = WebDriverWait(browser, 180)
    wait.until(lambda b: b.find_elements(By.XPATH, "//*[contains(text(), '| Idle')]"))
    next(e for e in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
         if e.text == "Run").click()
    browser.find_element(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']").click()
    WebDriverWait(browser, 900).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "img.widget-image"))
    for no in browser.find_elements(By.XPATH, "//button[normalize-space()='No']"):
        no.click()  # JupyterLab's "notified about news?" toast would cover the output
    ui = browser.find_element(
        By.XPATH, "//img[contains(@class, 'widget-image')]/ancestor::div[contains(@class, "
                  "'widget-vbox')][1]")
    picture = ui.find_element(By.CSS_SELECTOR, "img.widget-image")
    caption = ui.find_elements(By.CSS_SELECTOR, ".widget-html-content")[0]
    choose = Select(ui.find_element(By.TAG_NAME, "select"))
    beam, word = ui.find_elements(By.CSS_SELECTOR, ".widget-slider")
    wait.until(lambda b: "log p" in caption.text)
    browser.execute_script("arguments[0].scrollIntoView()", ui)

    def state():
        return picture.get_attribute("src"), caption.get_attribute("innerHTML")

    def after(step, action, picture_changes=True):
        """Do `action`; wait until the caption (and the picture) changed; save a screenshot."""
        src, html = state()
        action()
        wait.until(lambda b: state()[1] != html and (state()[0] != src or not picture_changes))
        time.sleep(0.5)  # the new picture's blob has to load before the screenshot
        ui.screenshot(str(SHOTS / f"{step}.png"))

    ui.screenshot(str(SHOTS / "1_explorer.png"))
    size = browser.execute_script(
        "return [arguments[0].getBoundingClientRect().width, arguments[0].naturalWidth]", picture)
    assert size == [320, 320], f"picture drawn 320 px wide, shown (width, drawn) = {size}"

    after("2_other_image", lambda: choose.select_by_value("test 1"))
    assert choose.first_selected_option.get_attribute("value") == "test 1"

    def slide(slider, key, times):
        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        for _ in range(times):
            handle.send_keys(key)

    after("3_word_slider", lambda: slide(word, Keys.ARROW_RIGHT, 2))
    assert word.find_element(By.CSS_SELECTOR, ".widget-readout").text == "2"
    assert caption.find_element(By.TAG_NAME, "u").text == caption.text.split()[2]

    # the same caption may come out at another beam size, and then the same picture
    after("4_beam_size", lambda: slide(beam, Keys.ARROW_LEFT, 2), picture_changes=False)
    assert beam.find_element(By.CSS_SELECTOR, ".widget-readout").text == "1"
    assert "beam 1," in caption.text

    def upload():
        browser.execute_script(EXPOSE_FILE_INPUT)
        ui.find_element(By.CSS_SELECTOR, ".widget-upload").click()
        browser.find_element(By.ID, "sat-upload").send_keys(
            str(red_circle(tmp_path / "red_circle.png")))

    after("5_uploaded_png", upload)
    assert choose.first_selected_option.get_attribute("value") == "red_circle.png"
    assert "(1)" in ui.find_element(By.CSS_SELECTOR, ".widget-upload").text
