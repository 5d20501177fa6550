"""The built site as a reader sees it: headless Chromium opens the index and the model pages.

The quick build of ``tests/test_docs.py`` (one per session) is served from a local HTTP server
on 127.0.0.1 and loaded in Chromium through Selenium. Skipped, with the reason, when Chromium,
chromedriver or Selenium is missing; CI installs Debian's ``chromium`` and ``chromium-driver``
and Selenium comes with the docs extra. Screenshots of every page checked are saved under the
test's temporary directory, or under ``$ZOO_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

import zoo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # builds the docs (every gallery page trains its model)
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium chromium-driver)"
    ),
    pytest.mark.skipif(
        CHROMEDRIVER is None, reason="no chromedriver on PATH (apt-get install chromium-driver)"
    ),
]
webdriver = pytest.importorskip(
    "selenium.webdriver", reason='selenium is not installed (pip install ".[docs]")'
)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_docs import build_docs_quick, page_stem  # noqa: E402  (one build per session)

PAGE_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The quick build served on a free port of 127.0.0.1; yields the base URL."""
    build = build_docs_quick(tmp_path_factory)
    if build.returncode != 0 or not (build.html / "index.html").is_file():
        pytest.fail("the docs did not build: see tests/test_docs.py")
    handler = functools.partial(_QuietHandler, directory=str(build.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with everything that would reach the network turned off."""
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("ZOO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("screenshots")


def _open(browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def _full_page_screenshot(browser, path: Path) -> None:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 800), 12000))
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 1600)


#: every <img> of the article that has finished loading with real pixels, and those that have not
_IMAGES_JS = """
const imgs = Array.from(document.querySelectorAll('article img'));
return imgs.map(img => [img.getAttribute('src'), img.complete, img.naturalWidth]);
"""


def test_index_shows_the_applications_table_and_renders_the_maths(browser, site, screenshots):
    _open(browser, f"{site}/index.html")
    assert "ELBO Zoo" in browser.title
    table = browser.find_element(By.ID, "applications-table")
    headers = [th.text.strip() for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers[:6] == ["application", "x", "z", "θ (model)", "φ (guide)", "what is exact"]
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert rows and rows[0].text.startswith("EM for Gaussian mixtures")
    assert table.is_displayed() and table.size["height"] > 100
    # the registry's table of models links every model's gallery page
    models = browser.find_element(By.ID, "models-table")
    links = [a.get_attribute("href") for a in models.find_elements(By.CSS_SELECTOR, "a")]
    for model in zoo.model_names():
        assert any(f"/auto_examples/{page_stem(model)}.html" in href for href in links), model
    # MathJax (served with the site, no network) typesets the decompositions
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: d.execute_script("return document.querySelectorAll('mjx-container').length") > 3
    )
    _full_page_screenshot(browser, screenshots / "index.png")


@pytest.mark.parametrize("model", zoo.model_names())
def test_model_page_shows_its_figures(browser, site, screenshots, model: str):
    stem = page_stem(model)
    _open(browser, f"{site}/auto_examples/{stem}.html")
    assert browser.find_element(By.CSS_SELECTOR, "article h1").text.strip()
    images = browser.execute_script(_IMAGES_JS)
    figures = [(src, done, width) for src, done, width in images if f"sphx_glr_{stem}_" in src]
    assert len(figures) >= 3, f"{model}: {len(figures)} figures on the page: {images}"
    broken = [src for src, done, width in figures if not done or width == 0]
    assert not broken, f"{model}: figures that did not load: {broken}"
    text = browser.find_element(By.CSS_SELECTOR, "article").text
    assert "ELBO" in text
    if zoo.get_model(model).has_exact_evidence():
        assert "exact log evidence" in text and "gap" in text
    _full_page_screenshot(browser, screenshots / f"{stem}.png")


def test_leaderboard_page_shows_the_table_and_its_figure(browser, site, screenshots):
    _open(browser, f"{site}/auto_examples/leaderboard/plot_leaderboard.html")
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "article table td")]
    for model in zoo.model_names():
        assert model in cells, f"{model} is missing from the leaderboard table"
    images = browser.execute_script(_IMAGES_JS)
    figures = [i for i in images if "sphx_glr_plot_leaderboard_" in i[0]]
    assert figures and all(done and width > 0 for _, done, width in figures), images
    _full_page_screenshot(browser, screenshots / "plot_leaderboard.png")
