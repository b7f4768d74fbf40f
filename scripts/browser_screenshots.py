"""Screenshots of the feature browser for the README (docs/browser-*.png), in headless Chromium.

    saekit train --out runs/latest                  # the main job (builds the browser data)
    saekit browse runs/latest/saes/topk --port 8799 &
    python scripts/browser_screenshots.py --url http://127.0.0.1:8799 --latent 1234

Needs Debian's chromium + chromium-driver and selenium (the test extra).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

TEXT = "The committee begged the minister to reconsider.\nCrucially, nobody answered."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--latent", type=int, required=True, help="the latent page to show")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args()
    opts = Options()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(f"{args.url}/#/latents")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "table tbody tr")))
        driver.save_screenshot(str(args.out / "browser-list.png"))
        driver.get(f"{args.url}/#/latent/{args.latent}")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#top-examples .example .tok")))
        time.sleep(1)  # histograms draw after the contexts
        driver.save_screenshot(str(args.out / "browser-latent.png"))
        driver.get(f"{args.url}/#/try")
        box = wait.until(EC.presence_of_element_located((By.ID, "try-text")))
        box.clear()
        box.send_keys(TEXT)
        driver.find_element(By.XPATH, "//button[contains(., 'Run')]").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".summary-latent")))
        driver.find_elements(By.CSS_SELECTOR, "#try-tokens span.tok")[3].click()
        time.sleep(1)
        driver.save_screenshot(str(args.out / "browser-try.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
