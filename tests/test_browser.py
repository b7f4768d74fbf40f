"""The feature browser and the report page in real headless Chromium (Debian's chromium +
chromium-driver, driven by Selenium with an explicit driver path so nothing is downloaded).

Set SAEKIT_SCREENSHOTS=<dir> to keep the screenshots."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from eval_helpers import corpus, evaluated_saes, trained_sae

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not Path(DRIVER).exists(),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="saekit-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from saekit.evaluation.evaluate import model_source
    from saekit.formats.native import load
    from saekit.viewer.build import BuildSettings, build
    from saekit.viewer.server import make_server, serve_in_thread

    sae_dir = trained_sae()
    sae = load(sae_dir)
    data = tmp_path_factory.mktemp("site") / "browser"
    build(
        sae,
        model_source(sae),
        data,
        BuildSettings(split="all", n_contexts=48, ctx_len=32),
        sae_path=sae_dir,
        corpus=corpus(),
    )
    server = make_server(data, port=0, sae_dir=sae_dir)
    serve_in_thread(server)
    yield server.url
    server.shutdown()
    server.server_close()


def shot(driver, tmp_path, name):
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    keep = os.environ.get("SAEKIT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def severe_console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, css, timeout=60):
    return WebDriverWait(driver, timeout).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_latent_list_page_and_navigation(browser, site, tmp_path):
    browser.get(site)
    wait(browser, "tr.latent-row")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.latent-row")
    assert len(rows) == 50  # first page of 128
    assert "128 latents" in browser.find_element(By.ID, "count").text
    assert "topk" in browser.find_element(By.ID, "sae-name").text
    shot(browser, tmp_path, "browser_list")
    # sort by max activation: the first row holds the largest value
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="max_act"]').click()
    WebDriverWait(browser, 30).until(lambda d: "sort=max_act" in d.current_url)
    wait(browser, "tr.latent-row")
    first_id = int(
        browser.find_elements(By.CSS_SELECTOR, "tr.latent-row")[0].get_attribute("data-id")
    )
    index = json.loads(
        browser.execute_async_script(
            "const done = arguments[0]; fetch('/api/latents?sort=max_act&per_page=1').then(r => r.text()).then(done);"
        )
    )
    assert first_id == index["rows"][0]["id"]
    # next page
    browser.find_element(By.ID, "next").click()
    WebDriverWait(browser, 30).until(lambda d: "page 2 of 3" in d.find_element(By.ID, "count").text)
    # search by id
    browser.get(site + "#/?q=17&sort=id")
    wait(browser, "tr.latent-row")
    ids = [
        r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr.latent-row")
    ]
    assert "17" in ids
    assert not severe_console_errors(browser)


def test_latent_page_shows_highlighted_contexts(browser, site, tmp_path):
    browser.get(site + "#/?sort=max_act")
    wait(browser, "tr.latent-row a").click()
    title = wait(browser, "#latent-title")
    assert title.text.startswith("Latent #")
    examples = browser.find_elements(By.CSS_SELECTOR, "#top-examples .example")
    assert examples
    centre = examples[0].find_element(By.CSS_SELECTOR, ".tok.center")
    assert "rgba(" in centre.value_of_css_property("background-color")
    shaded = [
        t
        for t in browser.find_elements(By.CSS_SELECTOR, "#top-examples .tok")
        if t.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    ]
    assert shaded
    assert browser.find_elements(By.CSS_SELECTOR, "svg.hist rect")
    assert browser.find_elements(By.CSS_SELECTOR, "#logit-lens .chip")
    assert browser.find_elements(By.CSS_SELECTOR, "#quantiles .example")
    shot(browser, tmp_path, "browser_latent")
    # a neighbour link navigates to another latent page
    before = title.text
    browser.find_element(By.CSS_SELECTOR, "#neighbours a").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "latent-title").text != before)
    assert not severe_console_errors(browser)


def test_typed_text_shows_firing_latents(browser, site, tmp_path):
    browser.get(site + "#/try")
    box = wait(browser, "#try-text")
    box.clear()
    box.send_keys("The quick brown fox jumps over the lazy dog and 345 numbers.")
    browser.find_element(By.ID, "try-run").click()
    wait(browser, ".summary-latent", timeout=120)
    tokens = browser.find_elements(By.CSS_SELECTOR, "#try-tokens .tok")
    assert len(tokens) > 5
    assert browser.find_elements(By.CSS_SELECTOR, "#token-detail .tok-latent")
    shot(browser, tmp_path, "browser_try")
    # clicking a latent from the summary opens its page
    browser.find_element(By.CSS_SELECTOR, ".summary-latent").click()
    wait(browser, "#latent-title")
    assert not severe_console_errors(browser)


def test_bad_latent_url_shows_an_error_not_a_crash(browser, site):
    browser.get(site + "#/latent/99999")
    err = wait(browser, ".error")
    assert "does not exist" in err.text
    logged = browser.get_log("browser")  # the API's 404, expected here; drained for later tests
    assert all("/api/latent/99999" in e["message"] for e in logged if e["level"] == "SEVERE")


def test_report_opens_without_errors(browser, tmp_path):
    from saekit.evaluation.comparison import load_docs, write_report

    report = write_report(load_docs(list(evaluated_saes())), tmp_path / "report.html")
    browser.get(report.html.as_uri())
    wait(browser, "#summary tbody tr")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")) == 2
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 5
    assert all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
        for i in images
    )
    assert not severe_console_errors(browser)
    shot(browser, tmp_path, "report")
