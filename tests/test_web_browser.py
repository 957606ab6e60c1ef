"""`kb web` in a real headless Chromium: sign in, search, click a facet, open a document, accept a predicted
tag from the review page and see it become gold with provenance; the hostile document runs no script.

Same harness as tests/test_serve_browser.py (Debian chromium + chromedriver through selenium): skipped
without them unless KB_REQUIRE_BROWSER=1 (CI), which fails. Screenshots of the search and document pages
(desktop and phone width) are written to tmp_path, and copied to KB_TEST_SCREENSHOTS when it names a folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from kb_pipeline.web.app import create_app
from kb_pipeline.web.settings import WebSettings
from test_serve_browser import CHROMEDRIVER, CHROMIUM, _need_browser
from tiny_models import single_threaded
from web_kb import XSS_TITLE, build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(settings, tmp_path):
    """The test KB served by uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    _need_browser()
    with single_threaded():
        kb = build(settings, tmp_path / "corpus")
    app = create_app(settings, web=WebSettings(), engine=kb.engine())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield kb, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("KB_TEST_SCREENSHOTS"):
        folder = Path(os.environ["KB_TEST_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)


def _navigates(driver, action) -> None:
    """Do what loads a new page (click, submit) and wait until it has replaced the old one: a click returns
    before the browser navigates, so reading the page at once may read the old one."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("tag name", "html")
    action()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _no_script_ran(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    assert driver.execute_script("return typeof window.kbXss") == "undefined", "a document's markup ran as script"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_reviewer_signs_in_searches_filters_and_accepts_a_tag_from_the_review_page(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    kb, base = site
    find = browser.find_element
    browser.get(f"{base}/signin")
    find(By.ID, "token").send_keys(kb.tokens["alice"])
    _navigates(browser, find(By.CSS_SELECTOR, "form.stack button").click)
    assert find(By.CSS_SELECTOR, ".who").text == "alice"

    box = find(By.NAME, "q")
    box.send_keys("zebrafinch salary")
    _navigates(browser, box.submit)
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".hit .title")]
    assert "Salary bands" in titles and "Merger plan" not in titles  # alice reads hr, not the board's plan
    assert find(By.CSS_SELECTOR, ".hit mark").text.lower() in {"zebrafinch", "salary"}
    _shot(browser, tmp_path, "web_search.png")

    facet = next(e for e in browser.find_elements(By.CSS_SELECTOR, "#facet-tags a.facet") if e.text == "secret-pay")
    _navigates(browser, facet.click)
    assert "tag=secret-pay" in browser.current_url
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".hit .title")] == ["Salary bands"]
    _navigates(browser, find(By.CSS_SELECTOR, ".hit .title").click)
    assert find(By.ID, "doc-title").text == "Salary bands"
    assert "secret-pay" in find(By.ID, "tags").text and "front matter" in find(By.ID, "tags").text

    browser.get(f"{base}/review")
    _shot(browser, tmp_path, "web_review.png")
    item = find(By.CSS_SELECTOR, f".queue-item[data-doc='{kb.ids['laptop']}']")
    button = next(b for b in item.find_elements(By.CSS_SELECTOR, ".tag-accept button") if "hardware" in b.text)
    _navigates(browser, button.click)
    assert browser.current_url.endswith("/review")
    browser.get(f"{base}/documents/{kb.ids['laptop']}")
    row = find(By.CSS_SELECTOR, "tr[data-tag='hardware']")
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "gold"
    assert "confirmed by alice" in row.find_element(By.CSS_SELECTOR, ".provenance").text
    assert "predicted 0.70" in find(By.CSS_SELECTOR, "tr[data-tag='onboarding'] .status").text
    _shot(browser, tmp_path, "web_document.png")

    browser.get(f"{base}/?q=holiday+rota")  # the hostile document in results, then on its own page
    _no_script_ran(browser)
    assert XSS_TITLE in [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".hit .title")]
    browser.get(f"{base}/documents/{kb.ids['xss']}")
    _no_script_ran(browser)
    assert find(By.ID, "doc-title").text == XSS_TITLE
    page = find(By.TAG_NAME, "body").text
    assert "<img src=x onerror=window.kbxss=2>" in page and "javascript:alert(3)" in page
    assert not [a for a in browser.find_elements(By.TAG_NAME, "a") if (a.get_attribute("href") or "").startswith("javascript")]
    _shot(browser, tmp_path, "web_xss_document.png")

    browser.set_window_size(390, 844)  # a phone: the layout stacks, nothing runs off the side
    browser.get(f"{base}/?q=zebrafinch+salary")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    _shot(browser, tmp_path, "web_search_phone.png")
    browser.get(f"{base}/documents/{kb.ids['laptop']}")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    _shot(browser, tmp_path, "web_document_phone.png")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors  # e.g. a CSP violation would show here
