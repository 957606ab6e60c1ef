"""`kb serve --port N` in a real browser: the Prefect UI it prints lists the scheduled runs (issue 15).

The UI is a page that asks the API for its data at an address the server hands it; a server on a
non-default port once handed out port 4200, so the page showed no runs and "Can't connect to Server
API". Only a browser sees that, so this test drives headless Chromium through selenium against
`kb serve` on a free port, with a run of the ingest deployment (created through the API rather than
waiting for a cron minute) completed first.

Skipped without Chromium, chromedriver or selenium, unless KB_REQUIRE_BROWSER=1 (CI), which fails.
Set KB_TEST_SCREENSHOTS to a folder to keep a copy of the screenshot (it is always in tmp_path).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REQUIRE_BROWSER = os.environ.get("KB_REQUIRE_BROWSER") == "1"


def _need_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert port != 4200
    return port


def _api(url: str, body: dict | None = None) -> dict | list:
    """One API call; 503/429 (Prefect's SQLite database busy with the served runner's writes) is retried, as
    Prefect's own client does: the server rolled that request back, so sending it again is safe."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(8):
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503) or attempt == 7:
                raise
            time.sleep(float(exc.headers.get("Retry-After") or 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def _wait(what: str, check, timeout_s: float, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"kb serve exited with {process.returncode} while waiting for {what}:\n{log.read_text()}")
        time.sleep(1)
    pytest.fail(f"no {what} within {timeout_s:.0f} s:\n{log.read_text()}")


def _server_pids(port: int) -> list[int]:
    """The `prefect server start` that kb serve started on this port (it runs in its own session)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in args and b"start" in args and b"--port" in args and str(port).encode() in args:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.fixture
def served(tmp_path, kb_home):
    """`kb serve` of a small corpus on a free port; always stopped with SIGTERM (then killed) at the end."""
    _need_browser()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("leave", "laptop", "invoice"):
        (corpus / f"{name}.md").write_text(f"# {name.title()} policy\n\nHow {name} requests are handled.\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(KB_HOME=str(kb_home), KB_BACKBONE=str(tmp_path / "tiny-bert"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_RUNNER_POLL_FREQUENCY="2", OMP_NUM_THREADS="1")
    env.pop("KB_DATABASE_URL", None)
    log = tmp_path / "serve.log"
    kb = Path(sys.executable).with_name("kb")
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(kb), "serve", str(corpus), "--port", str(port), "--ingest-cron", "0 0 1 1 *"],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    try:
        # the backbone is needed once a run starts, not before: save it while the server comes up
        from tiny_models import save_tiny_bert

        save_tiny_bert(tmp_path / "tiny-bert")
        printed = _wait("'Serving:' line", lambda: re.search(r"Runs and artifacts: (\S+) ", log.read_text()),
                        240, process, log)
        yield {"ui": printed.group(1), "port": port, "log": log, "process": process, "home": kb_home}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in _server_pids(port):  # only if kb serve could not stop its server itself
            os.kill(pid, signal.SIGKILL)


def test_the_ui_on_a_non_default_port_lists_the_scheduled_runs(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    ui, port, log, process = served["ui"], served["port"], served["log"], served["process"]
    assert ui == f"http://127.0.0.1:{port}", "kb serve prints the address it serves the UI on"
    api = f"{ui}/api"
    assert _api(f"{ui}/ui-settings")["api_url"] == api, "the UI is told to ask this server, not port 4200"

    deployments = _wait("kb-scheduled-ingest deployment", lambda: _api(
        f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["kb-scheduled-ingest"]}}}), 60, process, log)
    run = _api(f"{api}/deployments/{deployments[0]['id']}/create_flow_run", {})

    def finished():
        state = _api(f"{api}/flow_runs/{run['id']}")
        assert state["state_type"] not in ("FAILED", "CRASHED"), state["state"]
        return state if state["state_type"] == "COMPLETED" else None

    run = _wait("completed scheduled ingest run", finished, 240, process, log)
    assert run["name"].startswith("scheduled ingest")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1500", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    screenshot = tmp_path / "runs.png"
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{ui}/runs")
        body = lambda d: d.find_element("tag name", "body").text  # noqa: E731
        try:
            WebDriverWait(driver, 60).until(lambda d: run["name"] in body(d) or "Can't connect" in body(d))
            time.sleep(2)  # the API health check's toast, if any, comes up beside the list
        finally:
            driver.save_screenshot(str(screenshot))
            if os.environ.get("KB_TEST_SCREENSHOTS"):
                shutil.copy(screenshot, Path(os.environ["KB_TEST_SCREENSHOTS"]) / "issue15_runs.png")
        text = body(driver)
        assert "Can't connect to Server API" not in text, text
        assert run["name"] in text and "No flow runs" not in text, text
    finally:
        driver.quit()

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    output = log.read_text()
    assert output.rstrip().endswith("Stopped.") and "Traceback" not in output, output
    assert not _server_pids(port), "SIGTERM stops the local server too"
    # the run's own logs (from the flow-run process the runner started) went to the KB's log file
    assert f"Flow run {run['name']!r}" in (served["home"] / "logs" / "kb.log").read_text()
