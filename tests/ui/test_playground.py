"""The /ui playground in headless Chromium against the real server on the default model.

The server has an API key, so the page must ask for it; every other test enters it first (the
key then stays in the tab's sessionStorage). Expected values always come from the API itself
(same request, non-streamed) or from scikit-learn, never from pinned strings.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import chromium, screenshot, skip_reason, wait_css, wait_done
from tests.support.serve import running_server

pytestmark = pytest.mark.engine
KEY = "sk-ui-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUN_S = 300


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    reason = skip_reason()
    if reason:  # before the (slow) engine start
        pytest.skip(reason)
    with running_server({"TRUTHSTEER_API_KEYS": f'["{KEY}"]', "TRUTHSTEER_KV_CACHE_GIB": "1"}) as base:
        yield base


@pytest.fixture(scope="module")
def model(server: str) -> str:
    return str(httpx.get(f"{server}/v1/models", headers=AUTH).json()["data"][0]["id"])


def ui_url(server: str, **query: Any) -> str:
    items = [(k, v) for k, vals in query.items() for v in (vals if isinstance(vals, list) else [vals])]
    return f"{server}/ui?{urllib.parse.urlencode(items)}"


def open_page(driver: Any, url: str) -> None:
    """Load ``url``; enter the key when the page asks for it."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_css(driver, "#auth, #model-name:not(:empty)", 60)
    if driver.find_element(By.ID, "auth").is_displayed():
        driver.find_element(By.ID, "api-key").send_keys(KEY)
        driver.find_element(By.ID, "auth-submit").click()
    wait_css(driver, "#model-name:not(:empty)", 60)


def tokens(driver: Any, scope: str = "#generate-out") -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, f"{scope} [data-token-index]"))


def text_of(driver: Any, scope: str) -> str:
    return "".join(str(driver.execute_script("return arguments[0].textContent", t)) for t in tokens(driver, scope))


def test_page_works_only_after_the_key_is_entered(server: str, artefacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as d:  # a fresh tab: no key yet
        d.get(ui_url(server, prompt="Where is the city of Lyon?", max_tokens=4, autorun=1))
        wait_css(d, "#api-key", 60)
        assert not d.find_element(By.ID, "app").is_displayed()
        assert tokens(d) == []
        screenshot(d, artefacts, "auth")
        d.find_element(By.ID, "api-key").send_keys("sk-wrong")
        d.find_element(By.ID, "auth-submit").click()
        WebDriverWait(d, 30).until(lambda d: "needs an API key" in d.find_element(By.ID, "auth-message").text)
        assert d.find_element(By.ID, "auth").is_displayed() and tokens(d) == []  # the wrong key was refused
        d.find_element(By.ID, "api-key").send_keys(KEY)
        d.find_element(By.ID, "auth-submit").click()
        wait_done(d, "#generate-out .result", RUN_S)  # autorun goes on once the key works
        assert len(tokens(d)) >= 1


def test_autorun_renders_one_element_per_token_with_the_api_scores(server: str, model: str, browser: Any,
                                                                   artefacts: Path) -> None:
    prompt, steer = "Is the earth flat? Answer briefly.", "truth:+2@14-18"
    open_page(browser, ui_url(server, prompt=prompt, max_tokens=12, temperature=0, seed=7,
                              probes="truth,sycophancy", steer=steer, autorun=1))
    wait_done(browser, "#generate-out .result", RUN_S)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0,
            "seed": 7, "probes": ["truth", "sycophancy"],
            "steering": [{"direction": "truth", "op": "add", "strength": 2, "layers": list(range(14, 19))}]}
    api = httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=RUN_S).json()
    choice = api["choices"][0]
    els = tokens(browser)
    assert [int(e.get_attribute("data-token-index")) for e in els] == list(range(api["usage"]["completion_tokens"]))
    for probe in ("truth", "sycophancy"):
        shown = [float(e.get_attribute(f"data-score-{probe}")) for e in els]
        assert shown == pytest.approx(choice["probe_scores"][probe]["tokens"], abs=1e-6)
    assert {e.get_attribute("data-steered") for e in els} == {"true"}  # positions "all": every token
    assert {e.get_attribute("data-contrasted") for e in els} == {"false"}
    assert text_of(browser, "#generate-out").startswith(choice["message"]["content"])
    # keyboard: focus the first token, the arrow key moves on and the tooltip shows every probe's score
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    els[0].send_keys(Keys.ARROW_RIGHT)
    tip = browser.find_element(By.ID, "tip").text
    assert "token 1" in tip and f"truth: {els[1].get_attribute('data-score-truth')}" in tip and "steered: true" in tip
    screenshot(browser, artefacts, "generate")


def test_abstention_and_contrasted_tokens_are_shown(server: str, model: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, ui_url(server, prompt="Where is the city of Lyon?", max_tokens=6, temperature=0,
                              probes="truth", decoding="dola:high", abstain="truth:1.01", autorun=1))
    wait_done(browser, "#generate-out .result", RUN_S)
    els = tokens(browser)
    assert els and {e.get_attribute("data-contrasted") for e in els} == {"true"}
    assert {e.get_attribute("data-steered") for e in els} == {"false"}
    assert browser.find_element(By.CSS_SELECTOR, '#generate-out dd[data-field="finish reason"]').text == "abstained"
    assert browser.find_element(By.CSS_SELECTOR, "#generate-out .abstained").is_displayed()


def test_the_strength_slider_changes_the_output(server: str, browser: Any, artefacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, ui_url(server, prompt="Where is the city of Lyon?", max_tokens=16, temperature=0,
                              probes="truth", steer="truth:+0", autorun=1))
    wait_done(browser, "#generate-out .result", RUN_S)
    before = text_of(browser, "#generate-out")
    browser.find_element(By.CSS_SELECTOR, "#ops input.strength").send_keys(Keys.END)  # the keyboard: +16
    browser.find_element(By.ID, "run-generate").click()
    wait_done(browser, "#generate-out .result", RUN_S)
    after = text_of(browser, "#generate-out")
    assert "steer=truth%3A%2B16" in browser.current_url  # the link follows the form
    assert after != before


def test_compare_shows_two_answers_side_by_side(server: str, browser: Any, artefacts: Path) -> None:
    open_page(browser, ui_url(server, tab="compare", prompt="Where is the city of Lyon?", max_tokens=16,
                              temperature=0, probes="truth", steer="truth:+12", autorun=1))
    wait_done(browser, "#tab-compare .result", RUN_S)
    a, b = tokens(browser, "#compare-a"), tokens(browser, "#compare-b")
    assert a and b
    assert {e.get_attribute("data-steered") for e in a} == {"true"}
    assert {e.get_attribute("data-steered") for e in b} == {"false"}
    assert text_of(browser, "#compare-a") != text_of(browser, "#compare-b")
    from selenium.webdriver.common.by import By

    assert len(browser.find_elements(By.CSS_SELECTOR, "#tab-compare .trace svg polyline")) == 2
    screenshot(browser, artefacts, "compare")


def test_score_tab_auroc_equals_scikit_learn(server: str, model: str, browser: Any, artefacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from sklearn.metrics import roc_auc_score

    items = [("The city of Paris is in France.", 1), ("The city of Paris is in Japan.", 0),
             ("The city of Lyon is in France.", 1), ("The city of Lyon is in Brazil.", 0),
             ("The city of Tokyo is in Japan.", 1), ("The city of Tokyo is in Canada.", 0),
             ("The city of Cairo is in Egypt.", 1), ("The city of Cairo is in Chile.", 0)]
    text = "\n".join(f"{s},{label}" for s, label in items)
    open_page(browser, ui_url(server, tab="score", statements=text, autorun=1))
    wait_done(browser, "#score-out", RUN_S)
    api = httpx.post(f"{server}/v1/probes/score", headers=AUTH, timeout=RUN_S,
                     json={"model": model, "input": [s for s, _ in items], "probes": ["truth"], "reduce": "last"}).json()
    expected = roc_auc_score([label for _, label in items], [d["scores"]["truth"] for d in api["data"]])
    shown = float(browser.find_element(By.CSS_SELECTOR, '#score-out li[data-probe="truth"]').get_attribute("data-auroc"))
    assert shown == pytest.approx(expected, abs=1e-12)
    assert browser.find_elements(By.CSS_SELECTOR, "#score-out svg polyline")
    screenshot(browser, artefacts, "score")
