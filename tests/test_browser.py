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


# One context as SmolLM2's byte-level BPE splits it: "Crucial" is three tokens and " begged"
# two; a token's leading space is part of its text, and "\n" is a token of its own.
WORD_PIECES = ["C", "ru", "cial", " point", ":", " I", " be", "gged", "\n", "Next"]
WORD_ACTS = [0.0, 0.5, 3.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
WORD_CENTRE = 2


def write_word_store(root: Path) -> Path:
    """A one-latent browser store (format version 2, the files build() writes) whose top
    example is the context above, so the test controls exactly which tokens are drawn."""
    root.mkdir(parents=True)
    ids = list(range(100, 100 + len(WORD_PIECES)))
    window = [[p, v] for p, v in enumerate(WORD_ACTS) if v]
    detail = {
        "id": 0,
        "count": len(window),
        "density": 0.4,
        "max_act": max(WORD_ACTS),
        "min_act": 0.5,
        "mean_act": 1.625,
        "top": [[0, WORD_CENTRE, window]],
        "quantiles": [],
        "hist": {"edges": [0.0, 1.5, 3.0], "counts": [2, 2]},
        "top_tokens": [[ids[WORD_CENTRE], 0.4, 1]],
        "neighbours": [],
        "simulator_r": None,
    }
    files = {
        "meta": {
            "format": "saekit-browser",
            "format_version": 2,
            "model": "smollm2-135m",
            "hookpoint": "model.layers.6",
            "which": "output",
            "sae": {"name": "words", "architecture": "topk", "n_latents": 1, "path": None},
            "settings": {"shard_size": 256, "before": 10, "after": 8},
        },
        "index": {
            "density": [0.4],
            "max_act": [3.0],
            "mean_act": [1.625],
            "top_tokens": [["cial"]],
            "logit_top": [[]],
            "simulator_r": [None],
        },
        "tokens": {str(t): piece for t, piece in zip(ids, WORD_PIECES)},
        "contexts": [ids],
        "pieces": [WORD_PIECES],
    }
    for name, obj in files.items():
        (root / f"{name}.json").write_text(json.dumps(obj))
    (root / "latents").mkdir()
    (root / "latents" / "00000.json").write_text(json.dumps([detail]))
    return root


@pytest.fixture(scope="module")
def word_site(tmp_path_factory):
    from saekit.viewer.server import make_server, serve_in_thread

    server = make_server(write_word_store(tmp_path_factory.mktemp("words") / "browser"), port=0)
    serve_in_thread(server)
    yield server.url
    server.shutdown()
    server.server_close()


# Boxes and text of every token of the first top example, and the width of `probe` words
# drawn as one plain string in the same place (same font, same white-space rule).
GEOMETRY_JS = """
const text = document.querySelector('#top-examples .example .text');
const spans = [...text.querySelectorAll(':scope > .tok')];
const width = (s) => {
  const probe = document.createElement('span');
  probe.className = 'tok';
  probe.textContent = s;
  text.append(probe);
  const w = probe.getBoundingClientRect().width;
  probe.remove();
  return w;
};
return {
  boxes: spans.map((s) => { const r = s.getBoundingClientRect();
                            return [r.left, r.right, r.top, r.bottom]; }),
  texts: spans.map((s) => s.textContent),
  backgrounds: spans.map((s) => getComputedStyle(s).backgroundColor),
  inner: text.innerText,
  probes: Object.fromEntries(arguments[0].map((s) => [s, width(s)])),
};
"""


def test_multi_token_word_renders_as_one_word(browser, word_site, tmp_path):
    browser.get(word_site + "#/latent/0")
    wait(browser, "#top-examples .example .tok")
    g = browser.execute_script(GEOMETRY_JS, ["Crucial", " point", " begged"])
    shot(browser, tmp_path, "browser_word")
    assert g["texts"] == ["C", "ru", "cial", " point", ":", " I", " be", "gged", "↵", "Next"]
    # Read as text: the pieces join with nothing between them, a newline is one glyph.
    assert g["inner"] == "Crucial point: I begged↵Next"
    boxes = g["boxes"]
    assert len({round(b[2]) for b in boxes}) == 1  # one line
    for left, right in zip(boxes, boxes[1:]):
        assert right[0] == pytest.approx(left[1], abs=0.5)  # adjacent boxes touch
    # Touching boxes could still hold padding: the tokens of a word must be exactly as wide as
    # the word drawn as one string, and a leading space exactly as wide as a space.
    width = [b[1] - b[0] for b in boxes]
    assert sum(width[:3]) == pytest.approx(g["probes"]["Crucial"], abs=0.5)
    assert width[3] == pytest.approx(g["probes"][" point"], abs=0.5)
    assert width[6] + width[7] == pytest.approx(g["probes"][" begged"], abs=0.5)
    # The shading is the token's activation: exactly the active tokens are shaded.
    clear = ("rgba(0, 0, 0, 0)", "transparent")
    assert [bg not in clear for bg in g["backgrounds"]] == [v != 0 for v in WORD_ACTS]
    assert not severe_console_errors(browser)


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
    # Each example reads as its context's decoded text (byte-level BPE: no "Ġ"/"Ċ" symbols).
    latent_id = browser.current_url.rsplit("/", 1)[1]
    api = json.loads(
        browser.execute_async_script(
            f"const done = arguments[0]; fetch('/api/latent/{latent_id}').then(r => r.text()).then(done);"
        )
    )
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#top-examples .text')].map((t) => t.innerText)"
    )
    assert shown == ["".join(ex["tokens"]).replace("\n", "↵") for ex in api["top"]]
    assert not any("Ġ" in t or "Ċ" in t for t in shown)
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
    # every figure written is on the page (Pareto, density, adaptive, budget, ...), inline
    assert len(images) == len(report.figures) >= 5
    assert all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
        for i in images
    )
    assert not severe_console_errors(browser)
    shot(browser, tmp_path, "report")
