"""Headless Chromium for the UI tests: Debian's ``chromium`` + ``chromium-driver`` through Selenium.

Nothing is downloaded at run time: the driver and the browser are the system's (``make ui-tools``
installs them where it can); :func:`skip_reason` says why the tests cannot run when they are absent.
Screenshots go to ``$TRUTHSTEER_UI_ARTEFACTS`` when set, else to pytest's temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser")


def executables() -> tuple[str | None, str | None]:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    return browser, shutil.which("chromedriver")


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (dev extra)"
    browser, driver = executables()
    if browser is None or driver is None:
        return "no system chromium/chromedriver (Debian packages chromium, chromium-driver; `make ui-tools`)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1440, height: int = 1100) -> Iterator[Any]:
    """A headless Chromium session (a fresh profile: empty sessionStorage)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = executables()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(browser)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(str(driver)))
    try:
        yield d
    finally:
        d.quit()


def artefact_dir(fallback: Path) -> Path:
    path = Path(os.environ.get("TRUTHSTEER_UI_ARTEFACTS") or fallback)
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(driver: Any, folder: Path, name: str) -> Path:
    """Full-page PNG (the window grown to the page's height first)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    width = int(driver.execute_script("return window.outerWidth"))
    driver.set_window_size(width, min(max(height + 120, 700), 4000))
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_css(driver: Any, css: str, timeout: float) -> Any:
    """The first element matching ``css`` once it exists and is displayed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def wait_done(driver: Any, css: str, timeout: float) -> None:
    """Wait until every element matching ``css`` (result views) is ``data-state="done"``; fail on error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d: Any) -> bool:
        states = [e.get_attribute("data-state") for e in d.find_elements(By.CSS_SELECTOR, css)]
        if "error" in states:
            raise AssertionError(f"the page shows an error: {d.find_element(By.ID, 'status').text}")
        return bool(states) and all(s == "done" for s in states)

    WebDriverWait(driver, timeout).until(done)
